"""Errors a user can cause in the data/ scripts: one line, `error: ...` on stderr, no traceback.

Exit status 2: the program cannot do what was asked: a wrong command line (an option value, a path,
a file type) or a missing optional package.
Exit status 1: the data is wrong (an input that cannot be read or used, a bad shard, a failed download).
"""
import argparse
import sys

USAGE_ERROR = 2
DATA_ERROR = 1


class UsageError(Exception):
    """Found before any input is used: nothing was read or written."""
    status = USAGE_ERROR


class DataError(Exception):
    status = DATA_ERROR


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line with status 2, not the usage text and a message."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def exit_with(error):
    """Print a UsageError or DataError as one line and exit with its status."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.status)

"""Run one configuration several times with different seeds, then summarize the runs as a group.

    python tools/repeat.py NAME --runs N [options] [-- OVERRIDE ...]
    python tools/repeat.py NAME --seeds 1,2,5 [options] [-- OVERRIDE ...]

Runs the launcher once per seed, one run after another, each with
--seed=SEED --run_id=NAME-sSEED and then the overrides after "--" (the same
--name=value overrides run.sh and train_gpt.py take), so run SEED's log is
WORKDIR/logs/NAME-sSEED.txt. At the end prints compare.py's per-log table
and group table for the series' logs.

    python tools/repeat.py lr04 --runs 5 -- --muon_lr=0.04

Continuing an interrupted series: run the same command again. A seed whose
log says "done" is skipped. A seed whose log exists but did not finish
(crashed, stopped or truncated) has that log renamed to
NAME-sSEED.incompleteK.txt, and its checkpoint folder to NAME-sSEED.incompleteK/
(the first free K; logs are never overwritten)
and runs again. A failed run (non-zero exit) is reported and the series
goes on; the exit status is then 1.

One series, one configuration: WORKDIR/logs/NAME.series.json records the
launcher and overrides of the series' first command, and a later command
with other ones is refused before anything runs, as is one whose overrides
disagree with the hyperparameters a finished seed's log records (or whose
finished logs differ in code, hyperparameters or card): a finished seed is
reused only for the configuration it ran. Give a new configuration its own
name.

Ctrl-C (or SIGTERM, or SIGHUP from a closed terminal) is passed on to the
run once, and repeat.py waits while the trainer finishes its step and
writes its checkpoint; then the series stops. Another Ctrl-C, a second or
more later, makes the trainer exit at once.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# records/ is not a package, so load compare.py from its path.
_spec = importlib.util.spec_from_file_location("compare", REPO / "records" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

NAME = re.compile(r"[A-Za-z0-9._-]+")
SEED_LIST = re.compile(r"\d+(?:,\d+)*")
# Passed on to the run, which stops gracefully on each (a closed terminal or ssh session sends SIGHUP).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UsageError(ValueError):
    """Arguments that cannot work: reported in one line, before anything runs."""


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(options, overrides): the overrides are everything after the first "--"."""
    options, overrides = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="repeat.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the series' name: letters, digits, '.', '_' and '-'; logs are NAME-sSEED.txt")
    seeds = parser.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--runs", type=int, metavar="N", help="N runs, with seeds 0 to N-1")
    seeds.add_argument("--seeds", metavar="LIST", help="comma-separated seeds, e.g. 1,2,5")
    parser.add_argument("--launcher", default=str(REPO / "run.sh"),
                        help="command that trains, split like a shell would (default: the repository's run.sh, "
                             "which runs torchrun on the GPUs or the CPU demo, in the repository root); "
                             'e.g. "python train_gpt.py"')
    parser.add_argument("--workdir", type=Path, default=REPO,
                        help="directory the launcher runs in; logs are read from WORKDIR/logs/ "
                             "(default: the repository root, where run.sh writes them)")
    parser.add_argument("--target", type=float, default=compare.TARGET_VAL_LOSS,
                        help="val loss for the summary's p-value (default %(default)s)")
    return parser.parse_args(options), overrides


def checked_seeds(args: argparse.Namespace) -> list[int]:
    if args.runs is not None:
        if args.runs < 1:
            raise UsageError(f"--runs {args.runs}: needs at least 1 run")
        return list(range(args.runs))
    if not SEED_LIST.fullmatch(args.seeds):
        raise UsageError(f"--seeds {args.seeds!r}: expected comma-separated non-negative integers, e.g. 1,2,5")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if len(set(seeds)) < len(seeds):
        raise UsageError(f"--seeds {args.seeds}: a seed appears twice")
    return seeds


def checked_launcher(launcher: str, workdir: Path) -> list[str]:
    if not workdir.is_dir():
        raise UsageError(f"--workdir {workdir}: not a directory")
    words = shlex.split(launcher)
    if not words:
        raise UsageError("--launcher is empty")
    program = words[0]
    # A path is relative to the directory the launcher runs in; a bare name is looked up on PATH.
    found = shutil.which(str(workdir / program)) if "/" in program else shutil.which(program)
    if found is None:
        raise UsageError(f"--launcher {launcher!r}: {program} is not an executable file (or not on PATH)")
    return words


def checked_overrides(overrides: list[str]) -> list[str]:
    for override in overrides:
        if override.startswith(("--seed=", "--run_id=")):
            raise UsageError(f"{override}: repeat.py sets --seed and --run_id itself")
    return overrides


def set_aside(log: Path) -> Path:
    """Renames an unfinished log to NAME-sSEED.incompleteK.txt with the first free K, and its checkpoint folder
    NAME-sSEED/, if any, to NAME-sSEED.incompleteK/ (the trainer refuses a run id whose folder holds checkpoints)."""
    k = 1
    while ((incomplete := log.with_name(f"{log.stem}.incomplete{k}.txt")).exists()
           or log.with_name(f"{log.stem}.incomplete{k}").exists()):
        k += 1
    log.rename(incomplete)
    checkpoints = log.with_suffix("")
    if checkpoints.is_dir():
        checkpoints.rename(incomplete.with_suffix(""))
    return incomplete


def same_value(text: str, logged) -> bool:
    """Whether the override text gives the value a log records, read as the trainer reads it: by the type of
    the value (so 4e-2 is 0.04 and yes is true)."""
    if isinstance(logged, bool):
        return text.lower() in (("true", "1", "yes") if logged else ("false", "0", "no"))
    try:
        return type(logged)(text) == logged
    except (TypeError, ValueError):
        return False


def command_line(configuration: dict) -> str:
    return shlex.join(configuration["launcher"] + ["--", *configuration["overrides"]])


def configuration_problem(name: str, seeds: list[int], logs_dir: Path, configuration: dict) -> str | None:
    """Why this command would mix configurations in one series, or None: it differs from the series' recorded
    launcher and overrides, or a finished seed it would reuse ran with other hyperparameters."""
    record = logs_dir / f"{name}.series.json"
    if record.exists():
        try:
            recorded = json.loads(record.read_text())
        except (OSError, ValueError) as error:
            return f"cannot read {record} ({error}): the series' configuration; restore it, or remove it to start over"
        if recorded != configuration:
            return (f"series {name!r} ran as {command_line(recorded)} ({record}); this command runs "
                    f"{command_line(configuration)}. Continue the series with the same launcher and overrides, "
                    "or give the new configuration another name")
    first = None  # the first finished log
    for seed in seeds:
        log = logs_dir / f"{name}-s{seed}.txt"
        if not log.exists() or log_status(log) != "done":
            continue
        summary = compare.parse_log(log)
        for override in configuration["overrides"]:
            field, _, text = override.removeprefix("--").partition("=")
            if field in summary.hyperparameters and not same_value(text, summary.hyperparameters[field]):
                return (f"{log} finished with {field}={json.dumps(summary.hyperparameters[field])}, and this command "
                        f"sets {override}; run the series with the overrides it ran with, or give the new "
                        "configuration another name")
        if first is None:
            first = summary
        elif difference := configuration_difference(first, summary):
            return f"{first.path} and {log} finished with {difference}: they are not one series; move one of them away"
    return None


def configuration_difference(a: compare.LogSummary, b: compare.LogSummary) -> str | None:
    """What makes two logs runs of different configurations, as compare.py groups runs, or None."""
    if compare.group_key(a) == compare.group_key(b):
        return None
    if a.code != b.code:
        return "different trainer code"
    if a.card != b.card:
        return f"different cards ({a.card}; {b.card})"
    fields = sorted(field for field in a.hyperparameters.keys() | b.hyperparameters.keys()
                    if field not in compare.FIELDS_IGNORED_FOR_GROUPING
                    and a.hyperparameters.get(field) != b.hyperparameters.get(field))
    return f"different hyperparameters ({', '.join(fields)})"


def write_record(record: Path, configuration: dict):
    """The series' configuration, written whole or not at all."""
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(record.name + ".partial")
    partial.write_text(json.dumps(configuration, indent=1) + "\n")
    os.replace(partial, record)


def log_status(log: Path) -> str:
    try:
        return compare.parse_log(log).status
    except compare.NotALogError:
        return "not a training log yet"


def main(argv=None) -> int:
    args, overrides = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        if not NAME.fullmatch(args.name):
            raise UsageError(f"name {args.name!r}: use only letters, digits, '.', '_' and '-'")
        seeds = checked_seeds(args)
        overrides = checked_overrides(overrides)
        launcher = checked_launcher(args.launcher, args.workdir)
        logs_dir = args.workdir / "logs"
        configuration = {"launcher": launcher, "overrides": overrides}
        if problem := configuration_problem(args.name, seeds, logs_dir, configuration):
            raise UsageError(problem)
    except UsageError as error:
        print(f"repeat.py: error: {error}", file=sys.stderr)
        return 2

    write_record(logs_dir / f"{args.name}.series.json", configuration)
    failed_seeds = []
    try:
        for seed in seeds:
            returncode, stopped_by = run_seed(args.name, seed, logs_dir, launcher + [
                f"--seed={seed}", f"--run_id={args.name}-s{seed}"] + overrides, args.workdir)
            if stopped_by is not None:
                with contextlib.suppress(OSError):  # a closed terminal
                    print(f"repeat.py: {stopped_by.name}: the series stopped at seed {seed}; the same command "
                          "continues it", file=sys.stderr)
                return 128 + stopped_by
            if returncode != 0:
                failed_seeds.append(seed)
    except KeyboardInterrupt:  # outside a run, which has its own handling
        print("\nrepeat.py: interrupted; the same command continues the series", file=sys.stderr)
        return 130

    named_summaries = []
    for seed in seeds:
        log = logs_dir / f"{args.name}-s{seed}.txt"
        try:
            named_summaries.append((log.stem, compare.parse_log(log)))
        except (OSError, compare.NotALogError) as error:
            print(f"repeat.py: seed {seed}: no summary of {log} ({error})", file=sys.stderr)
    if named_summaries:
        print()
        compare.link_resumed_runs(named_summaries)
        compare.print_report(named_summaries, compare.group_runs(named_summaries), args.target)
    if failed_seeds:
        print(f"repeat.py: runs failed for seeds {', '.join(map(str, failed_seeds))}", file=sys.stderr)
        return 1
    return 0


def run_seed(name: str, seed: int, logs_dir: Path, command: list[str],
             workdir: Path) -> tuple[int, signal.Signals | None]:
    """Runs one seed unless its log says done: (exit status, the stop signal that ended it, if one did)."""
    log = logs_dir / f"{name}-s{seed}.txt"
    if log.exists():
        status = log_status(log)
        if status == "done":
            print(f"seed {seed}: done already, skipped", flush=True)
            return 0, None
        print(f"seed {seed}: {log} did not finish ({status}); kept as {set_aside(log)}, running seed {seed} again",
              flush=True)
    print(f"seed {seed}: {shlex.join(command)}", flush=True)
    returncode, stopped_by = run_to_its_end(command, workdir)
    if returncode != 0 and stopped_by is None:
        print(f"seed {seed}: the run failed (exit status {returncode}); going on with the next seed", flush=True)
    return returncode, stopped_by


def run_to_its_end(command: list[str], workdir: Path) -> tuple[int, signal.Signals | None]:
    """Runs command in a process group of its own and waits for it however repeat.py is signalled: each stop
    signal repeat.py receives (alone, or with its process group, as from a terminal's Ctrl-C) reaches the run
    exactly once, and the trainer stops in its own time, with its checkpoint. (Killing the run on Ctrl-C, as
    subprocess.run does, would lose the step and the checkpoint.) Returns (exit status, the first signal)."""
    received, process = [], None

    def pass_on(number, frame):
        received.append(signal.Signals(number))
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, number)
        if len(received) == 1:
            with contextlib.suppress(OSError):  # a closed terminal
                print(f"\nrepeat.py: {received[0].name} passed on to the run; waiting for it to stop "
                      "(another Ctrl-C a second later stops it at once)", file=sys.stderr, flush=True)

    previous = {number: signal.signal(number, pass_on) for number in STOP_SIGNALS}
    try:
        # Its own process group: a terminal's Ctrl-C reaches only repeat.py, which passes it on once. No stdin, so
        # that the run, off the terminal's foreground, never stops waiting to read it.
        process = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, process_group=0)
        if received:  # arrived while the run was starting
            os.killpg(process.pid, received[0])
        returncode = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return returncode, received[0] if received else None


if __name__ == "__main__":
    sys.exit(main())

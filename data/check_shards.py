"""Validate .bin token shards and show what is in them.

Checks each shard's header (magic, version), its size against the token count,
and that every token id is a GPT-2 id (< 50257). Prints tokens and documents
(count of <|endoftext|>) per shard, the totals, and the start of the first
shard decoded as text. Exit status: 1 if any shard is bad; 2 for a wrong command
line (a path that does not exist, a folder without shards), with one `error:` line.

    python data/check_shards.py data/sample
    python data/check_shards.py data/fineweb10B/fineweb_val_000000.bin --decode 100
"""
import argparse
import glob
import os
import sys

import numpy as np
from tqdm import tqdm

# Run as `python data/check_shards.py` from any directory: the repository root goes on sys.path so
# the tokenizer is always the one module data.tokenizer.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.cli import ArgumentParser, UsageError, exit_with  # noqa: E402
from data.tokenizer import EOT, gpt2_encoding, read_shard  # noqa: E402


def shard_paths(folders_or_files):
    paths = []
    for item in folders_or_files:
        if os.path.isdir(item):
            # Shard index order (val_000000 first), not alphabetical (train before val).
            found = sorted(glob.glob(os.path.join(item, "*.bin")), key=lambda p: (p.rsplit("_", 1)[-1], p))
            if not found:
                raise UsageError(f"no .bin shards in {item}")
            paths.extend(found)
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise UsageError(f"{item} does not exist")
    return paths


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="shard files, or folders whose *.bin files are checked")
    parser.add_argument("--decode", type=int, default=40, metavar="N",
                        help="decode the first N tokens of the first good shard (0: skip)")
    parser.add_argument("--bpe_file", default=None, help="gpt2.tiktoken to decode with (default: data/gpt2.tiktoken)")
    args = parser.parse_args(argv)
    if args.decode < 0:
        parser.error(f"--decode={args.decode}: must be 0 or more")
    try:
        paths = shard_paths(args.paths)
    except UsageError as error:
        exit_with(error)
    encoding = None
    if args.decode > 0:
        try:
            encoding = gpt2_encoding(args.bpe_file)
        except (OSError, ValueError) as error:
            exit_with(UsageError(f"GPT-2 rank file (--bpe_file): {error}"))

    good, errors = [], []
    first_tokens = None
    for path in tqdm(paths, unit="shard", desc="checking"):
        try:
            tokens = read_shard(path)
        except (ValueError, OSError) as error:
            errors.append(str(error))
            continue
        good.append((path, len(tokens), int(np.count_nonzero(tokens == EOT))))
        if first_tokens is None:
            first_tokens = tokens[:args.decode].tolist()

    for path, num_tokens, num_docs in good:
        print(f"{path}: {num_tokens:,} tokens, {num_docs:,} documents")
    total_tokens = sum(num_tokens for _, num_tokens, _ in good)
    total_docs = sum(num_docs for _, _, num_docs in good)
    print(f"total: {len(good)} good shards, {total_tokens:,} tokens, {total_docs:,} documents")
    if first_tokens and encoding:
        print(f"first {len(first_tokens)} tokens of {good[0][0]}:")
        print(encoding.decode(first_tokens))
    for message in errors:
        print(f"BAD SHARD: {message}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} bad shard(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tokenize text with GPT-2 BPE into .bin token shards (format: see tokenizer.py).

Text comes from local files (.txt: one document per file, or split with
--split_regex; .jsonl: one JSON object per line; .parquet: a text column), or,
with no input files, streamed from the Hugging Face hub (FineWeb sample-10BT).

Every document becomes [EOT] + its tokens; documents are packed back to back and
continue across shard boundaries. The first --val_tokens tokens (default: one
whole shard, the FineWeb convention) go to {prefix}_val_000000.bin, the rest to
{prefix}_train_000001.bin, _000002.bin, ...; the last partial shard is written too.

    python data/fineweb.py                                    # FineWeb from the hub
    python data/fineweb.py books/*.txt --output_dir out --prefix books --val_tokens 131072
"""
import argparse
import glob
import json
import os
import random
import re
import sys
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

# Run as `python data/fineweb.py` from any directory: the repository root goes on sys.path so
# the tokenizer is always the one module data.tokenizer.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.tokenizer import EOT, gpt2_encoding, write_shard  # noqa: E402


def expand_inputs(patterns):
    """Each argument is a path or a glob; one that matches nothing is an error."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            sys.exit(f"error: no file matches {pattern}")
        paths.extend(matches)
    return paths


def local_documents(paths, text_column, split_regex):
    for path in paths:
        if path.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if split_regex is None:
                yield text
            else:
                yield from (doc for doc in re.split(split_regex, text) if doc.strip())
        elif path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)[text_column]
        elif path.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq  # only needed for parquet input
            except ImportError:
                sys.exit(f"error: reading {path} needs pyarrow: pip install pyarrow")
            yield from pq.read_table(path, columns=[text_column]).column(text_column).to_pylist()
        else:
            sys.exit(f"error: {path}: unsupported file type (use .txt, .jsonl or .parquet)")


def hub_documents(dataset, config, split, text_column, shuffle_seed):
    """A lazy stream of texts (not a generator itself, so a missing package fails right away)."""
    try:
        from datasets import load_dataset  # heavy and optional: only for the hub
    except ImportError:
        sys.exit("error: streaming from the hub needs the datasets package: pip install datasets "
                 "(or give local .txt/.jsonl/.parquet files)")
    stream = load_dataset(dataset, name=config, split=split, streaming=True)
    if shuffle_seed is not None:
        # The stream is too big to shuffle in memory; a buffered shuffle mixes neighbours.
        stream = stream.shuffle(seed=shuffle_seed, buffer_size=10_000)
    return (row[text_column] for row in stream)


_encoding = None  # one per worker process


def _load_encoding(bpe_file):
    global _encoding
    _encoding = gpt2_encoding(bpe_file)


def tokenize(text):
    return np.array([EOT] + _encoding.encode_ordinary(text), dtype=np.uint16)


def tokenized_documents(documents, workers, bpe_file):
    """Token arrays in document order (Pool.imap keeps the order)."""
    if workers <= 1:
        _load_encoding(bpe_file)
        yield from map(tokenize, documents)
        return
    with Pool(workers, initializer=_load_encoding, initargs=(bpe_file,)) as pool:
        yield from pool.imap(tokenize, documents, chunksize=16)


class ShardWriter:
    """Packs token arrays into val/train shards of fixed size."""

    def __init__(self, output_dir, prefix, shard_size, val_tokens):
        self.output_dir, self.prefix, self.shard_size = output_dir, prefix, shard_size
        self.buffer = np.empty(max(shard_size, val_tokens), dtype=np.uint16)
        self.capacity = val_tokens  # the first shard is the validation shard
        self.filled = 0
        self.index = 0
        self.paths = []

    def add(self, tokens):
        while len(tokens):
            take = min(self.capacity - self.filled, len(tokens))
            self.buffer[self.filled:self.filled + take] = tokens[:take]
            self.filled += take
            tokens = tokens[take:]  # the rest of a split document starts the next shard
            if self.filled == self.capacity:
                self.flush()

    def flush(self):
        if self.filled == 0:
            return
        split = "val" if self.index == 0 else "train"
        path = os.path.join(self.output_dir, f"{self.prefix}_{split}_{self.index:06d}.bin")
        write_shard(path, self.buffer[:self.filled])
        tqdm.write(f"wrote {path} ({self.filled:,} tokens)")
        self.paths.append(path)
        self.index += 1
        self.filled = 0
        self.capacity = self.shard_size


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="local .txt/.jsonl/.parquet files or globs; none: stream from the hub")
    parser.add_argument("--hf_dataset", default="HuggingFaceFW/fineweb", help="hub dataset to stream")
    parser.add_argument("--hf_name", default="sample-10BT", help="hub dataset config")
    parser.add_argument("--hf_split", default="train", help="hub dataset split")
    parser.add_argument("--text_column", default="text", help="text field in .jsonl/.parquet/hub rows")
    parser.add_argument("--split_regex", default=None,
                        help="split each .txt file into documents at matches of this regex (default: one per file)")
    parser.add_argument("--output_dir", default=os.path.join(here, "fineweb10B"), help="where shards go")
    parser.add_argument("--prefix", default="fineweb", help="shard file name prefix")
    parser.add_argument("--shard_size", type=int, default=10**8, help="tokens per train shard")
    parser.add_argument("--val_tokens", type=int, default=None,
                        help="tokens in the validation shard (default: --shard_size)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the document shuffle")
    parser.add_argument("--no_shuffle", action="store_true", help="keep the input document order")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizer processes")
    parser.add_argument("--bpe_file", default=None, help="gpt2.tiktoken to use (default: data/gpt2.tiktoken)")
    args = parser.parse_args(argv)
    val_tokens = args.shard_size if args.val_tokens is None else args.val_tokens
    if args.shard_size < 1 or val_tokens < 1:
        parser.error("--shard_size and --val_tokens must be positive")

    shuffle_seed = None if args.no_shuffle else args.seed
    if args.inputs:
        documents = list(local_documents(expand_inputs(args.inputs), args.text_column, args.split_regex))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(documents)
        total_documents = len(documents)
    else:
        documents = hub_documents(args.hf_dataset, args.hf_name, args.hf_split, args.text_column, shuffle_seed)
        total_documents = None

    existing = sorted(glob.glob(os.path.join(args.output_dir, f"{args.prefix}_*.bin")))
    if existing:  # never overwrite shards, nor leave stale ones beside a shorter new set
        sys.exit(f"error: {existing[0]} exists ({len(existing)} {args.prefix}_*.bin shard(s) in {args.output_dir}); "
                 "choose another --output_dir or --prefix, or delete them first")
    os.makedirs(args.output_dir, exist_ok=True)
    writer = ShardWriter(args.output_dir, args.prefix, args.shard_size, val_tokens)
    total_tokens = 0
    token_docs = tokenized_documents(documents, args.workers, args.bpe_file)
    for tokens in tqdm(token_docs, total=total_documents, unit="doc", desc="tokenizing"):
        writer.add(tokens)
        total_tokens += len(tokens)
    writer.flush()
    print(f"{total_tokens:,} tokens in {len(writer.paths)} shards under {args.output_dir}")
    return writer.paths


if __name__ == "__main__":
    main()

"""Tokenize text with GPT-2 BPE into .bin token shards (format: see tokenizer.py).

Text comes from local files (.txt: one document per file, or split with
--split_regex; .jsonl: one JSON object per line; .parquet: a text column), or,
with no input files, streamed from the Hugging Face hub (FineWeb sample-10BT).

Every document becomes [EOT] + its tokens; documents are packed back to back and
continue across shard boundaries. The first --val_tokens tokens (default: one
whole shard, the FineWeb convention) go to {prefix}_val_000000.bin, the rest to
{prefix}_train_000001.bin, _000002.bin, ...; the last partial shard is written too.
Documents in local files that are empty or only whitespace are left out.

Bad input never leaves shards behind: a wrong command line stops the program
before anything is read (exit status 2); an input that cannot be used (a file
that cannot be read or decoded, a malformed .jsonl line, fewer tokens than
--val_tokens plus one) stops it with one `error:` line naming the file and line
(exit status 1), and shards this run wrote are removed. --skip_bad_documents
leaves out bad documents with a warning instead.

Shards are written into a staging folder inside --output_dir and moved into
place only once the whole set is complete, so a run that stops early (bad
input, a full disk, Ctrl-C) leaves no partial set behind and the same command
can simply be run again. (A staging folder that a killed run left is removed
by the next run with the same --output_dir and --prefix.)

    python data/fineweb.py                                    # FineWeb from the hub
    python data/fineweb.py books/*.txt --output_dir out --prefix books --val_tokens 131072
"""
import argparse
import codecs
import glob
import json
import os
import random
import re
import shutil
import sys
import tempfile
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

# Run as `python data/fineweb.py` from any directory: the repository root goes on sys.path so
# the tokenizer is always the one module data.tokenizer.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.cli import ArgumentParser, DataError, UsageError, exit_with  # noqa: E402
from data.tokenizer import EOT, gpt2_encoding, write_shard  # noqa: E402

INPUT_TYPES = (".txt", ".jsonl", ".parquet")
MAX_SHARD_TOKENS = 2**31 - 1  # the shard header stores the token count as an int32
ENCODING_ADVICE = "give the file's encoding with --encoding, e.g. --encoding latin-1"
JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "true or false", type(None): "null"}


class BadDocument(Exception):
    """One document that cannot be read: what is wrong with it, and what the user can do about it."""

    def __init__(self, problem, advice):
        super().__init__(problem)
        self.problem, self.advice = problem, advice


class BadDocuments:
    """A bad document stops the run; with --skip_bad_documents it is left out with a warning, and counted."""

    def __init__(self, skip):
        self.skip = skip
        self.skipped = 0

    def handle(self, where, error):
        if not self.skip:
            raise DataError(f"{where}: {error.problem}; {error.advice}, "
                            "or --skip_bad_documents to leave such documents out")
        print(f"warning: {where}: {error.problem}; skipped", file=sys.stderr)
        self.skipped += 1


def expand_inputs(patterns):
    """Each argument is a path or a glob of files of a type we read; one that matches nothing is an error."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise UsageError(f"no file matches {pattern}")
        for path in matches:
            if os.path.isdir(path):
                raise UsageError(f"{path} is a folder; give the files in it, e.g. {os.path.join(path, '*.txt')}")
            if not path.endswith(INPUT_TYPES):
                raise UsageError(f"{path}: unsupported file type (use .txt, .jsonl or .parquet)")
        paths.extend(matches)
    return paths


def open_input(path):
    try:
        return open(path, "rb")
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror})") from error


def undecodable(error, encoding):
    return BadDocument(f"not valid {encoding} (byte 0x{error.object[error.start]:02x}: {error.reason})",
                       ENCODING_ADVICE)


def text_field(row, text_column):
    """The text of a JSON or hub row (a dict)."""
    if not isinstance(row, dict):
        raise BadDocument(f"not a JSON object but {JSON_TYPES.get(type(row))}",
                          f"each line must be one JSON object with a {text_column!r} field")
    if text_column not in row:
        fields = ", ".join(repr(name) for name in list(row)[:10]) or "none"
        raise BadDocument(f"no {text_column!r} field (fields: {fields})", "name the text field with --text_column")
    return text_value(row[text_column], text_column)


def text_value(value, text_column):
    if not isinstance(value, str):
        kind = JSON_TYPES.get(type(value), type(value).__name__)
        raise BadDocument(f"the {text_column!r} field is {kind}, expected a string", "fix the document")
    return value


def txt_documents(path, encoding, split_regex, bad_documents):
    with open_input(path) as f:
        raw = f.read()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        bad_documents.handle(f"{path} line {line_number}", undecodable(error, encoding))
        return
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # newlines as open() in text mode reads them
    yield from [text] if split_regex is None else split_regex.split(text)


def jsonl_text(raw_line, encoding, text_column):
    """The text of one .jsonl line ("" for a blank line)."""
    try:
        line = raw_line.decode(encoding)
    except UnicodeDecodeError as error:
        raise undecodable(error, encoding) from error
    if not line.strip():
        return ""
    try:
        row = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as error:
        raise BadDocument(f"not valid JSON ({error.msg} at column {error.colno})",
                          "each line must be one JSON object") from error
    return text_field(row, text_column)


def checked_texts(items, text_of, place_of, bad_documents):
    """text_of(item) for each item in order; an item for which it raises BadDocument goes to bad_documents, named
    place_of(index), and is left out."""
    for index, item in enumerate(items):
        try:
            text = text_of(item)
        except BadDocument as error:
            bad_documents.handle(place_of(index), error)
            continue
        yield text


def jsonl_documents(path, encoding, text_column, bad_documents):
    with open_input(path) as f:
        yield from checked_texts(f, lambda raw_line: jsonl_text(raw_line, encoding, text_column),
                                 lambda index: f"{path} line {index + 1}", bad_documents)


def parquet_documents(path, text_column, bad_documents):
    try:
        import pyarrow  # only needed for parquet input
        import pyarrow.parquet as pq
    except ImportError as error:
        raise UsageError(f"reading {path} needs pyarrow: pip install pyarrow") from error
    with open_input(path) as f:
        try:
            parquet = pq.ParquetFile(f)
            columns = parquet.schema_arrow.names
            if text_column not in columns:
                raise DataError(f"{path}: no {text_column!r} column (columns: {', '.join(map(repr, columns))}); "
                                "name the text column with --text_column")
            values = parquet.read(columns=[text_column]).column(text_column).to_pylist()
        except (pyarrow.ArrowException, OSError) as error:
            raise DataError(f"{path}: not a readable parquet file ({error})") from error
    yield from checked_texts(values, lambda value: text_value(value, text_column),
                             lambda index: f"{path} row index {index}", bad_documents)


def local_documents(paths, args, bad_documents):
    """The texts of all files in order; documents that are empty or only whitespace are left out."""
    for path in paths:
        if path.endswith(".txt"):
            documents = txt_documents(path, args.encoding, args.split_regex, bad_documents)
        elif path.endswith(".jsonl"):
            documents = jsonl_documents(path, args.encoding, args.text_column, bad_documents)
        else:
            documents = parquet_documents(path, args.text_column, bad_documents)
        yield from (text for text in documents if text.strip())


def hub_documents(dataset, config, split, text_column, shuffle_seed, bad_documents):
    """A lazy stream of texts (not a generator itself, so a missing package fails right away)."""
    try:
        from datasets import load_dataset  # heavy and optional: only for the hub
    except ImportError as error:
        raise UsageError("streaming from the hub needs the datasets package: pip install datasets "
                         "(or give local .txt/.jsonl/.parquet files)") from error
    stream = load_dataset(dataset, name=config, split=split, streaming=True)
    if shuffle_seed is not None:
        # The stream is too big to shuffle in memory; a buffered shuffle mixes neighbours.
        stream = stream.shuffle(seed=shuffle_seed, buffer_size=10_000)
    return checked_texts(stream, lambda row: text_field(row, text_column),
                         lambda index: f"{dataset} row index {index}", bad_documents)


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
    """Packs token arrays into val/train shards of fixed size, in a staging folder inside output_dir (same
    filesystem: the moves are renames); commit() moves the complete set into place, discard() removes it."""

    def __init__(self, output_dir, prefix, shard_size, val_tokens):
        self.output_dir, self.prefix, self.shard_size = output_dir, prefix, shard_size
        self.made_output_dir = not os.path.isdir(output_dir)
        try:
            os.makedirs(output_dir, exist_ok=True)
            self.staging_dir = tempfile.mkdtemp(dir=output_dir, prefix=staging_prefix(prefix))
        except OSError as error:
            raise UsageError(f"--output_dir={output_dir}: cannot write in it ({error.strerror})") from error
        self.buffer = np.empty(max(shard_size, val_tokens), dtype=np.uint16)
        self.capacity = val_tokens  # the first shard is the validation shard
        self.filled = 0
        self.index = 0
        self.names = []

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
        name = f"{self.prefix}_{split}_{self.index:06d}.bin"
        write_shard(os.path.join(self.staging_dir, name), self.buffer[:self.filled])
        tqdm.write(f"wrote {name} ({self.filled:,} tokens)")
        self.names.append(name)
        self.index += 1
        self.filled = 0
        self.capacity = self.shard_size

    def commit(self):
        """Moves the shards into output_dir, all of them or (interrupted) none; returns their paths."""
        paths = []
        try:
            for name in self.names:
                os.replace(os.path.join(self.staging_dir, name), path := os.path.join(self.output_dir, name))
                paths.append(path)
        except BaseException:
            for path in paths:
                os.remove(path)
            raise
        os.rmdir(self.staging_dir)
        return paths

    def discard(self):
        """Undo this run: its staging folder, and the output folder if it made it."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        if self.made_output_dir:
            os.rmdir(self.output_dir)


def staging_prefix(prefix):
    return f".{prefix}_staging-"


def remove_stale_staging(output_dir, prefix):
    """Staging folders of a run that was killed (SIGKILL, a power cut) before it could remove its own."""
    for folder in glob.glob(os.path.join(glob.escape(output_dir), glob.escape(staging_prefix(prefix)) + "*")):
        print(f"removing {folder}, the unfinished shards of an earlier run that was killed", file=sys.stderr)
        shutil.rmtree(folder)


def parse_arguments(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="local .txt/.jsonl/.parquet files or globs; none: stream from the hub")
    parser.add_argument("--hf_dataset", default="HuggingFaceFW/fineweb", help="hub dataset to stream")
    parser.add_argument("--hf_name", default="sample-10BT", help="hub dataset config")
    parser.add_argument("--hf_split", default="train", help="hub dataset split")
    parser.add_argument("--text_column", default="text", help="text field in .jsonl/.parquet/hub rows")
    parser.add_argument("--encoding", default="utf-8", help="text encoding of .txt and .jsonl files")
    parser.add_argument("--skip_bad_documents", action="store_true",
                        help="leave out a document that cannot be read (undecodable, malformed, no text field) "
                             "with a warning, instead of stopping")
    parser.add_argument("--split_regex", default=None,
                        help="split each .txt file into documents at matches of this regex (default: one per file)")
    parser.add_argument("--output_dir", default=os.path.join(here, "fineweb10B"), help="where shards go")
    parser.add_argument("--prefix", default="fineweb", help="shard file name prefix")
    parser.add_argument("--shard_size", type=int, default=10**8, help="tokens per train shard")
    parser.add_argument("--val_tokens", type=int, default=None,
                        help="tokens in the validation shard (default: --shard_size)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the document shuffle")
    parser.add_argument("--no_shuffle", action="store_true", help="keep the input document order")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    parser.add_argument("--bpe_file", default=None, help="gpt2.tiktoken to use (default: data/gpt2.tiktoken)")
    args = parser.parse_args(argv)

    if args.val_tokens is None:
        args.val_tokens = args.shard_size
    for option in ("shard_size", "val_tokens"):
        value = getattr(args, option)
        if not 1 <= value <= MAX_SHARD_TOKENS:
            parser.error(f"--{option}={value}: must be between 1 and {MAX_SHARD_TOKENS:,} tokens")
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: must be at least 1")
    if not args.prefix or os.sep in args.prefix or (os.altsep and os.altsep in args.prefix):
        parser.error(f"--prefix={args.prefix!r}: must be a file name prefix without a path separator "
                     "(the folder goes in --output_dir)")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.error(f"--output_dir={args.output_dir} is a file; give a folder")
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        parser.error(f"--encoding={args.encoding!r}: unknown encoding (e.g. utf-8, latin-1, cp1252)")
    if args.split_regex is not None:
        try:
            args.split_regex = re.compile(args.split_regex)
        except re.error as error:
            parser.error(f"--split_regex={args.split_regex!r}: not a valid regular expression ({error})")
    return args


def make_shards(args):
    """Everything that can be checked is checked before the first shard is written; an error found later
    removes the shards this run wrote."""
    paths = expand_inputs(args.inputs) if args.inputs else None
    remove_stale_staging(args.output_dir, args.prefix)
    existing = sorted(glob.glob(os.path.join(args.output_dir, f"{args.prefix}_*.bin")))
    if existing:  # never overwrite shards, nor leave stale ones beside a shorter new set
        raise UsageError(f"{existing[0]} exists ({len(existing)} {args.prefix}_*.bin shard(s) in {args.output_dir}); "
                         "choose another --output_dir or --prefix, or delete them first")
    try:  # here, where a bad rank file is one error line, not a crash of every tokenizer process
        gpt2_encoding(args.bpe_file)
    except OSError as error:
        raise UsageError(f"cannot read the GPT-2 rank file {error.filename} ({error.strerror}); "
                         "--bpe_file or $GPT2_BPE_FILE names it") from error
    except ValueError as error:
        raise UsageError(str(error)) from error

    shuffle_seed = None if args.no_shuffle else args.seed
    bad_documents = BadDocuments(args.skip_bad_documents)
    if paths:
        documents = list(local_documents(paths, args, bad_documents))
        if not documents:
            skipped = f" ({bad_documents.skipped} bad documents skipped)" if bad_documents.skipped else ""
            raise DataError(f"no text in {', '.join(paths)}{skipped}: the input is empty or only whitespace")
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(documents)
        total_documents = len(documents)
    else:
        documents = hub_documents(args.hf_dataset, args.hf_name, args.hf_split, args.text_column, shuffle_seed,
                                  bad_documents)
        total_documents = None

    writer = ShardWriter(args.output_dir, args.prefix, args.shard_size, args.val_tokens)
    total_tokens = 0
    try:
        token_docs = tokenized_documents(documents, args.workers, args.bpe_file)
        # Progress bars on a terminal only: elsewhere stderr keeps just warnings and errors.
        for tokens in tqdm(token_docs, total=total_documents, unit="doc", desc="tokenizing", disable=None):
            writer.add(tokens)
            total_tokens += len(tokens)
        if total_tokens <= args.val_tokens:
            raise DataError(f"the input holds {total_tokens:,} tokens, not more than --val_tokens={args.val_tokens}, "
                            "so none would be left for training; lower --val_tokens or add text")
        writer.flush()
        paths = writer.commit()
    except OSError as error:  # the output side: the input's errors are DataErrors
        writer.discard()
        raise UsageError(f"cannot write shards in --output_dir={args.output_dir} ({error.strerror}); none of this "
                         "run's shards were left there: free some space (or choose another --output_dir) and "
                         "run the same command again") from error
    except BaseException:  # bad input, Ctrl-C: nothing of this run is left behind
        writer.discard()
        raise
    if bad_documents.skipped:
        print(f"warning: skipped {bad_documents.skipped:,} bad documents (see the warnings above)", file=sys.stderr)
    print(f"{total_tokens:,} tokens in {len(paths)} shards under {args.output_dir}")
    return paths


def main(argv=None):
    args = parse_arguments(argv)
    try:
        return make_shards(args)
    except (UsageError, DataError) as error:
        exit_with(error)
    except KeyboardInterrupt:
        print(f"interrupted: no shard of this run was left in {args.output_dir}; run the same command again",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

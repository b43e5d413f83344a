"""Tests of data/: offline GPT-2 tokenizer, shard format, fineweb.py and check_shards.py."""
import collections
import errno
import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt
from data import fineweb
from data.tokenizer import (
    EOT,
    GPT2_BPE_SHA256,
    REPO_BPE_FILE,
    check_shard,
    gpt2_encoding,
    read_shard,
    write_shard,
)

DATA_DIR = os.path.dirname(REPO_BPE_FILE)

DOCUMENTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.\nA second line, with punctuation!",
    "Unicode survives: naïve café, 東京, emoji 🙂 and tabs\tinside.",
    "  leading spaces and trailing newline\n",
    "It's a test; they're short, aren't they? " * 12,
    "Numbers 1234567890 and code: def f(x): return x ** 2",
    "Short.",
    "Another document that is long enough to be split when the shards are only a few dozen tokens long. " * 3,
]


@pytest.fixture(scope="module")
def encoding():
    return gpt2_encoding()


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")


def run_fineweb(inputs, output_dir, *options):
    return fineweb.main([*map(str, inputs), "--output_dir", str(output_dir), "--prefix", "t", *map(str, options)])


def concatenated(paths):
    return np.concatenate([read_shard(p) for p in paths]).tolist()


def split_documents(tokens):
    """Token list -> list of documents, each starting with EOT."""
    starts = [i for i, t in enumerate(tokens) if t == EOT]
    assert starts and starts[0] == 0, "the token stream must begin with EOT"
    return [tokens[a:b] for a, b in zip(starts, starts[1:] + [len(tokens)])]


# --- tokenizer ---------------------------------------------------------------

def test_repo_bpe_file_is_gpt2():
    import hashlib
    with open(REPO_BPE_FILE, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == GPT2_BPE_SHA256


def test_gpt2_known_ids(encoding):
    assert encoding.encode_ordinary("Hello world") == [15496, 995]
    # GPT-2's split pattern keeps contractions as their own token: "'s" is 338.
    assert encoding.encode_ordinary("Hello world's") == [15496, 995, 338]
    assert encoding.encode_ordinary(" the\n") == [262, 198]
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert encoding.eot_token == 50256
    assert encoding.n_vocab == 50257


def test_wrong_bpe_file_is_rejected(tmp_path, monkeypatch):
    wrong = tmp_path / "wrong.tiktoken"
    wrong.write_bytes(b"SGVsbG8= 0\n")
    with pytest.raises(ValueError) as error:
        gpt2_encoding(str(wrong))
    assert str(wrong) in str(error.value) and GPT2_BPE_SHA256 in str(error.value)
    # The environment variable is used when no file is passed.
    monkeypatch.setenv("GPT2_BPE_FILE", str(wrong))
    with pytest.raises(ValueError, match="wrong.tiktoken"):
        gpt2_encoding()
    monkeypatch.setenv("GPT2_BPE_FILE", REPO_BPE_FILE)
    assert gpt2_encoding().encode_ordinary("Hello world") == [15496, 995]


# --- shard format ------------------------------------------------------------

def test_header_layout_byte_by_byte(tmp_path):
    path = tmp_path / "x.bin"
    tokens = [0, 1, 258, 50256]
    write_shard(path, np.array(tokens, dtype=np.uint16))
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * len(tokens)
    header = struct.unpack("<256i", raw[:1024])
    assert header[0] == 20240520
    assert header[1] == 1
    assert header[2] == len(tokens)
    assert header[3:] == (0,) * 253
    assert raw[:4] == bytes.fromhex("88 d8 34 01")  # 20240520 little-endian
    assert struct.unpack("<4H", raw[1024:]) == tuple(tokens)
    assert raw[1028:1030] == b"\x02\x01"  # 258 little-endian
    assert read_shard(path).dtype == np.uint16 and read_shard(path).tolist() == tokens
    assert check_shard(path) == len(tokens)
    assert os.listdir(tmp_path) == ["x.bin"]  # the temporary file was renamed, not left behind


def good_shard_bytes(tokens=(EOT, 15496, 995)):
    return struct.pack("<256i", 20240520, 1, len(tokens), *([0] * 253)) + struct.pack(f"<{len(tokens)}H", *tokens)


BAD_SHARDS = {
    "short header": (good_shard_bytes()[:100], "shorter than the 1024-byte shard header"),
    "bad magic": (struct.pack("<i", 1234) + good_shard_bytes()[4:], "bad magic number 1234"),
    "bad version": (good_shard_bytes()[:4] + struct.pack("<i", 2) + good_shard_bytes()[8:],
                    "unsupported shard version 2"),
    "truncated": (good_shard_bytes()[:-2], "truncated: header says 3 tokens"),
    "trailing bytes": (good_shard_bytes() + b"\x00\x00", "has trailing bytes"),
    "token out of range": (good_shard_bytes((EOT, 50257, 995)), "token id 50257 at position 1 is out of range"),
}


@pytest.mark.parametrize("kind", BAD_SHARDS)
def test_bad_shards_are_rejected_with_file_name(tmp_path, kind):
    content, expected_message = BAD_SHARDS[kind]
    path = tmp_path / f"bad_{kind.replace(' ', '_')}.bin"
    path.write_bytes(content)
    for check in (check_shard, read_shard):
        with pytest.raises(ValueError) as error:
            check(path)
        assert str(path) in str(error.value)
        assert expected_message in str(error.value)


def test_good_shard_bytes_pass(tmp_path):
    path = tmp_path / "good.bin"
    path.write_bytes(good_shard_bytes())
    assert read_shard(path).tolist() == [EOT, 15496, 995]


def test_write_shard_refuses_out_of_range_ids(tmp_path):
    with pytest.raises(ValueError, match="token ids must be in"):
        write_shard(tmp_path / "x.bin", np.array([1, 50257]))
    assert os.listdir(tmp_path) == []


# --- fineweb.py --------------------------------------------------------------

def test_round_trip_text_to_shards_to_text(tmp_path, encoding):
    jsonl = tmp_path / "docs.jsonl"
    write_jsonl(jsonl, DOCUMENTS[:5])
    txt = tmp_path / "one.txt"
    txt.write_text(DOCUMENTS[5], encoding="utf-8")
    paths = run_fineweb([jsonl, txt], tmp_path / "out", "--shard_size", 64, "--val_tokens", 40, "--workers", 1)
    decoded = [encoding.decode(doc[1:]) for doc in split_documents(concatenated(paths))]
    assert sorted(decoded) == sorted(DOCUMENTS[:6])  # shuffled order, same documents


def test_documents_continue_across_shard_boundaries(tmp_path, encoding):
    write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    shard_size, val_tokens = 50, 30
    paths = run_fineweb([tmp_path / "docs.jsonl"], tmp_path / "out", "--shard_size", shard_size,
                        "--val_tokens", val_tokens, "--no_shuffle", "--workers", 1)
    expected = [token for text in DOCUMENTS for token in [EOT] + encoding.encode_ordinary(text)]
    num_train = -(-(len(expected) - val_tokens) // shard_size)
    assert [os.path.basename(p) for p in paths] == \
        ["t_val_000000.bin"] + [f"t_train_{i:06d}.bin" for i in range(1, num_train + 1)]
    sizes = [check_shard(p) for p in paths]
    assert sizes[0] == val_tokens and all(s == shard_size for s in sizes[1:-1])
    assert 0 < sizes[-1] <= shard_size  # the last partial shard is written too
    tokens = concatenated(paths)
    assert tokens == expected
    assert [encoding.decode(doc[1:]) for doc in split_documents(tokens)] == DOCUMENTS
    # Some shard starts in the middle of a document: that document spans two shards.
    assert any(read_shard(p)[0] != EOT for p in paths[1:])


def test_trainer_reads_back_every_token_fineweb_wrote(tmp_path, encoding):
    """.txt files -> data/fineweb.py (as the user runs it) -> train_gpt.load_shard: the same tokens, in order."""
    texts = DOCUMENTS[:4]
    inputs = []
    for i, text in enumerate(texts):
        inputs.append(tmp_path / f"doc{i}.txt")
        inputs[-1].write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    result = run_script("fineweb.py", *inputs, "--output_dir", out, "--prefix", "rt", "--val_tokens", 20,
                        "--shard_size", 32, "--no_shuffle", "--workers", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    paths = [str(out / "rt_val_000000.bin")] + sorted(glob.glob(str(out / "rt_train_*.bin")))
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)  # nothing else written
    expected = [token for text in texts for token in [EOT] + encoding.encode_ordinary(text)]
    assert len(paths) == 1 + -(-(len(expected) - 20) // 32)
    loaded = [train_gpt.load_shard(path) for path in paths]
    assert all(tokens.dtype == torch.uint16 for tokens in loaded)
    assert [train_gpt.read_shard_header(path) for path in paths] == [len(tokens) for tokens in loaded]
    assert len(loaded[0]) == 20
    assert torch.cat(loaded).tolist() == expected


def test_shuffle_is_seeded_and_workers_keep_order(tmp_path):
    texts = [f"Document number {i}: " + "words " * (i % 7) for i in range(60)]
    write_jsonl(tmp_path / "docs.jsonl", texts)
    runs = {
        "seed_a": ("--seed", 5, "--workers", 1),
        "seed_a_pool": ("--seed", 5, "--workers", 2),
        "seed_b": ("--seed", 6, "--workers", 1),
    }
    streams = {}
    for name, options in runs.items():
        paths = run_fineweb([tmp_path / "docs.jsonl"], tmp_path / name, "--shard_size", 100, *options)
        streams[name] = concatenated(paths)
    assert streams["seed_a"] == streams["seed_a_pool"]
    assert streams["seed_a"] != streams["seed_b"]
    assert sorted(map(tuple, split_documents(streams["seed_a"]))) == \
        sorted(map(tuple, split_documents(streams["seed_b"])))


def test_txt_split_regex(tmp_path, encoding):
    (tmp_path / "book.txt").write_text("Chapter 1\n  verse one\n\nChapter 2\n  verse two\n", encoding="utf-8")
    paths = run_fineweb([tmp_path / "book.txt"], tmp_path / "out", "--split_regex", r"\n(?=\S)",
                        "--val_tokens", 4, "--no_shuffle", "--workers", 1)
    documents = [encoding.decode(doc[1:]) for doc in split_documents(concatenated(paths))]
    assert documents == ["Chapter 1\n  verse one\n", "Chapter 2\n  verse two\n"]


def usage_error(capsys, *args):
    """fineweb.main's one-line error for a wrong command line (exit status 2)."""
    with pytest.raises(SystemExit) as error:
        run_fineweb(*args)
    assert error.value.code == 2
    return capsys.readouterr().err


def test_existing_shards_are_never_overwritten(tmp_path, capsys):
    write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    paths = run_fineweb([tmp_path / "docs.jsonl"], tmp_path / "out", "--shard_size", 50, "--workers", 1)
    before = {p: Path(p).read_bytes() for p in paths}
    message = usage_error(capsys, [tmp_path / "docs.jsonl"], tmp_path / "out", "--shard_size", 50, "--workers", 1)
    assert f"{paths[1]} exists" in message and "choose another --output_dir or --prefix" in message
    assert {p: Path(p).read_bytes() for p in paths} == before


def failing_on_call(function, call, error):
    """function, except that its call-th call raises error: a full disk or a Ctrl-C halfway through a run."""
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise error
        return function(*args, **kwargs)
    return failing


@pytest.mark.parametrize("where", ["write_shard", "commit"])
@pytest.mark.parametrize("error, status, fragment", [
    (OSError(errno.ENOSPC, "No space left on device"), 2, "(No space left on device); none of this run's shards"),
    (KeyboardInterrupt(), 130, "interrupted: no shard of this run was left in"),
], ids=["full-disk", "ctrl-c"])
def test_a_run_stopped_halfway_leaves_no_shards_and_the_same_command_works(tmp_path, monkeypatch, capsys, where,
                                                                            error, status, fragment):
    write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    options = ("--shard_size", 50, "--workers", 1, "--no_shuffle")
    arguments = ([tmp_path / "docs.jsonl"], tmp_path / "out", *options)
    clean_run = run_fineweb([tmp_path / "docs.jsonl"], tmp_path / "clean", *options)
    expected = [read_shard(path).tolist() for path in clean_run]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("the user's")
    if where == "write_shard":  # the third shard cannot be written
        monkeypatch.setattr(fineweb, "write_shard", failing_on_call(fineweb.write_shard, 3, error))
    else:  # the second shard's move into place fails
        monkeypatch.setattr(fineweb.os, "replace", failing_on_call(os.replace, 2, error))
    with pytest.raises(SystemExit) as stopped:
        run_fineweb(*arguments)
    assert stopped.value.code == status and fragment in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["notes.txt"]  # no shard, no staging folder
    monkeypatch.undo()
    assert [read_shard(path).tolist() for path in run_fineweb(*arguments)] == expected
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["notes.txt", "t_val_000000.bin"] + [
        f"t_train_{i:06d}.bin" for i in range(1, len(expected))])


def test_the_staging_folder_of_a_killed_run_is_removed(tmp_path, capsys):
    write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    stale = tmp_path / "out" / ".t_staging-x1y2"
    stale.mkdir(parents=True)
    write_shard(stale / "t_val_000000.bin", [EOT])
    other = tmp_path / "out" / ".u_staging-x1y2"  # another prefix's: not this run's to remove
    other.mkdir()
    paths = run_fineweb([tmp_path / "docs.jsonl"], tmp_path / "out", "--shard_size", 50, "--workers", 1)
    assert not stale.exists() and other.is_dir() and f"removing {stale}" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "out")) == sorted([".u_staging-x1y2"] + [os.path.basename(p) for p in paths])


def test_hub_without_datasets_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    assert "pip install datasets" in usage_error(capsys, [], tmp_path / "out")


def test_missing_input_is_an_error(tmp_path, capsys):
    assert "no file matches" in usage_error(capsys, [tmp_path / "nothing*.txt"], tmp_path / "out")


# Each case: the input files it writes (name -> bytes, None: a dangling link), the arguments after the base ones (see
# run_fineweb_script), the fragments the one error line must hold, and the exit status.
BadInput = collections.namedtuple("BadInput", "files args fragments status")
GOOD_LINE = b'{"text": "a good document"}\n'
HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None
BAD_INPUTS = {
    # Reading the input: exit status 1.
    "jsonl undecodable": BadInput({"docs.jsonl": GOOD_LINE + b'{"text": "caf\xe9"}\n'}, ["docs.jsonl"],
                                  ["docs.jsonl line 2", "not valid utf-8", "0xe9", "--encoding"], 1),
    "txt undecodable": BadInput({"book.txt": b"one\ntwo\nthr\xffee\n"}, ["book.txt"],
                                ["book.txt line 3", "not valid utf-8", "0xff", "--encoding"], 1),
    "jsonl malformed": BadInput({"docs.jsonl": GOOD_LINE * 2 + b'{"text": "no end"\n'}, ["docs.jsonl"],
                                ["docs.jsonl line 3", "not valid JSON", "column 18", "--skip_bad_documents"], 1),
    "jsonl not an object": BadInput({"docs.jsonl": GOOD_LINE + b'["a", "list"]\n'}, ["docs.jsonl"],
                                    ["docs.jsonl line 2", "not a JSON object but an array"], 1),
    "jsonl no text field": BadInput({"docs.jsonl": b'{"id": 1, "content": "x"}\n'}, ["docs.jsonl"],
                                    ["docs.jsonl line 1", "no 'text' field", "'id', 'content'", "--text_column"], 1),
    "jsonl text not a string": BadInput({"docs.jsonl": GOOD_LINE + b'{"text": 5}\n'}, ["docs.jsonl"],
                                        ["docs.jsonl line 2", "'text' field is a number, expected a string"], 1),
    "parquet unreadable": BadInput({"rows.parquet": b"not parquet at all"}, ["rows.parquet"],
                                   ["rows.parquet", "not a readable parquet file" if HAVE_PYARROW
                                    else "needs pyarrow: pip install pyarrow"],
                                   1 if HAVE_PYARROW else 2),  # a missing package is status 2
    "dangling link": BadInput({"gone.txt": None}, ["gone.txt"], ["gone.txt", "cannot read it"], 1),
    "empty input": BadInput({"empty.txt": b"", "blank.txt": b" \n\t\n"}, ["empty.txt", "blank.txt"],
                            ["empty.txt, blank.txt", "empty or only whitespace"], 1),
    "fewer tokens than val_tokens": BadInput(
        {"hello.txt": b"Hello world"}, ["hello.txt", "--val_tokens", "100", "--workers", "2"],
        ["holds 3 tokens", "--val_tokens=100", "lower --val_tokens or add text"], 1),
    "no tokens left for training": BadInput(  # the validation shard is written, then removed
        {"hello.txt": b"Hello world"}, ["hello.txt", "--val_tokens", "3", "--workers", "2"],
        ["holds 3 tokens", "--val_tokens=3", "none would be left for training"], 1),
    # The command line: exit status 2, before anything is read.
    "folder as input": BadInput({"books/a.txt": b"text"}, ["books"], ["books is a folder", "books/*.txt"], 2),
    "no file matches": BadInput({}, ["missing*.txt"], ["no file matches missing*.txt"], 2),
    "unsupported file type": BadInput({"notes.md": b"text"}, ["notes.md"], ["notes.md", "unsupported file type"], 2),
    "invalid split_regex": BadInput({"a.txt": b"text"}, ["a.txt", "--split_regex", "(chapter"],
                                    ["--split_regex='(chapter'", "not a valid regular expression"], 2),
    "output_dir is a file": BadInput({"a.txt": b"text", "taken": b""}, ["a.txt", "--output_dir", "taken"],
                                     ["--output_dir=taken is a file"], 2),
    "shard_size zero": BadInput({"a.txt": b"text"}, ["a.txt", "--shard_size", "0"],
                                ["--shard_size=0", "must be between 1 and"], 2),
    "val_tokens negative": BadInput({"a.txt": b"text"}, ["a.txt", "--val_tokens", "-5"],
                                    ["--val_tokens=-5", "must be between 1 and"], 2),
    "shard_size not a number": BadInput({"a.txt": b"text"}, ["a.txt", "--shard_size", "1e6"],
                                        ["--shard_size", "invalid int value: '1e6'"], 2),
    "workers zero": BadInput({"a.txt": b"text"}, ["a.txt", "--workers", "0"], ["--workers=0", "at least 1"], 2),
    "prefix with a path separator": BadInput({"a.txt": b"text"}, ["a.txt", "--prefix", "sub/t"],
                                             ["--prefix='sub/t'", "path separator", "--output_dir"], 2),
    "unknown encoding": BadInput({"a.txt": b"text"}, ["a.txt", "--encoding", "klingon"],
                                 ["--encoding='klingon'", "unknown encoding"], 2),
    "missing bpe_file": BadInput({"a.txt": b"text"}, ["a.txt", "--bpe_file", "nowhere.tiktoken"],
                                 ["nowhere.tiktoken", "No such file", "--bpe_file"], 2),
}


def run_fineweb_script(tmp_path, *args):
    """data/fineweb.py as a user runs it, in tmp_path, writing shards to tmp_path/out."""
    return run_script("fineweb.py", "--output_dir", "out", "--prefix", "t", "--shard_size", 64, "--val_tokens", 8,
                      "--no_shuffle", "--workers", 1, *args, cwd=tmp_path)


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, case):
    for name, content in case.files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        if content is None:
            (tmp_path / name).symlink_to(tmp_path / "nowhere")
        else:
            (tmp_path / name).write_bytes(content)
    result = run_fineweb_script(tmp_path, *case.args)
    assert result.returncode == case.status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in case.fragments:
        assert fragment in lines[0]
    assert [p for p in tmp_path.rglob("*") if p.suffix in (".bin", ".tmp")] == []
    assert not (tmp_path / "out").exists()  # nor an empty output folder


def test_skip_bad_documents_keeps_the_good_ones(tmp_path, encoding):
    lines = [b'{"text": "first good"}', b'{"text": "caf\xe9"}', b'{"text": ', b'{"text": "second good"}',
             b'{"body": "no text field"}', b'{"text": "third good"}']
    (tmp_path / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = run_fineweb_script(tmp_path, "docs.jsonl", "--skip_bad_documents")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.strip().splitlines()
    assert [w.split(":")[:2] for w in warnings[:3]] == \
        [["warning", " docs.jsonl line 2"], ["warning", " docs.jsonl line 3"], ["warning", " docs.jsonl line 5"]]
    assert all(w.endswith("; skipped") for w in warnings[:3])
    assert warnings[3] == "warning: skipped 3 bad documents (see the warnings above)"
    expected = [t for text in ["first good", "second good", "third good"] for t in [EOT] + encoding.encode_ordinary(text)]
    assert concatenated(sorted(glob.glob(str(tmp_path / "out" / "t_*.bin")), key=lambda p: "val" not in p)) == expected


def test_encoding_option_reads_latin1(tmp_path, encoding):
    text = "Café, naïve, Ångström: Latin-1 text."
    (tmp_path / "latin.txt").write_bytes(text.encode("latin-1"))
    assert run_fineweb_script(tmp_path, "latin.txt").returncode == 1  # not utf-8
    result = run_fineweb_script(tmp_path, "latin.txt", "--encoding", "latin-1")
    assert result.returncode == 0, result.stderr
    paths = [tmp_path / "out" / "t_val_000000.bin", tmp_path / "out" / "t_train_000001.bin"]
    assert concatenated(paths) == [EOT] + encoding.encode_ordinary(text)


# --- check_shards.py and the committed sample ---------------------------------

def run_script(name, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(DATA_DIR, name), *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_shards_exit_codes(tmp_path):
    good_dir, bad_dir = tmp_path / "good", tmp_path / "bad"
    good_dir.mkdir()
    bad_dir.mkdir()
    (good_dir / "t_val_000000.bin").write_bytes(good_shard_bytes())
    (bad_dir / "t_val_000000.bin").write_bytes(good_shard_bytes())
    (bad_dir / "t_train_000001.bin").write_bytes(good_shard_bytes()[:-2])

    good = run_script("check_shards.py", good_dir)
    assert good.returncode == 0, good.stderr
    assert "3 tokens, 1 documents" in good.stdout
    assert "Hello world" in good.stdout  # the decoded start of the first shard

    bad = run_script("check_shards.py", bad_dir)
    assert bad.returncode == 1
    assert str(bad_dir / "t_train_000001.bin") in bad.stderr and "truncated" in bad.stderr


SCRIPTS = ["fineweb.py", "check_shards.py", "cached_fineweb10B.py"]


@pytest.mark.parametrize("args, fragment", [
    (["nothing_here"], "nothing_here does not exist"),
    (["empty_folder"], "no .bin shards in empty_folder"),
    (["empty_folder", "--decode", "-1"], "--decode=-1: must be 0 or more"),
    (["empty_folder", "--decode", "many"], "invalid int value: 'many'"),
    ([os.path.join(DATA_DIR, "sample"), "--bpe_file", "nowhere.tiktoken"], "nowhere.tiktoken"),
])
def test_check_shards_command_line_errors_are_one_line(tmp_path, args, fragment):
    (tmp_path / "empty_folder").mkdir()
    result = run_script("check_shards.py", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and fragment in result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_have_help_from_any_directory(script, tmp_path):
    result = run_script(script, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


def test_scripts_share_one_tokenizer_module():
    """Imported as modules, the scripts use data.tokenizer; no second copy imported as plain `tokenizer`."""
    modules = [f"data.{script[:-3]}" for script in SCRIPTS]
    check = (f"import importlib, sys\n"
             f"for name in {modules!r}: importlib.import_module(name)\n"
             f"assert 'data.tokenizer' in sys.modules, sorted(sys.modules)\n"
             f"assert 'tokenizer' not in sys.modules, sys.modules['tokenizer']\n")
    result = subprocess.run([sys.executable, "-c", check], cwd=os.path.dirname(DATA_DIR),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_committed_sample_shards(encoding):
    paths = sorted(glob.glob(os.path.join(DATA_DIR, "sample", "*.bin")))
    names = [os.path.basename(p) for p in paths]
    assert names == ["sample_train_000001.bin", "sample_val_000000.bin"]
    val_path, train_path = paths[1], paths[0]
    val, train = read_shard(val_path), read_shard(train_path)
    assert len(val) >= 65536 and len(train) > len(val)
    assert val[0] == EOT
    assert encoding.decode(val[:40].tolist()).startswith("<|endoftext|>")
    assert run_script("check_shards.py", os.path.join(DATA_DIR, "sample")).returncode == 0

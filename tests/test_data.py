"""Tests of data/: offline GPT-2 tokenizer, shard format, fineweb.py and check_shards.py."""
import glob
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
                        "--no_shuffle", "--workers", 1)
    documents = [encoding.decode(doc[1:]) for doc in split_documents(concatenated(paths))]
    assert documents == ["Chapter 1\n  verse one\n", "Chapter 2\n  verse two\n"]


def test_existing_shards_are_never_overwritten(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS)
    paths = run_fineweb([tmp_path / "docs.jsonl"], tmp_path / "out", "--shard_size", 50, "--workers", 1)
    before = {p: Path(p).read_bytes() for p in paths}
    with pytest.raises(SystemExit) as error:
        run_fineweb([tmp_path / "docs.jsonl"], tmp_path / "out", "--shard_size", 50, "--workers", 1)
    message = str(error.value.code)
    assert f"{paths[1]} exists" in message and "choose another --output_dir or --prefix" in message
    assert {p: Path(p).read_bytes() for p in paths} == before

def test_hub_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(SystemExit) as error:
        run_fineweb([], tmp_path / "out")
    assert "pip install datasets" in str(error.value.code)


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(SystemExit) as error:
        run_fineweb([tmp_path / "nothing*.txt"], tmp_path / "out")
    assert "no file matches" in str(error.value.code)


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

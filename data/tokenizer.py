"""GPT-2 tokenizer that works offline, and the .bin token shard format.

Shard layout (DESIGN.md section 5): a header of 256 little-endian int32
[magic 20240520, version 1, token count, 0, ...] followed by that many
little-endian uint16 GPT-2 token ids.

Always imported as `data.tokenizer` (never as plain `tokenizer`, which would be a
second copy of this module): the scripts in data/ put the repository root on
sys.path first, and the trainer and the tests run with the root on sys.path.
"""
import hashlib
import os

import numpy as np
import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's split regex

GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
REPO_BPE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2.tiktoken")
EOT = 50256  # <|endoftext|>, starts every document
VOCAB_SIZE = 50257

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def bpe_file_path(bpe_file=None):
    """The local GPT-2 rank file to use, or None to let tiktoken download it."""
    if bpe_file:
        return bpe_file
    if os.environ.get("GPT2_BPE_FILE"):
        return os.environ["GPT2_BPE_FILE"]
    if os.path.exists(REPO_BPE_FILE):
        return REPO_BPE_FILE
    return None


def gpt2_encoding(bpe_file=None):
    """A tiktoken Encoding identical to tiktoken.get_encoding("gpt2").

    Rank file: `bpe_file`, else $GPT2_BPE_FILE, else data/gpt2.tiktoken, else
    tiktoken's own download.
    """
    path = bpe_file_path(bpe_file)
    if path is None:
        return tiktoken.get_encoding("gpt2")
    path = os.path.abspath(path)
    with open(path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    # Check here so a wrong file fails with a message that says what the right one is.
    if actual != GPT2_BPE_SHA256:
        raise ValueError(
            f"{path} is not GPT-2's gpt2.tiktoken: sha256 {actual}, expected {GPT2_BPE_SHA256} "
            "(the file is whisper/assets/gpt2.tiktoken in the openai-whisper sdist)"
        )
    ranks = tiktoken.load.load_tiktoken_bpe(path, expected_hash=GPT2_BPE_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT},
        explicit_n_vocab=VOCAB_SIZE,
    )


def write_shard(path, tokens):
    """Write tokens as a shard; a crash never leaves a half-written file at `path`."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
        raise ValueError(f"{path}: token ids must be in [0, {VOCAB_SIZE})")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    tmp_path = f"{path}.{os.getpid()}.tmp"  # same folder, so os.replace is atomic
    try:
        with open(tmp_path, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype("<u2").tobytes())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def read_shard_header(path):
    """Validate the header and the file size; return the token count."""
    file_size = os.path.getsize(path)
    if file_size < HEADER_BYTES:
        raise ValueError(f"{path}: file is {file_size} bytes, shorter than the {HEADER_BYTES}-byte shard header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, num_tokens = (int(x) for x in header[:3])
    if magic != SHARD_MAGIC:
        raise ValueError(f"{path}: bad magic number {magic} (expected {SHARD_MAGIC}); not a token shard")
    if version != SHARD_VERSION:
        raise ValueError(f"{path}: unsupported shard version {version} (expected {SHARD_VERSION})")
    expected_size = HEADER_BYTES + 2 * num_tokens
    if file_size != expected_size:
        problem = "truncated" if file_size < expected_size else "has trailing bytes"
        raise ValueError(
            f"{path}: {problem}: header says {num_tokens} tokens ({expected_size} bytes) "
            f"but the file is {file_size} bytes"
        )
    return num_tokens


def read_shard(path):
    """Return the tokens of a valid shard as a uint16 array; ValueError naming the file otherwise."""
    num_tokens = read_shard_header(path)
    tokens = np.fromfile(path, dtype="<u2", count=num_tokens, offset=HEADER_BYTES)
    if num_tokens and tokens.max() >= VOCAB_SIZE:
        bad_at = int(np.argmax(tokens >= VOCAB_SIZE))
        raise ValueError(
            f"{path}: token id {int(tokens[bad_at])} at position {bad_at} is out of range "
            f"(GPT-2 ids are < {VOCAB_SIZE})"
        )
    return tokens


def check_shard(path):
    """Fully validate a shard (header, size, token ids); return its token count."""
    return len(read_shard(path))

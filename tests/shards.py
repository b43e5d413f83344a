"""Token shards for the trainer's tests, written byte for byte in the format train_gpt.py reads."""
from pathlib import Path

import numpy as np

EOT = 50256


def write_shard(path: Path, tokens, magic=20240520, version=1, header_tokens=None):
    """A shard of tokens; magic, version and the header's token count can be made wrong on purpose."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(tokens) if header_tokens is None else header_tokens
    Path(path).write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def synthetic_tokens(num_tokens: int, seed: int) -> np.ndarray:
    """Documents of Zipf-distributed token ids below 2000, each starting with EOT: learnable (unigram)."""
    rng = np.random.default_rng(seed)
    pieces, total = [], 0
    while total < num_tokens:
        length = int(rng.integers(50, 400))
        body = rng.zipf(1.3, size=length - 1)
        body = np.where(body < 2000, body, rng.integers(1, 2000, size=length - 1))
        pieces.append(np.concatenate([[EOT], body]))
        total += length
    return np.concatenate(pieces)[:num_tokens]

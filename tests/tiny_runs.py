"""The smallest whole runs the trainer allows, for the torchrun tests of test_self_healing.py and test_multinode.py:
6 layers of width 64, one 128-token micro-batch per rank and step on 2 ranks, 8 steps."""
import re
import subprocess
import sys
from pathlib import Path

from tests.test_train_run import TRAIN_GPT

ITERATIONS = 8
TINY = {"sequence_length": "128", "batch_size": "256", "val_tokens": "256", "model_dim": "64", "num_heads": "2",
        "num_kv_heads": "2", "mlp_dim": "128", "num_layers": "6", "attention_free_layers": "",
        "num_iterations": str(ITERATIONS), "val_loss_every": "4"}


def tiny_arguments(shards: Path, **overrides) -> list[str]:
    values = dict(TINY, train_files=str(shards / "train_*.bin"), val_files=str(shards / "val_*.bin"), **overrides)
    return [f"--{name}={value}" for name, value in values.items()]


def torchrun_prefix(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options]


def train_gpt_command(*torchrun_options: str, arguments: list[str]) -> list[str]:
    return [*torchrun_prefix(*torchrun_options), str(TRAIN_GPT), *arguments]


def worker_pids(torchrun_pid: int) -> dict[int, int]:
    """RANK -> pid of each worker torchrun started."""
    children = subprocess.run(["pgrep", "-P", str(torchrun_pid)], capture_output=True, text=True).stdout.split()
    return {int(re.search(rb"(?:^|\0)RANK=(\d+)", Path(f"/proc/{pid}/environ").read_bytes())[1]): int(pid)
            for pid in children}

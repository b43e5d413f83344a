"""Fixtures shared by test_self_healing.py and test_multinode.py: tiny shards, and the uninterrupted 2-rank run on
one node that their restarted and multi-node runs must equal, computed once per session."""
import pytest

from tests.shards import synthetic_tokens, write_shard
from tests.test_train_run import run
from tests.tiny_runs import tiny_arguments, train_gpt_command


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_shards")
    write_shard(directory / "train_000000.bin", synthetic_tokens(8000, seed=1))
    write_shard(directory / "val_000000.bin", synthetic_tokens(1000, seed=3))
    return directory


@pytest.fixture(scope="session")
def reference_log(tmp_path_factory, tiny_shards):
    """logs/reference.txt of an uninterrupted torchrun --standalone --nproc_per_node=2 run."""
    cwd = tmp_path_factory.mktemp("reference")
    result = run(train_gpt_command("--standalone", "--nproc_per_node=2",
                                   arguments=tiny_arguments(tiny_shards, run_id="reference")), cwd, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd / "logs" / "reference.txt"

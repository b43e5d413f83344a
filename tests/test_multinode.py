"""Across nodes on the CPU: two torchrun agents on this machine act as two nodes (c10d rendezvous on the loopback
address, a working directory each) and train the same losses as one node with the same number of ranks; a node
that never arrives ends the other within the rendezvous timeout, with torchrun's RendezvousTimeoutError."""
import os
import signal
import subprocess
import time

import pytest

import train_gpt
from tests.test_train_run import environment, logged_losses
from tests.tiny_runs import tiny_arguments, train_gpt_command


def node_command(node_rank: int, port: int, *options: str, arguments: list[str]) -> list[str]:
    return train_gpt_command("--nnodes=2", f"--node_rank={node_rank}", "--nproc_per_node=1", "--rdzv_backend=c10d",
                             f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=multinode", *options,
                             arguments=arguments)


def start(command: list[str], cwd) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"still running after {timeout} s: {process.communicate()[0][-3000:]}")


def test_two_nodes_train_the_same_losses_as_one_node(tmp_path, tiny_shards, reference_log):
    port = train_gpt.free_port()
    arguments = tiny_arguments(tiny_shards, run_id="two_nodes")
    nodes = []
    for node_rank in (0, 1):
        (tmp_path / f"node{node_rank}").mkdir()
        nodes.append(start(node_command(node_rank, port, arguments=arguments), tmp_path / f"node{node_rank}"))
    outputs = [finish(process, timeout=150) for process in nodes]
    assert [process.returncode for process in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    logs = [sorted(p.name for p in (tmp_path / f"node{n}" / "logs").iterdir()) for n in (0, 1)]
    assert logs == [["two_nodes.txt"], []]  # rank 0 (on node 0) writes the log
    log_path = tmp_path / "node0" / "logs" / "two_nodes.txt"
    assert "\ndevice: cpu x2\n" in log_path.read_text()
    two_nodes, one_node = logged_losses(log_path), logged_losses(reference_log)
    assert len(one_node) == 8 + 3 and two_nodes == one_node


def test_a_node_that_never_arrives_ends_the_other_within_the_rendezvous_timeout(tmp_path, tiny_shards):
    started = time.monotonic()
    alone = start(node_command(0, train_gpt.free_port(), "--rdzv_conf=join_timeout=5",
                               arguments=tiny_arguments(tiny_shards, run_id="alone")), tmp_path)
    output = finish(alone, timeout=60)
    assert alone.returncode != 0 and time.monotonic() - started < 30
    assert output.rstrip().endswith("torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError"), output[-2000:]
    assert not (tmp_path / "logs").exists()  # no worker started

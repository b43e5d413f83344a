"""Whole training runs of train_gpt.py on the CPU: 2 ranks under torchrun, a refused rerun, a NaN stop."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt

REPO = Path(__file__).resolve().parent.parent
TRAIN_GPT = REPO / "train_gpt.py"
EOT = 50256

_spec = importlib.util.spec_from_file_location("compare", REPO / "records" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

ITERATIONS = 12
OVERRIDES = {"sequence_length": "512", "batch_size": "2048", "val_tokens": "2048", "model_dim": "64",
             "num_heads": "2", "num_kv_heads": "2", "mlp_dim": "256", "num_iterations": str(ITERATIONS),
             "val_loss_every": "6", "run_id": "test"}


def write_shard(path: Path, tokens):
    header = np.zeros(256, dtype="<i4")
    header[:3] = 20240520, 1, len(tokens)
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shards")
    write_shard(directory / "train_000000.bin", synthetic_tokens(20000, seed=1))
    write_shard(directory / "train_000001.bin", synthetic_tokens(20000, seed=2))
    write_shard(directory / "val_000000.bin", synthetic_tokens(4000, seed=3))
    return directory


def environment():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def arguments(data_dir: Path, **overrides):
    values = dict(OVERRIDES, train_files=str(data_dir / "train_*.bin"), val_files=str(data_dir / "val_*.bin"))
    values.update(overrides)
    return [f"--{name}={value}" for name, value in values.items()]


def run(command: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """Runs command in its own session; on timeout kills its whole process group (torchrun's workers too)
    and fails with the output so far, instead of leaving ranks behind."""
    process = subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        logs = "".join(f"\n--- {p}:\n" + p.read_text()[-1500:] for p in sorted((cwd / "logs").glob("*.txt")))
        pytest.fail(f"{command[-1]}... did not finish in {timeout} s\nstdout: {stdout[-2000:]}\n"
                    f"stderr: {stderr[-2000:]}{logs}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def torchrun(cwd: Path, args: list[str], ranks: int = 2, timeout: int = 120):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                str(TRAIN_GPT), *args], cwd, timeout)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, data_dir):
    cwd = tmp_path_factory.mktemp("run")
    result = torchrun(cwd, arguments(data_dir, save_checkpoint="true"))
    return cwd, result


def test_two_rank_run_learns_and_logs(two_rank_run):
    cwd, result = two_rank_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log_path = cwd / "logs" / "test.txt"
    log = log_path.read_text()
    source = TRAIN_GPT.read_text()
    assert log.startswith(source + "\n" + "=" * 100 + "\n")
    lines = log[len(source) + 1:].splitlines()
    assert lines[0] == "=" * 100
    assert lines[1].startswith("Running Python ")
    assert lines[2].startswith("Running PyTorch ")
    body = lines[3:]
    assert "device: cpu x2" in body
    hyperparameter_lines = [line for line in body if line.startswith("hyperparameters: ")]
    assert len(hyperparameter_lines) == 1
    hyperparameters = json.loads(hyperparameter_lines[0].removeprefix("hyperparameters: "))
    for name, value in OVERRIDES.items():
        assert str(hyperparameters[name]) == value, name
    assert hyperparameters["logit_softcap"] == 15.0  # untouched defaults are logged too

    train_steps = [int(m[1]) for line in body
                   if (m := re.fullmatch(rf"step:(\d+)/{ITERATIONS} train_time:\d+ms step_avg:(?:nan|[\d.]+)ms", line))]
    assert train_steps == list(range(1, ITERATIONS + 1))
    val = {int(m[1]): float(m[2]) for line in body
           if (m := re.fullmatch(rf"step:(\d+)/{ITERATIONS} val_loss:([\d.]+) train_time:\d+ms step_avg:(?:nan|[\d.]+)ms",
                                 line))}
    assert sorted(val) == [0, 6, 12]
    # Untrained: the zero head gives ln(50304) = 10.83 exactly; the Zipf unigram alone is worth far less.
    assert abs(val[0] - np.log(50304)) < 1e-3
    assert val[12] < val[0] - 2.0, val
    assert val[12] < val[6] < val[0], val
    assert re.search(r"^peak memory \(max RSS of rank 0\): \d+ MiB$", log, re.MULTILINE)
    assert not [line for line in body if line.startswith("stopping:") or "Traceback" in line]

    summary = compare.parse_log(log_path)
    assert summary.status == "done"
    assert (summary.steps_done, summary.steps_planned) == (ITERATIONS, ITERATIONS)
    assert summary.final_val_loss == val[12] and summary.final_val_step == ITERATIONS
    assert summary.card == "cpu x2"
    assert summary.batch_size == 2048 and summary.tokens_trained == ITERATIONS * 2048


def test_rerun_with_same_run_id_is_refused(two_rank_run, data_dir):
    cwd, first = two_rank_run
    assert first.returncode == 0
    log_path = cwd / "logs" / "test.txt"
    before = log_path.read_bytes()
    result = torchrun(cwd, arguments(data_dir), timeout=90)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(Path("logs") / "test.txt") in output and "exists" in output, output[-3000:]
    assert log_path.read_bytes() == before
    assert sorted(p.name for p in (cwd / "logs").iterdir()) == ["test", "test.txt"]  # the checkpoint folder


def test_checkpoint_holds_model_code_and_every_optimizer_state(two_rank_run):
    cwd, result = two_rank_run
    assert result.returncode == 0
    rank0, rank1 = (torch.load(cwd / "logs" / "test" / f"state_step{ITERATIONS:06d}_rank{rank}.pt")
                    for rank in (0, 1))
    assert rank0["step"] == rank1["step"] == ITERATIONS
    assert rank0["code"] == TRAIN_GPT.read_text() and "model" not in rank1
    args = train_gpt.parse_hyperparameters([f"--{name}={value}" for name, value in OVERRIDES.items()])
    model = train_gpt.build_model(args, torch.device("cpu"))
    model.load_state_dict(rank0["model"])  # strict: every parameter saved, with its shape
    assert model.lm_head.weight.abs().sum() > 0  # trained: the head starts at zero
    # Adam's state is replicated; Muon's momentum lives with the rank that owns each matrix, so the two
    # ranks' Muon states together cover every hidden matrix exactly once.
    adam0, muon0 = rank0["optimizers"]
    adam1, muon1 = rank1["optimizers"]
    assert adam0["state"].keys() == adam1["state"].keys()
    num_hidden_matrices = sum(p.ndim >= 2 for p in model.blocks.parameters())
    assert not muon0["state"].keys() & muon1["state"].keys()
    assert len(muon0["state"]) + len(muon1["state"]) == num_hidden_matrices
    assert len(muon0["state"]) > 0 and len(muon1["state"]) > 0


def test_nan_learning_rate_stops_the_run(tmp_path, data_dir):
    args = arguments(data_dir, embed_lr="nan", val_loss_every="0", run_id="nan")
    result = run([sys.executable, str(TRAIN_GPT), *args], tmp_path, timeout=120)
    assert result.returncode != 0
    log = (tmp_path / "logs" / "nan.txt").read_text()
    stops = re.findall(r"^stopping: train loss is nan at step (\d+)$", log, re.MULTILINE)
    assert len(stops) == 1, log[-2000:]
    # Step 1's update makes the embeddings NaN, so step 2's loss is NaN (seen one step late at most).
    assert 1 <= int(stops[0]) <= 3
    assert f"step:{ITERATIONS}/{ITERATIONS}" not in log
    assert compare.parse_log(tmp_path / "logs" / "nan.txt").status == "crashed"
    assert "stopping: train loss is nan" in result.stdout

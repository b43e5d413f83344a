"""Whole training runs of train_gpt.py on the CPU: 2 ranks under torchrun, refused reruns, stops on bad
values, and surviving faults: checkpoints, exact resume (1 and 2 ranks), SIGTERM / Ctrl-C, a killed rank."""
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt
from tests.shards import synthetic_tokens, write_shard

REPO = Path(__file__).resolve().parent.parent
TRAIN_GPT = REPO / "train_gpt.py"

_spec = importlib.util.spec_from_file_location("compare", REPO / "records" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

# Small enough for a slow 2-core CPU: one 256-token micro-batch per rank and step on 2 ranks.
ITERATIONS = 12
OVERRIDES = {"sequence_length": "256", "batch_size": "512", "val_tokens": "512", "model_dim": "64",
             "num_heads": "2", "num_kv_heads": "2", "mlp_dim": "256", "num_iterations": str(ITERATIONS),
             "val_loss_every": "6", "run_id": "test"}


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


def run_in_background(command: list[str], cwd: Path) -> subprocess.Popen:
    """Starts command in its own session, so that its whole process group (torchrun's workers too) can be killed."""
    return subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def run(command: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """Runs command to its end; on timeout kills its whole process group and fails with the output so far,
    instead of leaving ranks behind."""
    process = run_in_background(command, cwd)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        logs = "".join(f"\n--- {p}:\n" + p.read_text()[-1500:] for p in sorted((cwd / "logs").glob("*.txt")))
        pytest.fail(f"{command[-1]}... did not finish in {timeout} s\nstdout: {stdout[-2000:]}\n"
                    f"stderr: {stderr[-2000:]}{logs}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def torchrun_command(args: list[str], ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
            str(TRAIN_GPT), *args]


def torchrun(cwd: Path, args: list[str], ranks: int = 2, timeout: int = 120):
    return run(torchrun_command(args, ranks), cwd, timeout)


STEP_RESULT = re.compile(r"^step:(\d+)/\d+ (train_loss|val_loss):(\S+) ", re.MULTILINE)


def logged_losses(log_path: Path) -> dict:
    """(kind, step) -> the loss exactly as logged, for every train_loss and val_loss line."""
    return {(kind, int(step)): value for step, kind, value in STEP_RESULT.findall(log_path.read_text())}


def wait_for_line(log_path: Path, pattern: str, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.exists() and re.search(pattern, log_path.read_text(), re.MULTILINE):
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before {pattern!r}: {process.stdout.read()[-2000:]}{process.stderr.read()[-2000:]}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"no line {pattern!r} in {log_path} within {timeout} s")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, data_dir):
    """The uninterrupted run every resumed run is compared with; checkpoints at steps 4, 8 and 12."""
    cwd = tmp_path_factory.mktemp("run")
    result = torchrun(cwd, arguments(data_dir, checkpoint_every="4", keep_checkpoints="3", save_checkpoint="true"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd, result


def test_two_rank_run_learns_and_logs(two_rank_run):
    cwd, result = two_rank_run
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

    # Every step's train loss; before the clock starts (10 warm-up steps) the time reads 0, never nan.
    train = {int(m[1]): (float(m[2]), int(m[3]), float(m[4])) for line in body
             if (m := re.fullmatch(rf"step:(\d+)/{ITERATIONS} train_loss:([\d.]+) train_time:(\d+)ms "
                                   r"step_avg:([\d.]+)ms", line))}
    assert sorted(train) == list(range(1, ITERATIONS + 1))
    assert all(train[step][1:] == (0, 0.0) for step in range(1, 11))
    assert all(train[step][1] > 0 and train[step][2] > 0 for step in (11, 12))
    assert "nan" not in "\n".join(line for line in body if line.startswith("step:"))
    assert sum(line.startswith("timing: the clock starts after 10 step(s)") for line in body) == 1
    val = {int(m[1]): float(m[2]) for line in body
           if (m := re.fullmatch(rf"step:(\d+)/{ITERATIONS} val_loss:([\d.]+) train_time:\d+ms step_avg:[\d.]+ms",
                                 line))}
    assert sorted(val) == [0, 6, 12]
    # Untrained: the zero head gives ln(50304) = 10.83 exactly; the Zipf unigram alone is worth far less.
    assert abs(val[0] - np.log(50304)) < 1e-3
    assert train[1][0] == pytest.approx(np.log(50304), abs=1e-3)
    assert val[12] < val[0] - 1.5, val
    assert val[12] < val[6] < val[0], val
    # Throughput once timed steps exist: tokens per second, and no MFU on a CPU.
    throughput = [line for line in body if line.startswith("throughput:")]
    assert len(throughput) == 1 and re.fullmatch(rf"throughput: step:12/{ITERATIONS} tokens_per_s:\d+ mfu:-",
                                                  throughput[0])
    assert re.search(r"^peak memory \(max RSS of rank 0\): \d+ MiB$", log, re.MULTILINE)
    assert not [line for line in body if line.startswith("stopping:") or "Traceback" in line]
    # The console ends with the final figures and the log's path, then the final checkpoint (which may fail).
    assert re.search(rf"done: val_loss {val[12]:.4f} at step 12, train_time [\d.]+ s, step_avg [\d.]+ ms; "
                     r"log: logs/test.txt\ncheckpoint: step 12 saved to logs/test/step_000012.pt .*\n$", result.stdout)

    summary = compare.parse_log(log_path)
    assert summary.status == "done"
    assert (summary.steps_done, summary.steps_planned) == (ITERATIONS, ITERATIONS)
    assert summary.final_val_loss == val[12] and summary.final_val_step == ITERATIONS
    assert summary.card == "cpu x2"
    assert summary.batch_size == 512 and summary.tokens_trained == ITERATIONS * 512


def test_rerun_with_same_run_id_is_refused(two_rank_run, data_dir):
    cwd, first = two_rank_run
    log_path = cwd / "logs" / "test.txt"
    before = log_path.read_bytes()
    result = torchrun(cwd, arguments(data_dir), timeout=90)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(Path("logs") / "test.txt") in output and "exists" in output, output[-3000:]
    assert output.count("exists; logs are never overwritten") == 1  # said once, not once per rank
    assert 'train_gpt.py", line' not in output  # no traceback of ours (torchrun reports the failed rank itself)
    assert log_path.read_bytes() == before
    assert sorted(p.name for p in (cwd / "logs").iterdir()) == ["test", "test.txt"]  # the checkpoint folder


def test_checkpoints_hold_the_complete_state(two_rank_run):
    cwd, _ = two_rank_run
    folder = cwd / "logs" / "test"
    assert sorted(p.name for p in folder.iterdir()) == ["step_000004.pt", "step_000008.pt", "step_000012.pt"]
    log = (cwd / "logs" / "test.txt").read_text()
    for step in (4, 8, 12):
        assert re.search(rf"^checkpoint: step {step} saved to logs/test/step_0000{step:02d}.pt \(\d+ MiB in [\d.]+ s, "
                         r"outside the training time\)$", log, re.MULTILINE)
    state = torch.load(folder / "step_000012.pt", weights_only=True)
    assert state["step"] == ITERATIONS and state["world_size"] == 2 and state["run_id"] == "test"
    assert state["code"] == TRAIN_GPT.read_text()
    assert state["hyperparameters"]["num_iterations"] == ITERATIONS
    args = train_gpt.parse_hyperparameters([f"--{name}={value}" for name, value in OVERRIDES.items()])
    model = train_gpt.build_model(args, torch.device("cpu"))
    model.load_state_dict(state["model"])  # strict: every parameter saved, with its shape
    assert model.lm_head.weight.abs().sum() > 0  # trained: the head starts at zero
    # Muon's momentum was owned by two ranks; the checkpoint holds every hidden matrix's, by name.
    hidden = {name for name, p in model.named_parameters() if name.startswith("blocks.") and p.ndim == 2}
    assert set(state["muon_momentum"]) == hidden
    assert all(state["muon_momentum"][name].abs().sum() > 0 for name in hidden)
    assert len(state["adam_state"]) == sum(1 for name, p in model.named_parameters() if name not in hidden)
    assert state["timed_steps"] == 2 and state["training_time_ms"] > 0
    assert state["rng_cpu"].dtype == torch.uint8


def resume_and_compare(cwd: Path, data_dir: Path, reference_log: Path, checkpoint: str, run_id: str, ranks: int,
                       **overrides):
    result = torchrun(cwd, arguments(data_dir, run_id=run_id, resume=checkpoint, **overrides), ranks=ranks)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resumed_log = cwd / "logs" / f"{run_id}.txt"
    return logged_losses(reference_log), logged_losses(resumed_log), resumed_log.read_text()


def test_resumed_two_rank_run_equals_the_uninterrupted_one_in_every_logged_loss(two_rank_run, data_dir):
    cwd, _ = two_rank_run
    reference, resumed, log = resume_and_compare(cwd, data_dir, cwd / "logs" / "test.txt",
                                                 "logs/test/step_000004.pt", "resumed2", ranks=2)
    assert re.search(r"^resumed: run test at step 4 from logs/test/step_000004.pt \(written on 2 rank\(s\), now 2\)$",
                     log, re.MULTILINE)
    assert sorted(resumed) == [("train_loss", s) for s in range(5, 13)] + [("val_loss", 6), ("val_loss", 12)]
    for key, value in resumed.items():
        assert value == reference[key], key


def test_resumed_one_rank_run_equals_the_uninterrupted_one(tmp_path, data_dir):
    one_rank = dict(batch_size="256", val_tokens="256")  # one micro-batch per step, as on 2 ranks
    reference = torchrun(tmp_path, arguments(data_dir, run_id="whole", checkpoint_every="8",
                                             timing_warmup_steps="2", **one_rank), ranks=1)
    assert reference.returncode == 0, reference.stderr[-3000:]
    saved_time = torch.load(tmp_path / "logs" / "whole" / "step_000008.pt", weights_only=True)["training_time_ms"]
    assert saved_time > 0
    # A fresh process from the checkpoint alone, and from the run's folder (its newest checkpoint).
    for run_id, checkpoint in (("from_file", "logs/whole/step_000008.pt"), ("from_folder", "logs/whole")):
        whole, resumed, log = resume_and_compare(tmp_path, data_dir, tmp_path / "logs" / "whole.txt", checkpoint,
                                                 run_id, ranks=1, **one_rank)
        assert "resumed: run whole at step 8" in log
        assert sorted(resumed) == [("train_loss", s) for s in range(9, 13)] + [("val_loss", 12)]
        assert all(value == whole[key] for key, value in resumed.items()), (resumed, whole)
        # The clock continues from the checkpoint's time (the resumed run's own first steps are untimed).
        times = [int(t) for t in re.findall(r"^step:\d+/12 train_loss:\S+ train_time:(\d+)ms", log, re.MULTILINE)]
        assert times[0] == round(saved_time) and times[-1] >= times[0]


def test_resuming_onto_another_number_of_ranks_redistributes_muon(two_rank_run, data_dir):
    cwd, _ = two_rank_run
    reference, resumed, log = resume_and_compare(cwd, data_dir, cwd / "logs" / "test.txt",
                                                 "logs/test/step_000008.pt", "onto_one", ranks=1)
    assert "(written on 2 rank(s), now 1)" in log
    # Same global batch and tokens; only the order of the floating-point sums differs.
    for key, value in resumed.items():
        assert float(value) == pytest.approx(float(reference[key]), abs=2e-3), key


def test_sigterm_stops_both_ranks_with_a_checkpoint_and_the_resumed_run_ends_the_same(two_rank_run, data_dir):
    cwd, _ = two_rank_run
    process = run_in_background(torchrun_command(arguments(data_dir, run_id="term", checkpoint_every="50")), cwd)
    log_path = cwd / "logs" / "term.txt"
    wait_for_line(log_path, r"^step:3/12 train_loss:", process)
    os.killpg(process.pid, signal.SIGTERM)  # as a cluster scheduler does: every process of the job
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    log = log_path.read_text()
    stops = re.findall(r"^stopping: received SIGTERM at step (\d+); resume with --resume=(\S+); log: logs/term.txt$",
                       log, re.MULTILINE)
    assert len(stops) == 1, log[-3000:] + stderr[-3000:]
    step, checkpoint = int(stops[0][0]), stops[0][1]
    assert 3 <= step < ITERATIONS
    assert checkpoint == f"logs/term/step_{step:06d}.pt"
    assert sorted(p.name for p in (cwd / "logs" / "term").iterdir()) == [f"step_{step:06d}.pt"]  # nothing partial
    assert 'train_gpt.py", line' not in stderr  # no traceback of ours (torchrun reports the signal itself)
    assert compare.parse_log(log_path).status == "stopped"
    reference, resumed, resumed_log = resume_and_compare(cwd, data_dir, cwd / "logs" / "test.txt", checkpoint,
                                                         "term_resumed", ranks=2)
    stopped = logged_losses(log_path)
    for key, value in {**stopped, **resumed}.items():
        assert value == reference[key], key
    assert resumed[("val_loss", 12)] == reference[("val_loss", 12)]


def test_ctrl_c_stops_with_one_line_and_no_traceback(tmp_path, data_dir):
    process = run_in_background([sys.executable, str(TRAIN_GPT), *arguments(data_dir, run_id="ctrlc")], tmp_path)
    log_path = tmp_path / "logs" / "ctrlc.txt"
    wait_for_line(log_path, r"^step:2/12 train_loss:", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    assert "Traceback" not in stdout + stderr
    assert re.search(r"^stopping: received SIGINT at step \d+; no checkpoint \(checkpoint_every=0\), so it cannot be "
                     r"resumed; log: logs/ctrlc.txt$", stdout, re.MULTILINE)


def test_killing_one_rank_ends_the_other_within_a_minute(tmp_path, data_dir):
    process = run_in_background(torchrun_command(arguments(data_dir, run_id="kill", num_iterations="30",
                                                           val_loss_every="0")), tmp_path)
    wait_for_line(tmp_path / "logs" / "kill.txt", r"^step:2/30 train_loss:", process)
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                                  text=True).stdout.split()]
    ranks = {int(re.search(rb"(?:^|\0)RANK=(\d+)", Path(f"/proc/{pid}/environ").read_bytes())[1]): pid
             for pid in workers}
    os.kill(ranks[1], signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("rank 0 and torchrun were still running 60 s after rank 1 was killed")
    assert process.returncode != 0 and time.monotonic() - killed_at < 60
    assert not Path(f"/proc/{ranks[0]}").exists() or b"zombie" in Path(f"/proc/{ranks[0]}/status").read_bytes()


def test_a_rank_that_stops_responding_makes_the_others_stop_after_the_collective_timeout(tmp_path, data_dir):
    process = run_in_background(torchrun_command(arguments(data_dir, run_id="hang", num_iterations="30",
                                                           val_loss_every="0", collective_timeout_s="10")), tmp_path)
    log_path = tmp_path / "logs" / "hang.txt"
    wait_for_line(log_path, r"^step:2/30 train_loss:", process)
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                                  text=True).stdout.split()]
    ranks = {int(re.search(rb"(?:^|\0)RANK=(\d+)", Path(f"/proc/{pid}/environ").read_bytes())[1]): pid
             for pid in workers}
    os.kill(ranks[1], signal.SIGSTOP)  # alive but silent: torchrun cannot tell
    stopped_at = time.monotonic()
    try:
        wait_for_line(log_path, r"^stopping: rank 0 lost its peers at step \d+", process, timeout=60)
        elapsed = time.monotonic() - stopped_at
    finally:
        for send in (lambda: os.kill(ranks[1], signal.SIGCONT), lambda: os.killpg(process.pid, signal.SIGKILL)):
            with contextlib.suppress(ProcessLookupError):
                send()
        process.communicate()
    assert elapsed < 45  # the 10 s timeout, plus the step that was running


def test_a_truncated_checkpoint_is_never_picked_for_resume(two_rank_run, tmp_path):
    cwd, _ = two_rank_run
    folder = tmp_path / "run"
    shutil.copytree(cwd / "logs" / "test", folder)
    whole = (folder / "step_000012.pt").read_bytes()
    (folder / ".step_000016.pt.partial").write_bytes(whole[:len(whole) // 2])  # a save cut by a crash
    (folder / "step_000014.pt").write_bytes(whole[:len(whole) // 3])  # truncated by a failing disk or copy
    warnings = []
    path, checkpoint = train_gpt.find_checkpoint(str(folder), warnings.append)
    assert path == folder / "step_000012.pt" and checkpoint["step"] == 12
    assert len(warnings) == 1 and "step_000014.pt" in warnings[0] and "not a complete checkpoint" in warnings[0]
    with pytest.raises(train_gpt.InputError, match="step_000014.pt: not a complete checkpoint"):
        train_gpt.find_checkpoint(str(folder / "step_000014.pt"), warnings.append)


BAD_RESUMES = {  # name -> (how to make the checkpoint, extra overrides, fragments of the one-line error)
    "missing": (None, {}, ["no such checkpoint file or run folder"]),
    "empty_folder": ("folder", {}, ["no complete checkpoint"]),
    "truncated": ("truncated", {}, ["not a complete checkpoint"]),
    "corrupt": ("corrupt", {}, ["not a complete checkpoint"]),
    "not_ours": ("foreign", {}, ["not a checkpoint of this trainer"]),
    "changed_math": ("copy", {"muon_lr": "0.01", "cooldown_frac": "0.5"},
                     ["muon_lr 0.05 -> 0.01", "cooldown_frac 0.4 -> 0.5", "--force_resume=true"]),
    "other_shape": ("copy", {"mlp_dim": "128", "force_resume": "true"}, ["another shape"]),
    "past_the_end": ("copy", {"num_iterations": "8", "force_resume": "true"}, ["holds step 8", "num_iterations=8"]),
}


@pytest.mark.parametrize("case", sorted(BAD_RESUMES))
def test_bad_checkpoints_are_refused_before_training(two_rank_run, data_dir, tmp_path, case):
    cwd, _ = two_rank_run
    kind, overrides, fragments = BAD_RESUMES[case]
    target = tmp_path / "checkpoint.pt"
    source = cwd / "logs" / "test" / "step_000008.pt"
    if kind == "folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif kind == "truncated":
        target.write_bytes(source.read_bytes()[:100000])
    elif kind == "corrupt":
        target.write_bytes(os.urandom(5000))
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, target)
    elif kind == "copy":
        shutil.copy(source, target)
    result = run([sys.executable, str(TRAIN_GPT), *arguments(data_dir, run_id=case, resume=str(target), **overrides)],
                 tmp_path, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert not re.search(r"^step:\d+/\d+ train_loss", (tmp_path / "logs" / f"{case}.txt").read_text(), re.MULTILINE)


def test_checkpoint_of_other_code_resumes_with_a_warning_naming_the_difference(two_rank_run, data_dir, tmp_path):
    cwd, _ = two_rank_run
    changed = tmp_path / "train_gpt.py"
    changed.write_text(TRAIN_GPT.read_text().replace("# GPT-2's <|endoftext|>; it starts every document",
                                                     "# the end-of-text token"))
    shutil.copytree(REPO / "data", tmp_path / "data")
    result = run([sys.executable, str(changed), *arguments(data_dir, run_id="newcode",
                                                           resume=str(cwd / "logs" / "test" / "step_000008.pt"))],
                 tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"warning: \S+step_000008.pt was written by other code: 2 line\(s\) differ, the first: "
                     r".*endoftext", result.stdout)


def test_non_finite_loss_stops_the_run(tmp_path, data_dir):
    args = arguments(data_dir, scalar_lr="1e30", val_loss_every="0", run_id="nan")
    result = run([sys.executable, str(TRAIN_GPT), *args], tmp_path, timeout=120)
    assert result.returncode == 1
    log = (tmp_path / "logs" / "nan.txt").read_text()
    stops = re.findall(r"^stopping: train loss is (?:nan|inf) at step (\d+)$", log, re.MULTILINE)
    assert len(stops) == 1, log[-2000:]
    # The first updates blow up the scalars, so a loss a few steps in is not finite.
    assert 1 <= int(stops[0]) <= 4
    assert f"step:{ITERATIONS}/{ITERATIONS}" not in log
    assert compare.parse_log(tmp_path / "logs" / "nan.txt").status == "crashed"
    assert "stopping: train loss is" in result.stdout


def test_bad_token_in_a_later_training_shard_stops_the_run_after_the_first_step(tmp_path, data_dir):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "train_000000.bin", synthetic_tokens(3000, seed=1))  # 5 steps of 512 tokens
    bad = synthetic_tokens(20000, seed=2)
    bad[1234] = 50304
    write_shard(shards / "train_000001.bin", bad)
    args = arguments(data_dir, train_files=str(shards / "train_*.bin"), val_loss_every="0", run_id="badtoken")
    result = torchrun(tmp_path, args)  # rank 1 checks the second shard; rank 0 reports what it found, once
    assert result.returncode != 0
    assert 'train_gpt.py", line' not in result.stderr
    message = f"{shards / 'train_000001.bin'}: token id 50304 at position 1234 is outside the vocabulary"
    assert result.stderr.count(f"error: {message}") == 1, result.stderr[-3000:]
    log = (tmp_path / "logs" / "badtoken.txt").read_text()
    # Found by the background check during step 1 (which compiles on a GPU), long before step 5 reaches the shard.
    assert re.search(rf"^stopping: {re.escape(message)}.* \(at step 1\)$", log, re.MULTILINE)
    assert compare.parse_log(tmp_path / "logs" / "badtoken.txt").status == "crashed"


def test_bad_token_in_the_validation_shard_is_refused_before_training(tmp_path, data_dir):
    shards = tmp_path / "val"
    shards.mkdir()
    bad = synthetic_tokens(4000, seed=3)
    bad[99] = 65000
    write_shard(shards / "val_000000.bin", bad)
    args = arguments(data_dir, val_files=str(shards / "val_*.bin"), run_id="badval")
    result = run([sys.executable, str(TRAIN_GPT), *args], tmp_path, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "position 99" in result.stderr and "val_000000.bin" in result.stderr
    assert "step:1/" not in (tmp_path / "logs" / "badval.txt").read_text()

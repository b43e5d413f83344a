"""tools/repeat.py: a series of real tiny CPU runs of train_gpt.py, continued after a lost log; a Ctrl-C that
reaches the trainer once and waits for its checkpoint; set-aside and failure handling with a stand-in launcher;
one configuration per series; argument errors."""
import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.shards import synthetic_tokens, write_shard

REPO = Path(__file__).resolve().parent.parent
REPEAT_PY = REPO / "tools" / "repeat.py"

_spec = importlib.util.spec_from_file_location("repeat", REPEAT_PY)
repeat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repeat)

# One 256-token micro-batch per step and two steps: a run takes about 10 s on a 2-core CPU, mostly start-up and
# the 50304-word output layer.
TINY_RUN = ["--sequence_length=256", "--batch_size=256", "--val_tokens=256", "--model_dim=32", "--num_heads=2",
            "--num_kv_heads=2", "--mlp_dim=64", "--num_iterations=2", "--val_loss_every=0"]


def run_repeat(*args, cwd: Path, timeout: int = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPEAT_PY), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


def group_row(stdout: str, name: str) -> list[str]:
    group_table = stdout.split("\n\n")[-1]
    rows = [line.split() for line in group_table.splitlines() if line.startswith(name + " ")]
    assert len(rows) == 1, stdout
    return rows[0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> list[str]:
    data = tmp_path_factory.mktemp("shards")
    write_shard(data / "train_000000.bin", synthetic_tokens(20000, seed=1))
    write_shard(data / "val_000000.bin", synthetic_tokens(4000, seed=3))
    return [f"--train_files={data / 'train_*.bin'}", f"--val_files={data / 'val_*.bin'}"]


TRAINER = shlex.join([sys.executable, str(REPO / "train_gpt.py")])


@pytest.fixture(scope="module")
def series(tmp_path_factory, tiny_data):
    """Two real runs of the tiny configuration: (workdir, the repeat.py arguments, its result)."""
    workdir = tmp_path_factory.mktemp("work")
    args = ["tiny", "--runs", "2", "--launcher", TRAINER, "--workdir", workdir, "--", *TINY_RUN, *tiny_data]
    return workdir, args, run_repeat(*args, cwd=workdir)


def test_series_runs_every_seed_and_summarizes(series):
    workdir, _, result = series
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (workdir / "logs").glob("*.txt")) == ["tiny-s0.txt", "tiny-s1.txt"]
    for seed in (0, 1):
        log = (workdir / "logs" / f"tiny-s{seed}.txt").read_text()
        assert f'"seed": {seed}' in log and f'"run_id": "tiny-s{seed}"' in log
        assert repeat.compare.parse_log(workdir / "logs" / f"tiny-s{seed}.txt").status == "done"
    assert group_row(result.stdout, "tiny")[1:3] == ["2", "0"]  # n, left_out


def test_lost_log_reruns_only_its_seed(series):
    workdir, args, first = series
    assert first.returncode == 0
    kept, lost = workdir / "logs" / "tiny-s0.txt", workdir / "logs" / "tiny-s1.txt"
    kept_bytes, kept_mtime = kept.read_bytes(), kept.stat().st_mtime_ns
    lost.unlink()

    result = run_repeat(*args, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "seed 0: done already, skipped" in result.stdout
    assert "--seed=0" not in result.stdout and "--seed=1 --run_id=tiny-s1" in result.stdout
    assert kept.read_bytes() == kept_bytes and kept.stat().st_mtime_ns == kept_mtime
    assert repeat.compare.parse_log(lost).status == "done"
    assert group_row(result.stdout, "tiny")[1:3] == ["2", "0"]


STAND_IN_TRAINER = '''
import sys
from pathlib import Path
args = dict(arg.removeprefix("--").split("=", 1) for arg in sys.argv[1:])
if args["seed"] in args.get("fail_seeds", "").split(","):
    sys.exit(3)
Path("logs").mkdir(exist_ok=True)
with open(Path("logs") / (args["run_id"] + ".txt"), "x") as log:
    log.write("Running PyTorch 2.13.0+cpu\\ndevice: cpu x1\\n"
              f"step:4/4 val_loss:{4 + int(args['seed']) / 100:.4f} train_time:900ms step_avg:150.00ms\\n")
'''


@pytest.fixture
def stand_in(tmp_path):
    """A launcher that writes a finished log at once, and fails for the seeds in --fail_seeds."""
    (tmp_path / "trainer.py").write_text(STAND_IN_TRAINER)
    return ["--launcher", shlex.join([sys.executable, "trainer.py"]), "--workdir", tmp_path]


def test_unfinished_log_is_set_aside_and_rerun(tmp_path, stand_in):
    logs = tmp_path / "logs"
    logs.mkdir()
    partial = "Running PyTorch 2.13.0+cpu\ndevice: cpu x1\nstep:2/4 train_time:300ms step_av"
    (logs / "s-s1.txt").write_text(partial)
    (logs / "s-s1.incomplete1.txt").write_text("an earlier one")
    (logs / "s-s1").mkdir()  # its checkpoints, which would make the trainer refuse the run id
    (logs / "s-s1" / "step_000002.pt").write_bytes(b"checkpoint")
    result = run_repeat("s", "--seeds", "1,2", *stand_in, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "seed 1: " in result.stdout and "did not finish (truncated)" in result.stdout
    assert (logs / "s-s1.incomplete1.txt").read_text() == "an earlier one"
    assert (logs / "s-s1.incomplete2.txt").read_text() == partial
    assert (logs / "s-s1.incomplete2" / "step_000002.pt").read_bytes() == b"checkpoint"
    assert not (logs / "s-s1").exists()
    assert repeat.compare.parse_log(logs / "s-s1.txt").status == "done"
    assert group_row(result.stdout, "s")[1:4] == ["2", "0", "4.0150"]


def test_failed_run_is_reported_and_the_series_goes_on(tmp_path, stand_in):
    result = run_repeat("f", "--runs", "3", *stand_in, "--", "--fail_seeds=1", cwd=tmp_path)
    assert result.returncode == 1
    assert "seed 1: the run failed (exit status 3)" in result.stdout
    assert "runs failed for seeds 1" in result.stderr
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.txt")) == ["f-s0.txt", "f-s2.txt"]
    assert group_row(result.stdout, "f")[1:3] == ["2", "0"]


@pytest.mark.parametrize("args, message", [
    (["x", "--runs", "0"], "--runs 0: needs at least 1 run"),
    (["x", "--seeds", "1,,2"], "--seeds '1,,2': expected comma-separated"),
    (["x", "--seeds", "1,1"], "a seed appears twice"),
    (["a/b", "--runs", "1"], "name 'a/b': use only letters"),
    (["a b", "--runs", "1"], "name 'a b': use only letters"),
    (["x", "--runs", "1", "--launcher", "no-such-program --flag"], "no-such-program is not an executable"),
    (["x", "--runs", "1", "--workdir", "missing"], "--workdir missing: not a directory"),
    (["x", "--runs", "1", "--launcher", "./run.sh"], "./run.sh is not an executable"),  # relative to the workdir
    (["x", "--runs", "1", "--", "--seed=4"], "sets --seed and --run_id itself"),
])
def test_bad_arguments_stop_before_anything_runs(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(repeat, "REPO", tmp_path)  # the default workdir and launcher: never the real run.sh
    assert repeat.main(args) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.startswith("repeat.py: error: ") and message in err, err
    assert out == "" and not (tmp_path / "logs").exists()


def start_repeat(*args, cwd: Path) -> subprocess.Popen:
    """repeat.py in a session of its own, as a shell starts a job: its process group is what a Ctrl-C reaches."""
    return subprocess.Popen([sys.executable, str(REPEAT_PY), *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


def wait_for(path: Path, pattern: str, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (path.exists() and re.search(pattern, path.read_text(), re.MULTILINE)):
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no {pattern!r} in {path}: {process.communicate()}")
        time.sleep(0.1)


def test_ctrl_c_reaches_the_trainer_and_repeat_waits_for_its_checkpoint(tmp_path, tiny_data):
    process = start_repeat("c", "--runs", "2", "--launcher", TRAINER, "--workdir", tmp_path, "--", *TINY_RUN,
                           "--num_iterations=70", "--checkpoint_every=1000", *tiny_data, cwd=tmp_path)
    log = tmp_path / "logs" / "c-s0.txt"
    wait_for(log, r"^step:2/70 train_loss:", process)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground process group
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    stops = re.findall(r"^stopping: received SIGINT at step (\d+); resume with --resume=(\S+);", log.read_text(),
                       re.MULTILINE)
    assert len(stops) == 1, log.read_text()[-2000:] + stderr[-2000:]
    assert (tmp_path / stops[0][1]).is_file() and int(stops[0][0]) < 70
    assert "SIGINT: the series stopped at seed 0; the same command continues it" in stderr
    assert not (tmp_path / "logs" / "c-s1.txt").exists()


SLOW_STAND_IN = '''
import signal, sys, time
from pathlib import Path
received = []
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, lambda number, frame: received.append(time.monotonic()))
Path("ready").write_text("")
while not received or time.monotonic() < received[0] + 1:  # a step and a checkpoint take a while
    time.sleep(0.05)
Path("signals_received").write_text(str(len(received)))
sys.exit(130)
'''


@pytest.mark.parametrize("number, to_group", [(signal.SIGINT, True), (signal.SIGINT, False), (signal.SIGHUP, True)],
                         ids=["ctrl-c", "sigint-to-repeat-alone", "closed-terminal"])
def test_a_stop_signal_reaches_the_run_once_and_repeat_waits(tmp_path, to_group, number):
    (tmp_path / "slow.py").write_text(SLOW_STAND_IN)
    process = start_repeat("w", "--runs", "2", "--launcher", shlex.join([sys.executable, "slow.py"]),
                           "--workdir", tmp_path, cwd=tmp_path)
    wait_for(tmp_path / "ready", "", process, timeout=30)
    (os.killpg if to_group else os.kill)(process.pid, number)
    _, stderr = process.communicate(timeout=30)
    assert (tmp_path / "signals_received").read_text() == "1", stderr
    assert process.returncode == 128 + number and stderr.count("the series stopped at seed 0") == 1, stderr


def done_log(path: Path, code: str = "", card: str = "cpu x1", **hyperparameters) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{code}Running PyTorch 2.13.0+cpu\ndevice: {card}\nhyperparameters: " + json.dumps(hyperparameters)
                    + "\nstep:4/4 val_loss:4.0000 train_time:900ms step_avg:150.00ms\n")
    return path


@pytest.mark.parametrize("logged, overrides, problem", [
    ({"muon_lr": 0.04}, ["--muon_lr=0.05"], "finished with muon_lr=0.04, and this command sets --muon_lr=0.05"),
    ({"muon_lr": 0.04}, ["--muon_lr=4e-2"], None),
    ({"sample_at_end": True}, ["--sample_at_end=no"], "finished with sample_at_end=true"),
    ({"sample_at_end": False}, ["--sample_at_end=no"], None),
    ({"num_iterations": 60}, ["--num_iterations=60.5"], "finished with num_iterations=60,"),
    ({"train_files": "a/*.bin"}, ["--train_files=b/*.bin"], 'finished with train_files="a/*.bin"'),
])
def test_an_override_that_a_finished_log_contradicts_is_found(tmp_path, logged, overrides, problem):
    done_log(tmp_path / "x-s0.txt", seed=0, run_id="x-s0", **logged)
    found = repeat.configuration_problem("x", [0, 1], tmp_path, {"launcher": ["t"], "overrides": overrides})
    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize("third, difference", [
    ({"muon_lr": 0.05}, "different hyperparameters (muon_lr)"),
    ({"muon_lr": 0.04, "code": "print('edited')\n"}, "different trainer code"),
    ({"muon_lr": 0.04, "card": "NVIDIA H100 80GB HBM3 x8"}, "different cards (cpu x1; NVIDIA H100 80GB HBM3 x8)"),
])
def test_finished_logs_of_other_configurations_are_found(tmp_path, third, difference):
    done_log(tmp_path / "x-s0.txt", seed=0, run_id="x-s0", muon_lr=0.04, checkpoint_every=10)
    done_log(tmp_path / "x-s1.txt", seed=1, run_id="x-s1", muon_lr=0.04, checkpoint_every=0)
    assert repeat.configuration_problem("x", [0, 1], tmp_path, {"launcher": ["t"], "overrides": []}) is None
    done_log(tmp_path / "x-s2.txt", seed=2, run_id="x-s2", **third)
    found = repeat.configuration_problem("x", [0, 1, 2], tmp_path, {"launcher": ["t"], "overrides": []})
    assert "x-s0.txt and " in found and f"x-s2.txt finished with {difference}: they are not one series" in found


@pytest.mark.parametrize("second", [["--", "--muon_lr=0.05"], [], ["--", "--muon_lr=0.04", "--seq=1"]])
def test_a_series_continued_with_other_overrides_is_refused(tmp_path, stand_in, capsys, second):
    stand_in = list(map(str, stand_in))
    assert repeat.main(["o", "--runs", "1", *stand_in, "--", "--muon_lr=0.04"]) == 0
    logs_before = {path.name: path.read_bytes() for path in (tmp_path / "logs").iterdir()}
    capsys.readouterr()
    assert repeat.main(["o", "--runs", "2", *stand_in, *second]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "series 'o' ran as " in err and "give the new configuration another name" in err, err
    assert {path.name: path.read_bytes() for path in (tmp_path / "logs").iterdir()} == logs_before
    assert repeat.main(["o", "--runs", "2", *stand_in, "--", "--muon_lr=0.04"]) == 0
    assert "seed 0: done already, skipped" in capsys.readouterr().out

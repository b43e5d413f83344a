"""tools/repeat.py: a series of real tiny CPU runs of train_gpt.py, continued after a lost log; set-aside and
failure handling with a stand-in launcher; argument errors."""
import importlib.util
import os
import shlex
import subprocess
import sys
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
def series(tmp_path_factory):
    """Two real runs of the tiny configuration: (workdir, the repeat.py arguments, its result)."""
    data = tmp_path_factory.mktemp("shards")
    write_shard(data / "train_000000.bin", synthetic_tokens(20000, seed=1))
    write_shard(data / "val_000000.bin", synthetic_tokens(4000, seed=3))
    workdir = tmp_path_factory.mktemp("work")
    launcher = shlex.join([sys.executable, str(REPO / "train_gpt.py")])
    args = ["tiny", "--runs", "2", "--launcher", launcher, "--workdir", workdir,
            "--", *TINY_RUN, f"--train_files={data / 'train_*.bin'}", f"--val_files={data / 'val_*.bin'}"]
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
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["f-s0.txt", "f-s2.txt"]
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

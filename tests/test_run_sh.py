"""run.sh starts one torchrun process per GPU that CUDA_VISIBLE_DEVICES leaves visible, and passes a stop signal to
the ranks without letting torchrun cut their graceful stop short (CPU only: fake nvidia-smi, torchrun and CPU-demo
tools print what they were asked to do, or act as torchrun and its ranks do on a signal)."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def write_executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of run.sh in a folder laid out like the repository (run.sh cds into its own folder)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "run.sh", repo / "run.sh")
    (repo / "data" / "fineweb10B").mkdir(parents=True)
    (repo / "data" / "fineweb10B" / "fineweb_train_000001.bin").write_bytes(b"")
    write_executable(repo / "setup_cpu.sh", "#!/bin/sh\n")
    write_executable(repo / ".venv" / "bin" / "python", '#!/bin/sh\necho "cpu demo: $*"\n')
    bin_dir = tmp_path / "bin"
    write_executable(bin_dir / "nvidia-smi", "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                                             "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    write_executable(bin_dir / "torchrun", '#!/bin/sh\necho "torchrun $*"\n')
    return repo, bin_dir


def run_sh(fake_repo, cuda_visible_devices=None):
    repo, bin_dir = fake_repo
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    if cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    result = subprocess.run(["bash", str(repo / "run.sh"), "--num_iterations=3"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_all_gpus_without_cuda_visible_devices(fake_repo):
    output = run_sh(fake_repo)
    assert "torchrun --standalone --nproc_per_node=2 train_gpt.py --num_iterations=3" in output


def test_cuda_visible_devices_sets_the_process_count(fake_repo):
    assert "--nproc_per_node=3 " in run_sh(fake_repo, "0,2,5")
    assert "--nproc_per_node=1 " in run_sh(fake_repo, "1")


@pytest.mark.parametrize("hidden", ["", "-1", "none"])
def test_cuda_visible_devices_hiding_all_gpus_runs_the_cpu_demo(fake_repo, hidden):
    output = run_sh(fake_repo, hidden)
    assert "hides every GPU" in output and "No GPU" in output
    assert "cpu demo: train_gpt.py" in output and "--num_iterations=3" in output
    assert "torchrun" not in output


# Like torchrun: each rank in a session of its own; a stop signal torchrun receives goes on to the ranks, which are
# killed after a grace period (30 s in torch < 2.12; here 0.5 s, shorter than the ranks' graceful stop).
FAKE_TORCHRUN = '''#!{python}
import signal, subprocess, sys, time
ranks = int(next(arg for arg in sys.argv if arg.startswith("--nproc_per_node=")).split("=")[1])
def stop(number, frame):
    for process in processes:
        process.send_signal(number)
    time.sleep(0.5)
    for process in processes:
        process.kill()
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, stop)
processes = [subprocess.Popen([sys.executable, "rank.py", str(rank)], start_new_session=True) for rank in range(ranks)]
sys.exit(max(process.wait() for process in processes))
'''
# A rank that takes a second to finish its step and write its checkpoint once a stop signal arrives.
RANK = '''
import signal, sys, time
from pathlib import Path
rank, received = sys.argv[1], []
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, lambda number, frame: received.append(signal.Signals(number).name))
Path(f"ready{rank}").write_text("")
while not received:
    time.sleep(0.05)
time.sleep(1)
Path(f"checkpoint{rank}").write_text(" ".join(received))
sys.exit(128 + signal.Signals[received[0]])
'''


@pytest.mark.parametrize("number, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, True)],
                         ids=["ctrl-c", "kill", "closed-terminal"])
def test_a_stop_signal_reaches_each_rank_once_and_is_not_cut_short(fake_repo, number, to_group):
    repo, bin_dir = fake_repo
    write_executable(bin_dir / "torchrun", FAKE_TORCHRUN.format(python=sys.executable))
    (repo / "rank.py").write_text(RANK)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", CUDA_VISIBLE_DEVICES="0,1")
    # A session of its own, as a shell starts a job: its process group is what a terminal's Ctrl-C reaches.
    process = subprocess.Popen(["bash", str(repo / "run.sh")], cwd=repo, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not all((repo / f"ready{rank}").exists() for rank in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    (os.killpg if to_group else os.kill)(process.pid, number)
    _, stderr = process.communicate(timeout=30)
    for rank in (0, 1):
        assert (repo / f"checkpoint{rank}").read_text() == number.name, stderr
    assert process.returncode == 128 + number, stderr

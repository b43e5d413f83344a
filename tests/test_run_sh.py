"""run.sh starts one torchrun process per GPU that CUDA_VISIBLE_DEVICES leaves visible (CPU only: fake
nvidia-smi, torchrun and CPU-demo tools print what they were asked to do)."""
import os
import shutil
import stat
import subprocess
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

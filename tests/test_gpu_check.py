"""tools/gpu_check.sh in its dry run (every phase on the CPU with a tiny model, every file it writes, all of
it returned by the device tool), its deadlines, budget and fail-fast with a stand-in trainer, the kernel
classification of tools/profile_step.py, and tools/gpu_check_summary.py's resume check and speed flag."""
import importlib.util
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "gpu_check.sh"

_spec = importlib.util.spec_from_file_location("profile_step", REPO / "tools" / "profile_step.py")
profile_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile_step)
_spec = importlib.util.spec_from_file_location("gpu_check_summary", REPO / "tools" / "gpu_check_summary.py")
summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary)

# Realistic names: CUDA kernels as the profiler reports them (cuBLAS, cuDNN, Inductor's Triton, NCCL, ATen)
# and, for the CPU path, ATen operators.
KERNELS = {
    "matrix products": [
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_"
        "kernel__5x_cublas",
        "nvjet_tst_256x128_64x4_2x1_v_bz_coopB_NNT",
        "ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x4_tn",
        "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8>("
        "cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8::Params)",
        "triton_tem_fused_mm_0",
        "aten::mm",
        "triton_tem_fused_bmm_0",  # batched products: batched_muon's Newton-Schulz (Muon's row inside its scope)
        "aten::bmm",
        "aten::baddbmm",
        "aten::_scaled_mm",  # fp8_head
        "sm90_xmma_gemm_e4m3e4m3_e4m3f32_f32_tn_n_tilesize128x128x128_warpgroupsize1x1x1_execute_segment_k_off_kernel",
        "FP8Linear",
        "FP8LinearBackward",
    ],
    "attention forward": [
        "triton_tem_fused_flex_attention_0",
        "void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>"
        "(flash::Flash_fwd_params)",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
    ],
    "attention backward": [
        "triton_tem_fused_flex_attention_backward_1",
        "void flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128, 64, 128, 8>>"
        "(flash::Flash_bwd_params)",
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_2_64x128x128_4x1x1_kernel0_0",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    ],
    "cross-entropy and soft cap": [
        "triton_red_fused__log_softmax__to_copy_tanh_3",
        "triton_poi_fused__log_softmax_backward_data_nll_loss_backward_tanh_backward_5",
        "triton_poi_fused__to_copy_div_mul_tanh_2",
        "aten::nll_loss_forward",
        "aten::tanh",
        "aten::logsumexp",  # fused_loss, eager
        "triton_red_fused__to_copy_div_logsumexp_mul_tanh_4",  # fused_loss, compiled
        "ChunkedSoftcappedCrossEntropy",
        "ChunkedSoftcappedCrossEntropyBackward",
    ],
    "Muon (Newton-Schulz)": [
        "triton_red_fused__to_copy_add_div_linalg_vector_norm_0",
        "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::"
        "lerp_kernel_scalar_weight(at::TensorIteratorBase&, c10::Scalar const&)::{lambda()#1}>",
    ],
    "norms": [
        "triton_per_fused__fused_rms_norm_2",
        "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1",
        "aten::_fused_rms_norm",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>(int, float, "
        "float const*, float const*, float const*, float*, float*, float*)",
    ],
    "elementwise": [
        "triton_poi_fused_relu_pow_4",
        "triton_poi_fused__to_copy_cat_cos_mul_sin_3",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
        "std::array<char*, 3ul>>(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)",
        "aten::mul",
    ],
    "communication": [
        "ncclDevKernel_AllGather_RING_LL",
        "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
        "nccl:all_reduce",
        "gloo:all_reduce",
        "c10d::allreduce_",
    ],
    "memory copies": [
        "Memcpy DtoH (Device -> Pinned)",
        "Memcpy HtoD (Pinned -> Device)",
        "Memset (Device)",
    ],
    "other": [
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4>>",
        "void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, 2, -2, "
        "true>",
        "aten::embedding_dense_backward",
    ],
}


@pytest.mark.parametrize("expected,name", [(cls, name) for cls, names in KERNELS.items() for name in names])
def test_kernel_class(expected, name):
    assert profile_step.kernel_class(name) == expected


def test_every_class_is_tested_and_other_is_last():
    assert set(KERNELS) == set(profile_step.CLASS_NAMES)
    assert profile_step.CLASS_NAMES[-1] == "other"


def test_union_length_merges_overlapping_kernels():
    assert profile_step.union_length([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25


def script_environment(out: Path, bin_dir: Path = None, **variables) -> dict:
    """No PYTHON or TORCHRUN: the script finds them, as on the GPU machine; bin_dir (default: this
    interpreter's) comes first on PATH; its scratch folder goes under out's parent."""
    environment = {name: value for name, value in os.environ.items() if name not in ("PYTHON", "TORCHRUN")}
    bin_dir = bin_dir or Path(sys.executable).parent
    return dict(environment, OUT=str(out), TMPDIR=str(out.parent),
                PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **variables)


def image_like_bin(tmp_path: Path, python3_has_torch: bool = True) -> Path:
    """A bin folder as on an image with a system `python` that lacks torch: only python3 (this interpreter)
    may have it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    without_torch = "#!/bin/sh\nexit 1\n"
    python3 = f'#!/bin/sh\nexec {sys.executable} "$@"\n' if python3_has_torch else without_torch
    for name, script in (("python", without_torch), ("python3", python3)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def unpacked(out: Path) -> Path:
    """The folder gpu_check/ of out's archive, unpacked beside out."""
    target = out.parent / "unpacked"
    with tarfile.open(out / "gpu_check.tar.gz") as archive:
        archive.extractall(target, filter="data")
    return target / "gpu_check"


def phase_rows(out: Path) -> dict:
    return {int(row[0]): row for row in (line.split("\t") for line in (out / "phases.tsv").read_text().splitlines())}


def test_no_python_that_imports_torch_is_one_error_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "1", str(REPO / "data/sample")], capture_output=True,
                          text=True, env=script_environment(out, image_like_bin(tmp_path, python3_has_torch=False)),
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr == "error: neither python3 nor python on PATH imports torch; set PYTHON=/path/to/python\n"


def test_help_and_bad_arguments(tmp_path):
    env = script_environment(tmp_path / "out")
    shown = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "PHASES" in shown.stdout and "--dry-run" in shown.stdout
    # the plan of the two device calls, with the timeout_s of each
    assert "timeout_s 390:  bash tools/gpu_check.sh --budget 360 1,2 devdata" in shown.stdout
    assert "timeout_s B + 30:" in shown.stdout and "--budget B 3,4 devdata" in shown.stdout
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "summary.md").write_text("an earlier check's summary")
    for argv, variables in ((["5", "data/sample"], {}), (["1,2", str(tmp_path / "missing")], {}), (["1"], {}),
                            (["--budget", "5m", "1", str(REPO / "data/sample")], {}),
                            (["1", str(REPO / "data/sample")], dict(OUT=str(tmp_path / "full")))):
        refused = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=dict(env, **variables),
                                 cwd=tmp_path)
        assert refused.returncode == 2 and "error:" in refused.stderr, argv
    assert (tmp_path / "full" / "summary.md").read_text() == "an earlier check's summary"


def repository_state() -> tuple:
    """git's view of the working tree, and anything gpu_check.sh could leave in the repository."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                            capture_output=True, text=True).stdout
    return status, sorted(map(str, REPO.glob("logs/gpucheck-*"))), (REPO / "gpu_check_out").exists()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of every phase, shared by the tests that read it (it takes about a minute)."""
    tmp_path = tmp_path_factory.mktemp("dry_run")
    out, workdir, bin_dir = tmp_path / "out", tmp_path / "work", image_like_bin(tmp_path)
    before = repository_state()
    done = subprocess.run([str(SCRIPT), "--dry-run", "--workdir", str(workdir), "1,2,3,4", str(REPO / "data/sample")],
                          capture_output=True, text=True, env=script_environment(out, bin_dir), cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield dict(out=out, bin_dir=bin_dir, tmp_path=tmp_path, workdir=workdir, before=before, after=repository_state())
    shutil.rmtree(tmp_path)


def test_dry_run_of_every_phase(dry_run):
    """Also: the `python` without torch that comes first on PATH is passed over for python3, and torchrun
    is python3's module."""
    out, bin_dir = dry_run["out"], dry_run["bin_dir"]
    packed = unpacked(out)
    config = dict(line.split("=", 1) for line in (packed / "config.txt").read_text().splitlines())
    assert config["python"] == str(bin_dir / "python3")
    assert config["torchrun"] == f"{bin_dir / 'python3'} -m torch.distributed.run"
    prefix = config["prefix"]
    expected = ["summary.md", "phases.tsv", "config.txt", "versions.txt", "nvidia-smi.txt", "resume_check.txt",
                "checkpoint.txt", "profile.txt"] + [f"phase{phase}.log" for phase in range(1, 5)]
    for run in ("smoke", "resume", "speed", "profile", "quality-s1", "quality-s2"):
        expected += [f"logs/{prefix}-{run}.txt", f"logs/{prefix}-{run}.console.txt"]
    assert [name for name in expected if not (packed / name).is_file()] == []
    summary = (out / "summary.md").read_text()
    assert (packed / "summary.md").read_text() == summary
    for phase, name in ((1, "smoke, checkpoint and resume"), (2, "speed protocol"), (3, "quality protocol x2"),
                        (4, "profile")):
        assert f"| {phase} {name} | ok |" in summary
    assert "resume check (resume_check.txt): losses: equal (4 values)" in summary
    assert "losses: equal" in (packed / "resume_check.txt").read_text()
    assert "launch to first step line" in summary and "peak memory" in summary and "checkpoint: step 2" in summary
    profile = (packed / "profile.txt").read_text()
    assert "device time = cpu" in profile
    for cls in profile_step.CLASS_NAMES + ["total device time", "idle gap"]:
        assert any(line.startswith(cls + " ") for line in profile.splitlines()), cls
    assert list(dry_run["tmp_path"].rglob("*.pt")) == []  # checkpoints deleted
    assert dry_run["after"] == dry_run["before"]


def test_out_of_the_dry_run_comes_back_whole_from_the_device(dry_run):
    """The device tool returns at most 8 files from $OUT, each at most 16 MiB (64 MiB together), none more
    than 2 folders down, each named in letters, digits, '.', '_' and '-'."""
    out = dry_run["out"]
    files = [path for path in out.rglob("*") if not path.is_dir()]
    assert sorted(path.name for path in files) == ["gpu_check.tar.gz", "phases.tsv", "summary.md"]
    assert all(path.is_file() and not path.is_symlink() for path in files)
    assert len(files) <= 8 and sum(path.stat().st_size for path in files) <= 64 * 2**20
    for path in files:
        relative = path.relative_to(out)
        assert len(relative.parts) <= 3 and path.stat().st_size <= 16 * 2**20, relative
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in relative.parts), relative


# A stand-in for train_gpt.py (torchrun is replaced by stand_in_torchrun): no torch, so it starts in a blink.
# It writes its lines as train_gpt.Run.log does (console first, then the log); STAND_IN=stall logs a step,
# then waits for SIGINT or SIGTERM and stops as the trainer does; STAND_IN=fail exits 1 before any step.
STAND_IN_TRAINER = """import os, signal, sys, time
run_id = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])["run_id"]
with open(os.environ["STAND_IN_CALLS"], "a") as calls:
    calls.write(run_id + "\\n")
os.makedirs("logs", exist_ok=True)
log = open(f"logs/{run_id}.txt", "x")
def say(text):
    print(text, flush=True)
    log.write(text + "\\n")
    log.flush()
say("device: cpu x1")
if os.environ["STAND_IN"] == "fail":
    print("RuntimeError: no kernel image is available for execution on the device", file=sys.stderr)
    sys.exit(1)
received = []
for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, lambda number, frame: received.append(signal.Signals(number).name))
say("step:1/100 train_loss:10.8000 train_time:0ms step_avg:0.00ms")
while not received:
    time.sleep(0.05)
say(f"stopping: received {received[0]} at step 1; no checkpoint")
sys.exit(130)
"""


def stand_in(tmp_path: Path, mode: str) -> dict:
    trainer, torchrun = tmp_path / "stand_in_trainer.py", tmp_path / "stand_in_torchrun"
    trainer.write_text(STAND_IN_TRAINER)
    torchrun.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} "$@"\n')  # drops --standalone --nproc_per_node=1
    torchrun.chmod(0o755)
    return dict(TRAINER=str(trainer), TORCHRUN=str(torchrun), STAND_IN=mode,
                STAND_IN_CALLS=str(tmp_path / "calls.txt"))


def test_deadlines_and_the_budget(tmp_path):
    """A run past its phase's limit gets SIGINT and its stopping line reaches the log (the console's
    timestamper outlives it); later limits are cut to what the budget leaves, less the kill grace and the
    summary's margin; a phase with too little left is skipped, and the script ends within its budget."""
    out, budget = tmp_path / "out", 30
    env = script_environment(out, **stand_in(tmp_path, "stall"), LIMIT_2="3")
    started = time.monotonic()
    done = subprocess.run([str(SCRIPT), "--dry-run", "--budget", str(budget), "--workdir", str(tmp_path / "work"),
                           "2,3,4", str(REPO / "data/sample")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    wall = time.monotonic() - started
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert wall <= budget + 1, wall
    rows, packed = phase_rows(out), unpacked(out)
    prefix = dict(line.split("=", 1) for line in (packed / "config.txt").read_text().splitlines())["prefix"]
    assert rows[2][2:6] == ["timed out", "124", rows[2][4], "3"]
    for run in ("speed", "quality-s1", "quality-s2"):
        assert "stopping: received SIGINT at step 1" in (packed / "logs" / f"{prefix}-{run}.txt").read_text(), run
        assert "stopping: received SIGINT" in (packed / "logs" / f"{prefix}-{run}.console.txt").read_text(), run
    assert rows[3][2] == "timed out" and rows[3][6].startswith("limit cut from 210 s to fit --budget 30")
    summary = (out / "summary.md").read_text()
    assert "| 2 speed protocol | timed out |" in summary and "| 1 smoke, checkpoint and resume | not run |" in summary
    assert "last lines of the phase's console" in summary and (packed / "phase2.log").is_file()
    assert rows[4][2] == "skipped" and rows[4][6] == "only 0 s of --budget 30 left (at least 3 s)"
    assert "status: **skipped**: only 0 s of --budget 30 left" in summary
    assert (tmp_path / "calls.txt").read_text().split() == [f"{prefix}-{run}" for run in ("speed", "quality-s1",
                                                                                       "quality-s2")]


def test_a_signal_to_the_script_stops_the_running_trainer_gracefully_and_no_run_starts_after_it(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = script_environment(out, **stand_in(tmp_path, "stall"))
    script = subprocess.Popen([str(SCRIPT), "--dry-run", "--workdir", str(work), "2,3", str(REPO / "data/sample")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not any("step:1/" in log.read_text() for log in work.glob("logs/*.txt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    script.send_signal(signal.SIGTERM)
    output, _ = script.communicate(timeout=60)
    assert script.returncode == 1, output[-3000:]
    rows = phase_rows(out)
    assert rows[2][2] == "interrupted" and rows[3][2:4] == ["skipped", "-"] and rows[3][6] == "interrupted by SIGTERM"
    log = next(unpacked(out).glob("logs/*-speed.txt")).read_text()
    assert "stopping: received SIGINT at step 1" in log  # the trainer's graceful stop
    assert len((tmp_path / "calls.txt").read_text().split()) == 1


def test_a_run_without_a_step_stops_the_check_and_xz_is_not_needed(tmp_path):
    """The smoke run fails before its first step: the resume and the later phases are skipped, with the
    reason. The shards come as .xz only and PATH has no xz: Python's lzma unpacks them."""
    data = tmp_path / "data"
    data.mkdir()
    for shard in (REPO / "data/sample").glob("*.bin"):
        (data / (shard.name + ".xz")).write_bytes(lzma.compress(shard.read_bytes()))
    tools = tmp_path / "tools"  # every program on PATH but xz and its aliases
    tools.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for program in Path(folder).glob("*") if Path(folder).is_dir() else ():
            if not (tools / program.name).exists() and "xz" not in program.name:
                (tools / program.name).symlink_to(program)
    out = tmp_path / "out"
    env = dict(script_environment(out, image_like_bin(tmp_path), **stand_in(tmp_path, "fail")),
               PATH=f"{tmp_path / 'bin'}{os.pathsep}{tools}")
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--workdir", str(tmp_path / "work"), "1,2,3",
                           str(data)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    for shard in (REPO / "data/sample").glob("*.bin"):
        assert (data / shard.name).read_bytes() == shard.read_bytes()
    rows = phase_rows(out)
    assert rows[1][2] == "failed rc 1"
    assert [row[2] for row in (rows[2], rows[3])] == ["skipped", "skipped"]
    assert "-smoke logged no training step (exit status 1" in rows[2][6]
    assert len((tmp_path / "calls.txt").read_text().split()) == 1  # the smoke run alone
    summary = (out / "summary.md").read_text()
    assert "status: **skipped**: run gpucheck-" in summary and "every later run would spend another compilation" in summary


def test_the_archive_cuts_long_files_and_stays_under_the_device_tools_file_limit(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "logs").mkdir(parents=True)
    out.mkdir()
    long_console = b"".join(b"%08d a console line\n" % i for i in range(300_000))  # 6.3 MB of text
    (work / "logs" / "run.console.txt").write_bytes(long_console)
    (work / "summary.md").write_text("# summary\n")
    os.mkfifo(work / ".console")
    for index in range(5):  # 20 MiB that gzip cannot shrink: cut further, to 1 MiB per file
        (work / f"noise{index}.bin").write_bytes(os.urandom(4 * 2**20))
    summary.pack(work, out / "gpu_check.tar.gz")
    assert sorted(path.name for path in out.iterdir()) == ["gpu_check.tar.gz"]
    assert (out / "gpu_check.tar.gz").stat().st_size <= 15 * 2**20
    with tarfile.open(out / "gpu_check.tar.gz") as archive:
        members = {member.name: archive.extractfile(member).read() for member in archive.getmembers()}
    assert sorted(members) == sorted(["gpu_check/logs/run.console.txt", "gpu_check/summary.md"]
                                     + [f"gpu_check/noise{index}.bin" for index in range(5)])
    assert all(len(data) < 2**20 + 100 for name, data in members.items() if "noise" in name)
    assert members["gpu_check/summary.md"] == b"# summary\n"
    console = members["gpu_check/logs/run.console.txt"]
    half = 2**19
    assert console.startswith(long_console[:half]) and console.endswith(long_console[-half:])
    assert f"[... {len(long_console) - 2 * half} bytes cut by gpu_check_summary.py ...]".encode() in console


LOG = """device: {device} x1
step:0/8 val_loss:10.8252 train_time:0ms step_avg:0.00ms
step:1/8 train_loss:10.8252 train_time:0ms step_avg:0.00ms
step:4/8 train_loss:9.1000 train_time:0ms step_avg:0.00ms
step:4/8 val_loss:9.0500 train_time:0ms step_avg:0.00ms
step:5/8 train_loss:{train5} train_time:0ms step_avg:0.00ms
step:8/8 val_loss:{val8} train_time:0ms step_avg:0.00ms
"""


@pytest.mark.parametrize("device,train5,val8,verdict", [
    ("cpu", "8.7000", "7.9000", "losses: equal (3 values)"),
    ("cpu", "8.7001", "7.9000", "losses: DIFFER on the CPU, max |difference| 0.0001 (a CPU run is exact) -> check"),
    ("NVIDIA H200", "8.7030", "7.8990", "losses: max |difference| 0.0030 over 3 values, within the tolerance 0.01"),
    ("NVIDIA H200", "8.7500", "7.9000", "losses: max |difference| 0.0500 over 3 values, beyond the tolerance 0.01 "
                                        "-> check"),
    ("NVIDIA H200", "nan", "7.9000", "beyond the tolerance 0.01 -> check"),
    ("NVIDIA H200", None, "7.9000", "losses: MISSING (a log or its loss lines after step 4 are missing) -> check"),
])
def test_resume_check_is_exact_on_a_cpu_and_within_a_tolerance_on_a_gpu(device, train5, val8, verdict):
    """The uninterrupted run's steps 5-8 beside a run resumed from its step-4 checkpoint (which also logs
    the val loss at step 4 again, and nothing before)."""
    uninterrupted = LOG.format(device=device, train5="8.7000", val8="7.9000")
    resumed = "\n".join(line for line in LOG.format(device=device, train5=train5, val8=val8).splitlines()
                        if not re.match(r"step:[0-3]/|step:4/8 train", line) and (train5 or "step:5/" not in line))
    lines = summary.resume_check(uninterrupted, resumed, 4)
    assert verdict in lines[-1] and lines[-1].startswith("losses: ")
    assert lines[0] == "val 4: uninterrupted 9.05 resumed 9.05"


@pytest.mark.parametrize("card,step_avg,flag", [("NVIDIA H200", "1090.00", "ok"), ("NVIDIA H200", "1150.00", "check"),
                                                ("NVIDIA H100 80GB HBM3", "1200.00", "ok")])
def test_speed_against_the_card_reference(card, step_avg, flag):
    log = (f"device: {card} x1\npeak memory allocated: 32000 MiB reserved: 33000 MiB\n"
           f"done: val_loss 2.7000 at step 100, train_time 97.7 s, step_avg {step_avg} ms; log: logs/x.txt\n")
    lines = summary.speed_checks(log)
    assert lines[0].startswith(f"- step_avg {step_avg} ms") and lines[0].endswith(f"-> {flag}")
    assert "31.8 GB" in lines[1]

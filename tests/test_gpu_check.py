"""tools/gpu_check.sh in its dry run (every phase on the CPU with a tiny model, every file it writes), the
kernel classification of tools/profile_step.py, and tools/gpu_check_summary.py's speed flag."""
import importlib.util
import os
import shutil
import subprocess
import sys
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


def script_environment(out: Path, bin_dir: Path = None) -> dict:
    """No PYTHON or TORCHRUN: the script finds them, as on the GPU machine; bin_dir (default: this
    interpreter's) comes first on PATH."""
    environment = {name: value for name, value in os.environ.items() if name not in ("PYTHON", "TORCHRUN")}
    bin_dir = bin_dir or Path(sys.executable).parent
    return dict(environment, OUT=str(out), PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


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
    for argv in (["5", "data/sample"], ["1,2", str(tmp_path / "missing")], ["1"]):
        refused = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert refused.returncode == 2 and "error:" in refused.stderr


def test_a_phase_past_its_limit_is_recorded_and_the_script_goes_on(tmp_path):
    out = tmp_path / "out"
    env = dict(script_environment(out), LIMIT_2="6")
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--workdir", str(tmp_path / "work"), "2",
                           str(REPO / "data/sample")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "| 2 speed protocol | timed out |" in summary and "| 1 smoke, checkpoint and resume | not run |" in summary
    assert "last lines of the phase's console" in summary and (out / "phase2.log").is_file()


def repository_state() -> tuple:
    """git's view of the working tree, and anything gpu_check.sh could leave in the repository."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                            capture_output=True, text=True).stdout
    return status, sorted(map(str, REPO.glob("logs/gpucheck-*"))), (REPO / "gpu_check_out").exists()


def test_dry_run_of_every_phase(tmp_path):
    """Also: the `python` without torch that comes first on PATH is passed over for python3, and torchrun
    is python3's module."""
    out, workdir, bin_dir = tmp_path / "out", tmp_path / "work", image_like_bin(tmp_path)
    before = repository_state()
    done = subprocess.run([str(SCRIPT), "--dry-run", "--workdir", str(workdir), "1,2,3,4", str(REPO / "data/sample")],
                          capture_output=True, text=True, env=script_environment(out, bin_dir), cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = dict(line.split("=", 1) for line in (out / "config.txt").read_text().splitlines())
    assert config["python"] == str(bin_dir / "python3")
    assert config["torchrun"] == f"{bin_dir / 'python3'} -m torch.distributed.run"
    prefix = config["prefix"]
    expected = ["summary.md", "phases.tsv", "config.txt", "versions.txt", "nvidia-smi.txt", "resume_check.txt",
                "checkpoint.txt", "profile.txt"] + [f"phase{phase}.log" for phase in range(1, 5)]
    for run in ("smoke", "resume", "speed", "profile", "quality-s1", "quality-s2"):
        expected += [f"logs/{prefix}-{run}.txt", f"logs/{prefix}-{run}.console.txt"]
    assert [name for name in expected if not (out / name).is_file()] == []
    summary = (out / "summary.md").read_text()
    for phase, name in ((1, "smoke, checkpoint and resume"), (2, "speed protocol"), (3, "profile"),
                        (4, "quality protocol x2")):
        assert f"| {phase} {name} | ok |" in summary
    assert "resume check (resume_check.txt): losses: equal" in summary
    assert "losses: equal" in (out / "resume_check.txt").read_text()
    assert "launch to first step line" in summary and "peak memory" in summary and "checkpoint: step 2" in summary
    profile = (out / "profile.txt").read_text()
    assert "device time = cpu" in profile
    for cls in profile_step.CLASS_NAMES + ["total device time", "idle gap"]:
        assert any(line.startswith(cls + " ") for line in profile.splitlines()), cls
    assert list(tmp_path.rglob("*.pt")) == []  # checkpoints deleted
    assert repository_state() == before
    shutil.rmtree(workdir)


@pytest.mark.parametrize("card,step_avg,flag", [("NVIDIA H200", "1090.00", "ok"), ("NVIDIA H200", "1150.00", "check"),
                                                ("NVIDIA H100 80GB HBM3", "1200.00", "ok")])
def test_speed_against_the_card_reference(card, step_avg, flag):
    log = (f"device: {card} x1\npeak memory allocated: 32000 MiB reserved: 33000 MiB\n"
           f"done: val_loss 2.7000 at step 100, train_time 97.7 s, step_avg {step_avg} ms; log: logs/x.txt\n")
    lines = summary.speed_checks(log)
    assert lines[0].startswith(f"- step_avg {step_avg} ms") and lines[0].endswith(f"-> {flag}")
    assert "31.8 GB" in lines[1]

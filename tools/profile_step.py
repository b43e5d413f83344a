"""Where a training step's device time goes: a few real steps of train_gpt.py under torch.profiler.

    torchrun --standalone --nproc_per_node=1 tools/profile_step.py --out profile.txt \\
        --num_iterations=100 --val_loss_every=25 --val_tokens=2097152 --at_step=50
    python tools/profile_step.py --profile_steps=1 --model_dim=64 ...     # also on a CPU

Builds the run with the trainer's own setup() and build_training(), runs --warmup_steps steps (they compile),
times --profile_steps steps without the profiler, then profiles --profile_steps more, each step exactly as
train_gpt.train() runs it (train_step, which also reports the step before's loss). No validation.
Every other --name=value is a trainer override (python train_gpt.py --help); a --run_id gives the log a name.

Prints, and writes to --out: per kernel class (first matching regex of KERNEL_CLASSES, on the kernel
name) the device time per step, its share of all kernel time, and the number of kernels; then the top 15
kernels. On a GPU the device time is CUDA kernel time. Kernels launched inside Muon's step are counted as
"Muon (Newton-Schulz)" whatever their names (the script wraps tr.muon.step in a record_function scope).
The idle gap is the wall time of the profiled steps (host clock, device synchronized before and after)
minus the time the GPU ran at least one kernel (the union of kernel intervals over all streams).
On a CPU the device time is the self CPU time of each operator, and the idle gap is the wall time minus
their sum (Python and the profiler itself).
"""
import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # train_gpt.py lives in the repository root

import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import train_gpt  # noqa: E402

MUON_SCOPE = "muon"  # record_function name put around tr.muon.step
MUON_CLASS = "Muon (Newton-Schulz)"

# (class, regex on the kernel or operator name, case-insensitive): the first match wins; keep "other" last.
KERNEL_CLASSES = (
    ("communication", r"nccl|gloo|all_?reduce|all_?gather|reduce_?scatter|broadcast|c10d"),
    ("memory copies", r"memcpy|memset"),
    ("attention backward", r"flex_attention_backward|flash_bwd|fmha\w*bwd|bprop|_bwd|attention\w*backward"),
    ("attention forward", r"flex_attention|flash_fwd|fmha|fprop|_fwd|flash_attention|efficient_attention"
                          r"|scaled_dot_product|sdpa"),
    ("matrix products", r"gemm|matmul|cutlass|cublas|xmma|nvjet|^(ampere|hopper|volta|turing|sm\d+)_"
                        r"|^aten::(mm|addmm|bmm|baddbmm|mv|addmv|_scaled_mm)$|triton_tem_fused_\w*mm|scaled_mm"
                        r"|^FP8Linear"),  # fp8_head's products (FP8Linear: its autograd function on a CPU)
    ("cross-entropy and soft cap", r"log_softmax|nll_loss|cross_entropy|tanh|logsumexp|softcapped"),
    ("Muon (Newton-Schulz)", r"linalg_vector_norm|lerp|newton|muon"),
    ("norms", r"rms_norm|rsqrt|layer_norm"),
    ("elementwise", r"elementwise|triton_(poi|per|red)_|^aten::(add|mul|sub|div|relu|pow|square|copy|to|_to_copy|"
                    r"fill|zero|cat|where|eq|cumsum|neg|clone|float|bfloat16|type_as)_?$"),
    ("other", r""),
)
_COMPILED = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in KERNEL_CLASSES]
CLASS_NAMES = [name for name, _ in KERNEL_CLASSES]


def kernel_class(name: str) -> str:
    """The class of a kernel (or, on a CPU, an operator) by its name: the first regex that matches."""
    return next(cls for cls, pattern in _COMPILED if pattern.search(name))


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="profile_step.py", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument("--warmup_steps", type=int, default=3, help="steps before profiling (they compile); "
                        "default %(default)s")
    parser.add_argument("--profile_steps", type=int, default=3, help="steps timed without, then with, the "
                        "profiler; default %(default)s")
    parser.add_argument("--at_step", type=int, default=0, help="the schedules (window, learning rates, momentum) "
                        "as at this step; the data still starts at the first batch; default %(default)s")
    parser.add_argument("--trace", type=Path, help="also export the Chrome trace to this file (large)")
    options, overrides = parser.parse_known_args(argv)
    if options.warmup_steps < 0 or options.profile_steps < 1 or options.at_step < 0:
        parser.error("--warmup_steps >= 0, --profile_steps >= 1 and --at_step >= 0")
    return options, overrides


def scoped(name: str, function):
    def call(*args, **kwargs):
        with record_function(name):
            return function(*args, **kwargs)
    return call


def run_steps(run, tr, count: int):
    """count steps exactly as train_gpt.train() runs them (no validation, no checkpoints)."""
    for _ in range(count):
        tr.window_blocks.fill_(train_gpt.window_blocks_at(tr.step, run.args))
        train_gpt.train_step(run, tr, stop_requested=False)


def timed_steps(run, tr, count: int) -> float:
    """Wall seconds of count steps, the device synchronized before and after."""
    train_gpt.synchronize(run)
    started = time.perf_counter()
    run_steps(run, tr, count)
    train_gpt.synchronize(run)
    return time.perf_counter() - started


def inside_scope(event, scope: str) -> bool:
    while event is not None:
        if event.name == scope:
            return True
        event = event.cpu_parent
    return False


def union_length(intervals) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


DEVICE_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")


def device_kernels(events) -> list:
    """Kernels, memory copies and memsets on the GPU: device events that are not record_function ranges
    projected onto the GPU timeline (as PyTorch's own table counts them), by Kineto's activity type where the
    events carry it."""
    device = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    by_activity = [e for e in device if getattr(e, "activity_type", None) in DEVICE_ACTIVITIES]
    return by_activity or device


def collect(events, on_gpu: bool):
    """Rows (name, class, microseconds, count) per kernel name (GPU) or operator name (CPU), and the busy
    microseconds. A name launched both inside Muon's scope and outside gets a row for each part."""
    total_us, total_count = defaultdict(float), defaultdict(int)
    muon_us, muon_count = defaultdict(float), defaultdict(int)
    if on_gpu:
        kernels = device_kernels(events)
        for e in kernels:
            total_us[e.name] += e.time_range.end - e.time_range.start
            total_count[e.name] += 1
        # Which kernels Muon launched is known on the CPU side: every operator lists its kernels.
        for event in events:
            if event.device_type == DeviceType.CPU and event.kernels and inside_scope(event, MUON_SCOPE):
                for kernel in event.kernels:
                    muon_us[kernel.name] += kernel.duration
                    muon_count[kernel.name] += 1
        busy = union_length((e.time_range.start, e.time_range.end) for e in kernels)
    else:
        for e in events:
            if e.device_type != DeviceType.CPU or e.is_async or e.self_cpu_time_total <= 0:
                continue
            total_us[e.name] += e.self_cpu_time_total  # total_* holds every operator, as on the GPU
            total_count[e.name] += 1
            if inside_scope(e, MUON_SCOPE):
                muon_us[e.name] += e.self_cpu_time_total
                muon_count[e.name] += 1
        busy = sum(total_us.values())
    rows = []
    for name in total_us:
        in_muon = min(muon_count.get(name, 0), total_count[name])
        if in_muon:
            rows.append((name, MUON_CLASS, min(muon_us[name], total_us[name]), in_muon))
        if total_count[name] > in_muon:
            rows.append((name, kernel_class(name), max(total_us[name] - muon_us.get(name, 0.0), 0.0),
                         total_count[name] - in_muon))
    return rows, busy


def short(name: str, width: int = 110) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def report(items, busy_us: float, wall_s: float, steps: int, header: list[str]) -> str:
    per_step_ms = 1e-3 / steps
    total_us = sum(us for _, _, us, _ in items) or 1e-9
    by_class, counts = defaultdict(float), defaultdict(int)
    for _, cls, us, count in items:
        by_class[cls] += us
        counts[cls] += count
    wall_ms = 1000 * wall_s / steps
    idle_ms = wall_ms - busy_us * per_step_ms
    lines = header + ["", f"{'class':<28} {'ms/step':>10} {'share %':>8} {'kernels':>8}"]
    for cls in CLASS_NAMES:
        lines.append(f"{cls:<28} {by_class[cls] * per_step_ms:>10.2f} {100 * by_class[cls] / total_us:>8.1f} "
                     f"{counts[cls] / steps:>8.0f}")
    lines.append(f"{'total device time':<28} {total_us * per_step_ms:>10.2f} {100.0:>8.1f} "
                 f"{sum(counts.values()) / steps:>8.0f}")
    lines.append(f"{'idle gap':<28} {idle_ms:>10.2f} {100 * idle_ms / wall_ms:>8.1f} {'of wall':>8}")
    lines.append(f"wall time per profiled step {wall_ms:.2f} ms; busy (union of kernel intervals on a GPU, sum of "
                 f"self times on a CPU) {busy_us * per_step_ms:.2f} ms; idle gap = wall - busy")
    by_name, name_counts, name_class = defaultdict(float), defaultdict(int), {}
    for name, cls, us, count in sorted(items, key=lambda row: row[2]):  # a name's larger part names its class
        by_name[name] += us
        name_counts[name] += count
        name_class[name] = cls
    lines += ["", "top 15 kernels by device time", f"{'ms/step':>9} {'share %':>8} {'count':>6}  {'class':<27} name"]
    for name, us in sorted(by_name.items(), key=lambda item: -item[1])[:15]:
        lines.append(f"{us * per_step_ms:>9.2f} {100 * us / total_us:>8.1f} {name_counts[name] / steps:>6.0f}  "
                     f"{name_class[name]:<27} {short(name)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    options, overrides = parse_arguments(argv)
    args = train_gpt.parse_hyperparameters(overrides)
    last_step = options.at_step + options.warmup_steps + 2 * options.profile_steps
    if last_step > args.num_iterations:
        raise SystemExit(f"error: --at_step + --warmup_steps + 2 x --profile_steps = {last_step} steps exceed "
                         f"num_iterations={args.num_iterations}")
    run = train_gpt.setup(args)
    tr = train_gpt.build_training(run)
    tr.step = tr.first_step = options.at_step  # schedules only; training_batches starts at the first batch
    tr.muon.step = scoped(MUON_SCOPE, tr.muon.step)  # the trainer calls tr.muon.step(): the instance's wins
    tr.adam.step = scoped("adam", tr.adam.step)
    started = time.perf_counter()
    run_steps(run, tr, options.warmup_steps)
    warmup_s = time.perf_counter() - started
    plain_s = timed_steps(run, tr, options.profile_steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.on_gpu else [])
    with profile(activities=activities) as prof:
        with record_function("profiled_steps"):
            wall_s = timed_steps(run, tr, options.profile_steps)
    train_gpt.report_pending_loss(run, tr)
    items, busy_us = collect(prof.events(), run.on_gpu)
    device = torch.cuda.get_device_name(run.device) if run.on_gpu else "cpu"
    kind = "CUDA kernel time" if run.on_gpu else "cpu: self CPU time of operators"
    header = [f"profile_step: {device}, PyTorch {torch.__version__}; device time = {kind}",
              f"steps {options.at_step + 1}-{tr.step} of {args.num_iterations} (schedules as there): "
              f"{options.warmup_steps} warm-up ({warmup_s:.1f} s, compilation included), {options.profile_steps} "
              f"timed without the profiler ({1000 * plain_s / options.profile_steps:.2f} ms/step), "
              f"{options.profile_steps} profiled ({1000 * wall_s / options.profile_steps:.2f} ms/step)",
              f"batch_size={args.batch_size} sequence_length={args.sequence_length} model_dim={args.model_dim} "
              f"num_layers={args.num_layers}; overrides: {' '.join(overrides) or '-'}",
              f"the Muon row holds every kernel launched inside tr.muon.step (scope {MUON_SCOPE!r})"]
    text = report(items, busy_us, wall_s, options.profile_steps, header)
    if run.rank == 0:
        print(text, end="", flush=True)
        if options.out:
            options.out.write_text(text)
        if options.trace:
            prof.export_chrome_trace(str(options.trace))
        for line in text.splitlines():
            run.log("profile: " + line)
    train_gpt.teardown(run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

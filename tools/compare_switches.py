"""train_gpt.py's speed switches side by side, every variant in one process (one device call).

    python tools/compare_switches.py --out switches --budget 390 \\
        --train_files='devdata/fineweb_train_*.bin' --val_files='devdata/fineweb_val_*.bin'
    python tools/compare_switches.py --protocol quality --out quality --budget 300 --train_files=... --val_files=...
    python tools/compare_switches.py --dry-run --out /tmp/switches --train_files=... --val_files=...  # a CPU

--protocol speed (the default) builds each variant of VARIANTS in turn, in that order (the most telling
first), with the trainer's own setup() and build_training() and the speed protocol's shapes and schedules
(DESIGN.md 8: 100 steps of 524,288 tokens): --warmup_steps steps (they compile), then --timed_steps steps
timed with the device synchronized before and after, the schedules as at --at_step (step 50 of 100: the
protocol's mean window; the data starts at the first batch). Step time is steady to 0.2% between runs, so a
few timed steps stand for the protocol's 90. OUT/switches.md gets, per variant: ms per step and its ratio to
this call's baseline, peak memory allocated (reset before each variant) and its ratio, the training loss
after the last step (same seed and tokens: the exact-math switches must match the baseline's), and the setup
and compilation time; then the figures issue 26 asks for, and the profile of --profile's variant (all switches
on by default; tools/profile_step.py's kernel classes; also OUT/profile.txt). --variants runs only some.

--protocol quality runs the quality protocol (300 steps of 65,536 tokens, validation at 100, 200, 300) with
seeds 1 and 2 for the baseline and fp8_head, interleaved so that a cut budget leaves whole seeds; OUT/quality.md
gets the validation loss at step 300 of each run and the mean per variant.

Between variants torch._dynamo is reset and the device's cache emptied. --budget: after the first, a variant (or
quality run) starts only if it is expected to end within the budget, expected to take as long as the longest
so far; the rest are listed as skipped. A variant that check_hyperparameters refuses (say fp8_head on a card without FP8)
is listed with the reason. Every other --name=value is a trainer override (python train_gpt.py --help) and
applies to every variant; the switches themselves are set by the variant. --dry-run appends tiny overrides and
runs 1 + 1 steps per variant, for the CPU (tests). The device plan (two calls in one session's 15 minutes):
DESIGN.md 8.
"""
import argparse
import dataclasses
import gc
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # train_gpt.py lives in the repository root
sys.path.insert(0, str(Path(__file__).resolve().parent))  # profile_step.py beside this file

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from tqdm import tqdm  # noqa: E402

import profile_step  # noqa: E402
import train_gpt  # noqa: E402

SWITCHES = ("fused_loss", "merged_qkv", "batched_muon", "fp8_head")
EXACT_MATH = ("fused_loss", "merged_qkv", "batched_muon")  # fp8_head changes the numerics
VARIANTS = (("baseline", ()), ("all switches", SWITCHES), ("exact-math switches", EXACT_MATH),
            *((name, (name,)) for name in SWITCHES))
# Issue 26's figures, each against this call's baseline: (variant, measure, at most this ratio).
TARGETS = (("all switches", "ms/step", 0.77), ("exact-math switches", "ms/step", 0.87),
           ("all switches", "peak memory", 0.7))
QUALITY_TARGET = 2.655  # the fp8_head mean of the two seeds, at most (the reference runs' upper end)
QUALITY_VARIANTS = (("baseline", ()), ("fp8_head", ("fp8_head",)))
QUALITY_SEEDS = (1, 2)

PROTOCOLS = {
    "speed": ["--num_iterations=100", "--val_loss_every=25", "--val_tokens=2097152"],
    "quality": ["--num_iterations=300", "--batch_size=65536", "--val_loss_every=100", "--val_tokens=2097152"],
}
DRY_RUN = {  # appended last, so they win; CPU-sized
    "common": ["--sequence_length=256", "--batch_size=256", "--val_tokens=256", "--model_dim=32", "--num_heads=2",
               "--num_kv_heads=2", "--mlp_dim=64", "--timing_warmup_steps=1"],
    "speed": ["--num_iterations=4"],
    "quality": ["--num_iterations=2", "--val_loss_every=0"],
}


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="compare_switches.py", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for switches.md / quality.md")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="speed", help="default %(default)s")
    parser.add_argument("--budget", type=float, default=0.0, help="seconds the whole call may take; 0: no limit")
    parser.add_argument("--warmup_steps", type=int, default=3, help="speed: steps before the clock (they "
                        "compile); default %(default)s")
    parser.add_argument("--timed_steps", type=int, default=10, help="speed: timed steps; default %(default)s")
    parser.add_argument("--at_step", type=int, default=50, help="speed: the schedules as at this step; default "
                        "%(default)s")
    parser.add_argument("--profile_steps", type=int, default=2, help="speed: profiled steps of --profile's "
                        "variant; 0: no profile; default %(default)s")
    parser.add_argument("--variants", help="speed: a comma list of the variants to run (in VARIANTS' order "
                        "whatever the list's); default all: " + ", ".join(name for name, _ in VARIANTS))
    parser.add_argument("--profile", default="all switches", help="speed: the variant to profile; default %(default)s")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true", help="tiny overrides, 1 + 1 steps")
    options, overrides = parser.parse_known_args(argv)
    if options.dry_run:
        options.warmup_steps, options.timed_steps, options.at_step = 1, 1, 0
        options.profile_steps = min(options.profile_steps, 1)
        overrides = overrides + DRY_RUN["common"] + DRY_RUN[options.protocol]
    if options.warmup_steps < 0 or options.timed_steps < 1 or options.at_step < 0 or options.profile_steps < 0:
        parser.error("--warmup_steps, --at_step and --profile_steps >= 0, --timed_steps >= 1")
    if options.budget < 0:
        parser.error("--budget >= 0")
    names = [name for name, _ in VARIANTS]
    chosen = names if options.variants is None else [name.strip() for name in options.variants.split(",")]
    for name in chosen + [options.profile]:
        if name not in names:
            parser.error(f"no variant {name!r}; the variants are: {', '.join(names)}")
    options.variants = [(name, switches) for name, switches in VARIANTS if name in chosen]
    return options, PROTOCOLS[options.protocol] + overrides


def variant_args(args: train_gpt.Hyperparameters, switches, **values) -> train_gpt.Hyperparameters:
    return dataclasses.replace(args, **{name: name in switches for name in SWITCHES}, **values)


def release(run: train_gpt.Run):
    """Frees what the last variant compiled and allocated, and restarts the peak-memory count."""
    torch._dynamo.reset()
    gc.collect()
    if run.on_gpu:
        torch.cuda.synchronize(run.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(run.device)


def peak_memory_mib(run: train_gpt.Run) -> float | None:
    return torch.cuda.max_memory_allocated(run.device) / 2**20 if run.on_gpu else None


class Budget:
    """Whether the next piece of work is expected to end within the budget: as long as the longest so far.
    The first always starts (nothing is known yet)."""

    def __init__(self, seconds: float):
        self.seconds, self.started, self.longest = seconds, time.perf_counter(), None

    def allows_another(self) -> bool:
        return (not self.seconds or self.longest is None
                or time.perf_counter() - self.started + self.longest <= self.seconds)

    def took(self, seconds: float):
        self.longest = max(self.longest or 0.0, seconds)


def speed_variant(run: train_gpt.Run, args: train_gpt.Hyperparameters, options, profiled: bool) -> dict:
    """One variant, warm-compiled and timed; with profiled, also a few steps under torch.profiler."""
    started = time.perf_counter()
    variant_run = dataclasses.replace(run, args=args)
    tr = train_gpt.build_training(variant_run)
    tr.step = tr.first_step = options.at_step  # schedules only; training_batches starts at the first batch
    if profiled:  # the scopes profile_step.collect counts Muon's kernels by
        tr.muon.step = profile_step.scoped(profile_step.MUON_SCOPE, tr.muon.step)
        tr.adam.step = profile_step.scoped("adam", tr.adam.step)
    profile_step.run_steps(variant_run, tr, options.warmup_steps)
    train_gpt.synchronize(run)
    setup_s = time.perf_counter() - started
    seconds = profile_step.timed_steps(variant_run, tr, options.timed_steps)
    pending = tr.pending  # the last timed step's loss: the same step for every variant
    train_gpt.report_pending_loss(variant_run, tr)
    result = dict(ms=1000 * seconds / options.timed_steps, memory=peak_memory_mib(run), setup_s=setup_s,
                  loss=pending.values[0].item())
    if profiled and options.profile_steps:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.on_gpu else [])
        with profile(activities=activities) as prof:
            with record_function("profiled_steps"):
                wall_s = profile_step.timed_steps(variant_run, tr, options.profile_steps)
        items, busy_us = profile_step.collect(prof.events(), run.on_gpu)
        header = [f"profile of {options.profile!r}: steps {tr.step - options.profile_steps + 1}-{tr.step}, "
                  f"{options.profile_steps} profiled ({1000 * wall_s / options.profile_steps:.2f} ms/step); "
                  f"the Muon row holds every kernel launched inside tr.muon.step"]
        result["profile"] = profile_step.report(items, busy_us, wall_s, options.profile_steps, header)
        train_gpt.report_pending_loss(variant_run, tr)
    return result


def ratio(value, baseline) -> str:
    return "-" if value is None or not baseline else f"{value / baseline:.3f}x"


def speed_report(run, options, results: dict, notes: list[str]) -> str:
    args = run.args
    device = torch.cuda.get_device_name(run.device) if run.on_gpu else "cpu"
    base = results.get("baseline", {})
    lines = [f"# Speed switches: {device} x{run.world_size}, PyTorch {torch.__version__}, "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"speed protocol shapes: batch_size={args.batch_size}, sequence_length={args.sequence_length}, "
             f"model_dim={args.model_dim}, num_layers={args.num_layers}; schedules as at steps "
             f"{options.at_step + options.warmup_steps + 1}-{options.at_step + options.warmup_steps + options.timed_steps}"
             f" of {args.num_iterations}; {options.warmup_steps} warm-up step(s) (compilation), "
             f"{options.timed_steps} timed (device synchronized before and after)", "",
             "| variant | switches on | ms/step | vs baseline | peak memory MiB | vs baseline | train loss at the "
             "last step | setup + warm-up s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, switches in options.variants:
        if name not in results:
            continue
        r = results[name]
        memory = "-" if r["memory"] is None else f"{r['memory']:.0f}"
        lines.append(f"| {name} | {', '.join(switches) or '-'} | {r['ms']:.2f} | {ratio(r['ms'], base.get('ms'))} | "
                     f"{memory} | {ratio(r['memory'], base.get('memory'))} | {r['loss']:.4f} | {r['setup_s']:.0f} |")
    lines += ["", "figures to reach (issue 26), against this call's baseline:"]
    for name, measure, limit in TARGETS:
        key = "ms" if measure == "ms/step" else "memory"
        value, reference = results.get(name, {}).get(key), base.get(key)
        if value is None or not reference:
            lines.append(f"- {name}, {measure} <= {limit}x: not measured")
        else:
            verdict = "met" if value / reference <= limit else "NOT met"
            lines.append(f"- {name}, {measure} <= {limit}x: {value / reference:.3f}x, {verdict}")
    lines += [f"- {note}" for note in notes]
    if "profile" in results.get(options.profile, {}):
        lines += ["", f"## Profile of {options.profile!r}", "", "```", results[options.profile]["profile"].rstrip(),
                  "```"]
    return "\n".join(lines) + "\n"


def may_run(run, args, label: str, budget, notes: list[str]) -> bool:
    """Whether a variant (or quality run) runs: the trainer accepts its settings on this card and the budget
    holds it; otherwise a note says why not."""
    try:
        train_gpt.check_hyperparameters(args, run.world_size)
        train_gpt.check_device(args, run.device)
    except train_gpt.InputError as error:
        notes.append(f"{label}: not run: {error}")
        return False
    if not budget.allows_another():
        notes.append(f"{label}: skipped, the budget of {budget.seconds:.0f} s would not hold it")
        return False
    return True


def compare_speed(run, options) -> str:
    results, notes, budget = {}, [], Budget(options.budget)
    for name, switches in tqdm(options.variants, desc="variants", unit="variant", disable=run.rank != 0):
        args = variant_args(run.args, switches, run_id=run.run_id)
        if not may_run(run, args, name, budget, notes):
            continue
        run.log(f"variant: {name} ({', '.join(switches) or 'no switch'})", console=True)
        started = time.perf_counter()
        release(run)
        results[name] = speed_variant(run, args, options, profiled=name == options.profile)
        budget.took(time.perf_counter() - started)
        write(run, options.out / "switches.md", speed_report(run, options, results, notes))
    if "profile" in results.get(options.profile, {}):
        write(run, options.out / "profile.txt", results[options.profile]["profile"])
    text = speed_report(run, options, results, notes)
    write(run, options.out / "switches.md", text)  # with the notes of variants skipped at the end
    return text


def quality_report(run, results: list, notes: list[str]) -> str:
    device = torch.cuda.get_device_name(run.device) if run.on_gpu else "cpu"
    lines = [f"# Quality protocol, fp8_head beside the baseline: {device}, PyTorch {torch.__version__}, "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"{run.args.num_iterations} steps of {run.args.batch_size} tokens, validation on {run.args.val_tokens} "
             "tokens", "", "| variant | seed | val loss at the last step | ms/step |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {seed} | {loss:.4f} | {ms:.2f} |" for name, seed, loss, ms in results]
    lines += ["", "| variant | runs | mean val loss |", "| --- | ---: | ---: |"]
    means = {}
    for name, _ in QUALITY_VARIANTS:
        losses = [loss for variant, _, loss, _ in results if variant == name]
        if losses:
            means[name] = sum(losses) / len(losses)
            lines.append(f"| {name} | {len(losses)} | {means[name]:.4f} |")
    lines.append("")
    if "fp8_head" in means:
        verdict = "met" if means["fp8_head"] <= QUALITY_TARGET else "NOT met"
        seeds = sum(1 for variant, *_ in results if variant == "fp8_head")
        lines.append(f"- fp8_head mean <= {QUALITY_TARGET} (issue 26; over {seeds} of {len(QUALITY_SEEDS)} seeds): "
                     f"{means['fp8_head']:.4f}, {verdict}")
    else:
        lines.append(f"- fp8_head mean <= {QUALITY_TARGET}: not measured")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def compare_quality(run, options) -> str:
    results, notes, budget = [], [], Budget(options.budget)
    runs = [(seed, name, switches) for seed in QUALITY_SEEDS for name, switches in QUALITY_VARIANTS]
    for seed, name, switches in tqdm(runs, desc="quality runs", unit="run", disable=run.rank != 0):
        args = variant_args(run.args, switches, seed=seed, run_id=run.run_id)
        if not may_run(run, args, f"{name} seed {seed}", budget, notes):
            continue
        run.log(f"quality run: {name} seed {seed}", console=True)
        started = time.perf_counter()
        release(run)
        variant_run = dataclasses.replace(run, args=args)
        tr = train_gpt.build_training(variant_run)
        train_gpt.train(variant_run, tr, train_gpt.StopSignals(variant_run))
        if tr.stop_reason is not None:
            notes.append(f"{name} seed {seed}: stopped: {tr.stop_reason}")
        else:
            results.append((name, seed, tr.last_val_loss, tr.training_time_ms / max(tr.timed_steps, 1)))
        del tr
        budget.took(time.perf_counter() - started)
        write(run, options.out / "quality.md", quality_report(run, results, notes))
    text = quality_report(run, results, notes)
    write(run, options.out / "quality.md", text)  # with the notes of runs skipped at the end
    return text


def write(run, path: Path, text: str):
    if run.rank == 0:
        path.write_text(text)


def main(argv: list[str]) -> int:
    options, overrides = parse_arguments(argv)
    args = train_gpt.parse_hyperparameters(overrides)
    if options.protocol == "speed":
        last_step = options.at_step + options.warmup_steps + options.timed_steps + options.profile_steps
        if last_step > args.num_iterations:
            raise SystemExit(f"error: --at_step + --warmup_steps + --timed_steps + --profile_steps = {last_step} "
                             f"steps exceed num_iterations={args.num_iterations}")
    options.out.mkdir(parents=True, exist_ok=True)
    run = train_gpt.setup(args)
    text = (compare_speed if options.protocol == "speed" else compare_quality)(run, options)
    if run.rank == 0:
        print(text, end="", flush=True)
        for line in text.splitlines():
            run.log("compare_switches: " + line)
    train_gpt.teardown(run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

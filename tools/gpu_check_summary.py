"""Writes WORK/summary.md from what tools/gpu_check.sh left in its work folder (it calls this after every
phase), and with OUT, copies summary.md and phases.tsv there and packs the whole folder into
OUT/gpu_check.tar.gz: three files, fewer than the device tool's 8, each far below its 16 MiB.

    python tools/gpu_check_summary.py WORK [OUT]

Per phase: status (ok, failed rc N, timed out, interrupted, skipped with the reason, not run), wall time
and limit, the last lines of a phase that did not succeed, records/compare.py's tables of its logs, the
peak memory, the time from launch to the first step line (the first console line with train_loss, from the
timestamps gpu_check.sh puts on each console line, minus the "# launch" timestamp written just before
torchrun started; that step line is printed once the second step has been dispatched, since a loss is read
one step late), the checkpoint's size and save time, the resume check (resume_check.txt), and the reference
figures of DESIGN.md section 7 beside them, flagged "check" where they are clearly off.
"""
import io
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAMES = {1: "smoke, checkpoint and resume", 2: "speed protocol", 3: "quality protocol x2", 4: "profile"}
RUNS = {1: ["smoke", "resume"], 2: ["speed"], 3: ["quality-s1", "quality-s2"], 4: ["profile"]}
# The largest |loss difference| between a resumed GPU run and the uninterrupted one that passes. Some of the
# GPU's backward kernels are not deterministic (the order of their floating-point additions varies), so the
# two drift apart by rounding after the checkpoint, expected well below 0.01 over the four steps compared
# (the first GPU run will tell). A resume bug (another data position, a lost optimizer state, another
# schedule) moves the loss by far more at these first steps, where each step lowers it by tenths; 0.01 is
# also the standard deviation of the quality protocol between seeds. On a CPU the two runs are bitwise
# equal, and the check is exact.
RESUME_TOLERANCE = 0.01
ARCHIVE = "gpu_check.tar.gz"
ARCHIVE_LIMIT = 15 * 2**20  # the device tool returns files of up to 16 MiB
SPEED_MS = {"H100": 1169.0, "H200": 1086.0}  # reference step_avg of the speed protocol per card
QUALITY_MS = {"H100": "188", "H200": "168-176"}


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def first(pattern: str, text: str, group: int = 1):
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(group) if match else None


def card_of(log: str) -> str | None:
    device = first(r"^device: (.*)$", log) or ""
    return next((card for card in ("H200", "H100") if card in device), None)


def launch_to_first_step(console: str) -> str:
    launch = first(r"^# launch ([\d.]+)", console)
    step = first(r"^([\d.]+) .*\btrain_loss:", console)
    return f"{float(step) - float(launch):.1f} s" if launch and step else "-"


def compare_tables(logs: list[Path]) -> str:
    if not logs:
        return "(no logs)"
    result = subprocess.run([sys.executable, str(REPO / "records" / "compare.py"), *map(str, logs)],
                            capture_output=True, text=True)
    return (result.stdout + result.stderr).rstrip()


def run_figures(work: Path, run_id: str) -> list[str]:
    log, console = read(work / "logs" / f"{run_id}.txt"), read(work / "logs" / f"{run_id}.console.txt")
    lines = [f"- `{run_id}`: launch to first step line {launch_to_first_step(console)}"]
    for pattern in (r"^(peak memory.*)$", r"^(checkpoint: .*)$", r"^(done: .*)$", r"^(stopping: .*)$"):
        found = first(pattern, log)
        if found:
            lines.append(f"  - {found}")
    if not log:
        lines.append("  - no trainer log")
    return lines


def speed_checks(log: str) -> list[str]:
    card, lines = card_of(log), []
    step_avg = first(r"^done: .*step_avg ([\d.]+) ms", log)
    peak = first(r"^peak memory allocated: (\d+) MiB", log)
    if card is None:
        return [f"- reference: no speed reference for this card ({first(r'^device: (.*)$', log) or 'unknown'})"]
    reference = SPEED_MS[card]
    if step_avg:
        flag = "check" if float(step_avg) > 1.05 * reference else "ok"
        lines.append(f"- step_avg {step_avg} ms vs reference {reference:.0f} ms ({card}): "
                     f"{100 * (float(step_avg) / reference - 1):+.1f}% -> {flag}")
    if peak:
        lines.append(f"- peak allocated {int(peak) / 1024:.1f} GiB ({int(peak) * 2**20 / 1e9:.1f} GB) vs reference "
                     "31.8 GB")
    return lines


def losses_after(log: str, step: int) -> dict[str, float]:
    """The train losses after `step` and the val losses at `step` and later, as {"train 5": 7.1, ...}."""
    return {f"{kind} {number}": float(value)
            for number, kind, value in re.findall(r"^step:(\d+)/\d+ (train|val)_loss:(\S+)", log, re.MULTILINE)
            if int(number) > step or (kind == "val" and int(number) == step)}


def resume_check(uninterrupted: str, resumed: str, step: int) -> list[str]:
    """The losses of a run resumed from its step-`step` checkpoint beside the uninterrupted run's; the last
    line is the verdict ("losses: ..."). Exact on a CPU, within RESUME_TOLERANCE on a GPU."""
    expected, found = losses_after(uninterrupted, step), losses_after(resumed, step)
    lines = [f"{key}: uninterrupted {expected.get(key, '-')} resumed {found.get(key, '-')}"
             for key in sorted(expected.keys() | found.keys(), key=lambda key: (int(key.split()[1]), key))]
    on_cpu = (first(r"^device: (.*)$", uninterrupted) or "").startswith("cpu")
    if not expected or expected.keys() != found.keys():
        verdict = f"losses: MISSING (a log or its loss lines after step {step} are missing) -> check"
    else:
        differences = [abs(expected[key] - found[key]) for key in expected]
        largest = math.nan if any(map(math.isnan, differences)) else max(differences)
        if on_cpu:
            verdict = (f"losses: equal ({len(expected)} values)" if largest == 0 else
                       f"losses: DIFFER on the CPU, max |difference| {largest:.4f} (a CPU run is exact) -> check")
        elif largest <= RESUME_TOLERANCE:
            verdict = (f"losses: max |difference| {largest:.4f} over {len(expected)} values, within the "
                       f"tolerance {RESUME_TOLERANCE} (the GPU's backward is not deterministic)")
        else:
            verdict = (f"losses: max |difference| {largest:.4f} over {len(expected)} values, beyond the "
                       f"tolerance {RESUME_TOLERANCE} -> check")
    return lines + [verdict]


def phase_section(work: Path, phase: int, row: list[str] | None, requested: bool, prefix: str,
                  checkpoint_step: int) -> list[str]:
    lines = [f"## Phase {phase}: {NAMES[phase]}", ""]
    if row is None:
        lines.append("status: " + ("not run yet (or running)" if requested else "not run") + "\n")
        return lines
    status, wall, limit, note = row[2], row[4], row[5], row[6]
    if status == "skipped":
        return lines + [f"status: **skipped**: {note}", ""]
    lines.append(f"status: **{status}**, wall {wall} s (limit {limit} s{', ' + note if note else ''})")
    lines.append("")
    tail = read(work / f"phase{phase}.log").splitlines()[-15:]
    if status != "ok" and tail:
        lines += [f"last lines of the phase's console (phase{phase}.log):", "", "```", *tail, "```", ""]
    run_ids = [f"{prefix}-{name}" for name in RUNS[phase]]
    logs = [work / "logs" / f"{run_id}.txt" for run_id in run_ids if (work / "logs" / f"{run_id}.txt").is_file()]
    if phase != 4:  # compare.py once per finished phase (it takes seconds to start): kept in compare_phase<N>.txt
        cached = work / f"compare_phase{phase}.txt"
        if not cached.is_file():
            cached.write_text(compare_tables(logs) + "\n")
        lines += ["```", cached.read_text().rstrip(), "```", ""]
    for run_id in run_ids:
        lines += run_figures(work, run_id)
    lines.append("")
    first_log = read(logs[0]) if logs else ""
    if phase == 1:
        console = read(work / "logs" / f"{run_ids[0]}.console.txt")
        lines.append(f"- reference: launch to first step about 95-105 s with a cold compile cache "
                     f"(here {launch_to_first_step(console)})")
        lines.append(f"- {first(r'^(checkpoint: .*)$', read(work / 'checkpoint.txt')) or 'checkpoint: no file'} "
                     "(deleted after the phase)")
        check = resume_check(*(read(work / "logs" / f"{run_id}.txt") for run_id in run_ids), checkpoint_step)
        (work / "resume_check.txt").write_text(f"resume check: {run_ids[1]} from the step-{checkpoint_step} "
                                              f"checkpoint of {run_ids[0]}, its losses beside {run_ids[0]}'s\n\n"
                                              + "\n".join(check) + "\n")
        lines.append(f"- resume check (resume_check.txt): {check[-1]}")
    elif phase == 2:
        lines += speed_checks(first_log)
        lines.append("- reference: launch to first step 18 s with a warm compile cache")
    elif phase == 3:
        losses = [float(value) for log in logs
                  if (value := first(r"^done: val_loss ([\d.]+) at step", read(log))) is not None]
        card = card_of(first_log)
        if len(losses) == 2:
            mean = statistics.mean(losses)
            flag = "check" if mean > 2.66 else ("ok" if mean <= 2.655 else "ok, above the reference runs' range")
            lines.append(f"- mean val loss at the last step {mean:.4f} ({', '.join(f'{x:.4f}' for x in losses)}) vs "
                         "reference mean 2.644, runs 2.628-2.655, check above 2.66"
                         + (f" -> {flag}" if card else " (no reference for this card)"))
        else:
            lines.append(f"- {len(losses)} of 2 runs finished: no mean")
        if card:
            lines.append(f"- reference step_avg {QUALITY_MS[card]} ms/step on the {card}")
    elif phase == 4:
        profile = read(work / "profile.txt")
        lines += ["```", profile.rstrip() or "(no profile.txt)", "```", "",
                  "- reference (H200, 4 steps): about 954 ms of kernels per ~1086 ms step; matrix products 57%, "
                  "soft cap + cross-entropy 11.5%, FlexAttention 10%, Muon 7% (~68 ms), RMS norms 4.6%, ReLU² 3%"]
    lines.append("")
    return lines


def cut(path: Path, limit: int) -> bytes:
    """A file's bytes, or where longer than limit, its first and last limit / 2 with a line between."""
    size, half = path.stat().st_size, limit // 2
    with open(path, "rb") as file:
        if size <= limit:
            return file.read()
        head = file.read(half)
        file.seek(size - half)
        return head + f"\n[... {size - 2 * half} bytes cut by gpu_check_summary.py ...]\n".encode() + file.read(half)


def pack(work: Path, archive: Path):
    """Every plain file under work into archive (a .tar.gz, top folder gpu_check/), written under a temporary
    name and renamed; files over 4 MiB are cut, and more if the archive would still exceed ARCHIVE_LIMIT."""
    partial = archive.with_name(archive.name + ".partial")
    for limit in (4 * 2**20, 2**20, 2**18):
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(work.rglob("*")):
                if path.is_file() and not path.is_symlink():  # plain files only (not a console's FIFO)
                    data = cut(path, limit)
                    info = tarfile.TarInfo(f"gpu_check/{path.relative_to(work)}")
                    info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
                    tar.addfile(info, io.BytesIO(data))
        if partial.stat().st_size <= ARCHIVE_LIMIT:
            break
    os.replace(partial, archive)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    work = Path(argv[0])
    config = dict(line.split("=", 1) for line in read(work / "config.txt").splitlines() if "=" in line)
    prefix = config.get("prefix", "")
    requested = {int(p) for p in config.get("phases", "").split(",") if p.strip().isdigit()}
    rows = {}
    for line in read(work / "phases.tsv").splitlines():
        row = line.split("\t")
        if len(row) == 7:
            rows[int(row[0])] = row
    lines = ["# GPU check summary", "",
             f"runs `{prefix}-*`, phases {config.get('phases', '?')}, "
             f"{'DRY RUN (CPU, tiny model)' if config.get('dry_run') == '1' else 'real run'}, "
             f"budget {config.get('budget') or 'none'}, started {config.get('started', '?')}", ""]
    versions = read(work / "versions.txt").strip()
    if versions:
        lines += ["```", versions, "```", ""]
    lines += ["| phase | status | wall s | limit s | note |", "| --- | --- | --- | --- | --- |"]
    for phase in range(1, 5):
        row = rows.get(phase) or [""] * 2 + ["not run yet" if phase in requested else "not run"] + ["-"] * 3 + [""]
        lines.append(f"| {phase} {NAMES[phase]} | {row[2]} | {row[4]} | {row[5]} | {row[6]} |")
    lines.append("")
    for phase in range(1, 5):
        lines += phase_section(work, phase, rows.get(phase), phase in requested, prefix,
                               int(config.get("checkpoint_step", "0")))
    text = "\n".join(lines)
    checks = sorted({line for line in lines if line.endswith("-> check")})
    if checks:
        text = text.replace("\n\n", "\n\n**checks:**\n\n" + "\n".join(checks) + "\n\n", 1)
    (work / "summary.md").write_text(text)
    if len(argv) == 2:
        out = Path(argv[1])
        for name in ("summary.md", "phases.tsv"):
            shutil.copyfile(work / name, out / name)
        pack(work, out / ARCHIVE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

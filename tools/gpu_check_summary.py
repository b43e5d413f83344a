"""Writes OUT/summary.md from what tools/gpu_check.sh left in OUT (it calls this after every phase).

    python tools/gpu_check_summary.py OUT

Per phase: status (ok, failed rc N, timed out, not run), wall time and limit, the last lines of a phase
that did not succeed, records/compare.py's tables of its logs, the peak memory, the time from launch to the
first step line (the first console line with train_loss, from the timestamps gpu_check.sh puts on each
console line, minus the "# launch" timestamp written just before torchrun started; that step line is
printed once the second step has been dispatched, since a loss is read one step late), the checkpoint's
size and save time, and the reference figures of DESIGN.md section 7 beside them, flagged "check" where
they are clearly off.
"""
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAMES = {1: "smoke, checkpoint and resume", 2: "speed protocol", 3: "profile", 4: "quality protocol x2"}
RUNS = {1: ["smoke", "resume"], 2: ["speed"], 3: ["profile"], 4: ["quality-s1", "quality-s2"]}
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


def run_figures(out: Path, run_id: str) -> list[str]:
    log, console = read(out / "logs" / f"{run_id}.txt"), read(out / "logs" / f"{run_id}.console.txt")
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


def phase_section(out: Path, phase: int, row: list[str] | None, requested: bool, prefix: str) -> list[str]:
    lines = [f"## Phase {phase}: {NAMES[phase]}", ""]
    if row is None:
        lines.append("status: " + ("not run yet (or running)" if requested else "not run") + "\n")
        return lines
    status, wall, limit = row[2], row[4], row[5]
    lines.append(f"status: **{status}**, wall {wall} s (limit {limit} s)")
    lines.append("")
    tail = read(out / f"phase{phase}.log").splitlines()[-15:]
    if status != "ok" and tail:
        lines += [f"last lines of the phase's console (phase{phase}.log):", "", "```", *tail, "```", ""]
    run_ids = [f"{prefix}-{name}" for name in RUNS[phase]]
    logs = [out / "logs" / f"{run_id}.txt" for run_id in run_ids if (out / "logs" / f"{run_id}.txt").is_file()]
    if phase != 3:  # compare.py once per finished phase (it takes seconds to start): kept in compare_phase<N>.txt
        cached = out / f"compare_phase{phase}.txt"
        if not cached.is_file():
            cached.write_text(compare_tables(logs) + "\n")
        lines += ["```", cached.read_text().rstrip(), "```", ""]
    for run_id in run_ids:
        lines += run_figures(out, run_id)
    lines.append("")
    first_log = read(logs[0]) if logs else ""
    if phase == 1:
        console = read(out / "logs" / f"{run_ids[0]}.console.txt")
        lines.append(f"- reference: launch to first step about 95-105 s with a cold compile cache "
                     f"(here {launch_to_first_step(console)})")
        lines.append(f"- {first(r'^(checkpoint: .*)$', read(out / 'checkpoint.txt')) or 'checkpoint: no file'} "
                     "(deleted after the phase)")
        lines.append(f"- resume check (resume_check.txt): "
                     f"{first(r'^(losses: .*)$', read(out / 'resume_check.txt')) or 'missing'}")
    elif phase == 2:
        lines += speed_checks(first_log)
        lines.append("- reference: launch to first step 18 s with a warm compile cache")
    elif phase == 3:
        profile = read(out / "profile.txt")
        lines += ["```", profile.rstrip() or "(no profile.txt)", "```", "",
                  "- reference (H200, 4 steps): about 954 ms of kernels per ~1086 ms step; matrix products 57%, "
                  "soft cap + cross-entropy 11.5%, FlexAttention 10%, Muon 7% (~68 ms), RMS norms 4.6%, ReLU² 3%"]
    elif phase == 4:
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
    lines.append("")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    out = Path(argv[0])
    config = dict(line.split("=", 1) for line in read(out / "config.txt").splitlines() if "=" in line)
    prefix = config.get("prefix", "")
    requested = {int(p) for p in config.get("phases", "").split(",") if p.strip().isdigit()}
    rows = {}
    for line in read(out / "phases.tsv").splitlines():
        row = line.split("\t")
        if len(row) == 6:
            rows[int(row[0])] = row
    lines = ["# GPU check summary", "",
             f"runs `{prefix}-*`, phases {config.get('phases', '?')}, "
             f"{'DRY RUN (CPU, tiny model)' if config.get('dry_run') == '1' else 'real run'}, "
             f"started {config.get('started', '?')}", ""]
    versions = read(out / "versions.txt").strip()
    if versions:
        lines += ["```", versions, "```", ""]
    lines += ["| phase | status | wall s | limit s |", "| --- | --- | --- | --- |"]
    for phase in range(1, 5):
        row = rows.get(phase)
        status = row[2] if row else ("not run yet" if phase in requested else "not run")
        lines.append(f"| {phase} {NAMES[phase]} | {status} | {row[4] if row else '-'} | {row[5] if row else '-'} |")
    lines.append("")
    for phase in range(1, 5):
        lines += phase_section(out, phase, rows.get(phase), phase in requested, prefix)
    text = "\n".join(lines)
    checks = sorted({line for line in lines if line.endswith("-> check")})
    if checks:
        text = text.replace("\n\n", "\n\n**checks:**\n\n" + "\n".join(checks) + "\n\n", 1)
    (out / "summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

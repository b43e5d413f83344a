"""Compare NanoGPT speedrun training logs side by side.

Reads logs written by this project's train_gpt.py and the public
KellerJordan/modded-nanogpt record logs, and prints one row per log: final
val loss, train time, step_avg, steps done / planned, tokens trained, card,
PyTorch version and whether the run finished, stopped early or crashed.

    python records/compare.py logs/a.txt logs/b.txt --plot compare.png

Both log layouts start with the trainer's own source code, so result lines
are only read after the "Running PyTorch ..." header that follows the source.
"""
import argparse
import ast
import json
import math
import operator
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

NUMBER = r"(?:nan|inf|\d+(?:\.\d+)?)"
# Anchored at both ends with numeric fields, so f-string templates ("{step}")
# and a line cut mid-write ("step:813/1390 train_ti") never match.
STEP_LINE = re.compile(
    rf"^step:(?P<step>\d+)/(?P<planned>\d+)"
    rf"(?: val_loss:(?P<val_loss>{NUMBER}))?"
    rf"(?: train_loss:(?P<train_loss>{NUMBER}))?"
    rf" train_time:(?P<train_time>\d+)ms step_avg:(?P<step_avg>{NUMBER})ms$"
)
# Older public logs write "Running pytorch", hence IGNORECASE.
PYTORCH_LINE = re.compile(r"^Running PyTorch (\S+)", re.IGNORECASE)
DEVICE_LINE = re.compile(r"^device: ([^{}]+)$")
HYPERPARAMETERS_LINE = re.compile(r"^hyperparameters: (\{.*\})$")
# A GPU row of the nvidia-smi table: "|   0  NVIDIA H100 80GB HBM3   On  |   00000000:19:00.0 Off |"
NVIDIA_SMI_GPU_ROW = re.compile(r"^\|\s+\d+\s+(.+?)\s+(?:On|Off)\s+\|\s+[0-9A-Fa-f]+:[0-9A-Fa-f]{2}:")
CRASH_LINE = re.compile(r"^stopping:|Traceback \(most recent call last\)|^[\w.]*Error:")
SOURCE_ASSIGNMENT = r"^\s*{name}\s*(?::\s*int\s*)?=\s*([^#\n]+)"

ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


class NotALogError(ValueError):
    """The file is readable but holds no training-log content."""


@dataclass
class LogSummary:
    path: Path
    steps_done: int | None = None
    steps_planned: int | None = None
    final_val_loss: float | None = None
    final_val_step: int | None = None
    train_time_ms: int | None = None
    step_avg_ms: float | None = None
    batch_size: int | None = None  # tokens per optimizer step
    card: str | None = None
    torch_version: str | None = None
    status: str = "truncated"  # "done", "truncated" or "crashed"
    crash_line: str | None = None
    # (step, train_time_ms, val_loss) for every val_loss line, for --plot
    val_curve: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def tokens_trained(self) -> int | None:
        if self.steps_done is None or self.batch_size is None:
            return None
        return self.steps_done * self.batch_size


def parse_log(path) -> LogSummary:
    """Summarize one training log; raises OSError or NotALogError."""
    path = Path(path)
    # errors="replace" so a binary file ends up as "not a log" rather than a decode crash
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()

    # The last header line, in case the source itself mentions one in a docstring.
    header_index = max((i for i, line in enumerate(lines) if PYTORCH_LINE.match(line)), default=None)
    body_start = 0 if header_index is None else header_index + 1
    source, body = lines[:body_start], lines[body_start:]

    summary = LogSummary(path=path)
    if header_index is not None:
        summary.torch_version = PYTORCH_LINE.match(lines[header_index]).group(1)

    gpu_names = []
    hyperparameters = {}
    for line in body:
        if step_match := STEP_LINE.match(line):
            summary.steps_done = int(step_match["step"])
            summary.steps_planned = int(step_match["planned"])
            summary.train_time_ms = int(step_match["train_time"])
            # step_avg is nan for the first steps, which the trainer leaves untimed
            step_avg = float(step_match["step_avg"])
            summary.step_avg_ms = None if math.isnan(step_avg) else step_avg
            if "nan" in (step_match["val_loss"], step_match["train_loss"]):
                summary.crash_line = summary.crash_line or line
            if step_match["val_loss"] is not None:
                summary.final_val_loss = float(step_match["val_loss"])
                summary.final_val_step = summary.steps_done
                summary.val_curve.append((summary.steps_done, summary.train_time_ms, summary.final_val_loss))
        elif CRASH_LINE.search(line):
            summary.crash_line = summary.crash_line or line.strip()
        elif device_match := DEVICE_LINE.match(line):
            summary.card = device_match.group(1).strip()
        elif hyperparameters_match := HYPERPARAMETERS_LINE.match(line):
            try:
                hyperparameters = json.loads(hyperparameters_match.group(1))
            except json.JSONDecodeError:
                pass
        elif gpu_match := NVIDIA_SMI_GPU_ROW.match(line):
            gpu_names.append(gpu_match.group(1))

    if header_index is None and summary.steps_done is None:
        raise NotALogError("not a training log (no 'Running PyTorch' header and no step lines)")

    if summary.card is None and gpu_names:
        summary.card = ", ".join(f"{name} x{count}" for name, count in Counter(gpu_names).items())

    batch_size = hyperparameters.get("batch_size")
    summary.batch_size = batch_size if isinstance(batch_size, int) else batch_size_from_source(source)

    if summary.crash_line is not None:
        summary.status = "crashed"
    elif summary.steps_done is not None and summary.steps_done >= summary.steps_planned:
        summary.status = "done"
    return summary


def batch_size_from_source(source_lines) -> int | None:
    """Tokens per step from the Hyperparameters in a public log's source code."""
    source = "\n".join(source_lines)
    batch_size = first_integer_assignment(source, "batch_size")
    # Older records count batch_size in sequences and set sequence_length beside it.
    sequence_length = first_integer_assignment(source, "sequence_length")
    if batch_size is not None and sequence_length is not None:
        return batch_size * sequence_length
    return batch_size


def first_integer_assignment(source: str, name: str) -> int | None:
    for match in re.finditer(SOURCE_ASSIGNMENT.format(name=name), source, re.MULTILINE):
        value = integer_arithmetic(match.group(1).strip())
        if value is not None:
            return value
    return None


def integer_arithmetic(expression: str) -> int | None:
    """Value of an expression like "8*64*1024", or None; never runs code."""
    def evaluate(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -evaluate(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            return ARITHMETIC[type(node.op)](evaluate(node.left), evaluate(node.right))
        raise ValueError(expression)

    try:
        return evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError):
        return None


def display_names(paths) -> list[str]:
    """File stems, with the parent folder added where two stems collide."""
    paths = [Path(p) for p in paths]
    stem_counts = Counter(p.stem for p in paths)
    return [f"{p.parent.name}/{p.stem}" if stem_counts[p.stem] > 1 else p.stem for p in paths]


def format_count(count: int) -> str:
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= threshold:
            # one decimal for billions (1.2B), whole numbers below (729M)
            return f"{count / threshold:.1f}{suffix}" if suffix == "B" else f"{count / threshold:.0f}{suffix}"
    return str(count)


def format_row(name: str, summary: LogSummary) -> list[str]:
    def known(value, fmt):
        return "-" if value is None else fmt(value)

    steps = "-" if summary.steps_done is None else f"{summary.steps_done}/{summary.steps_planned}"
    return [
        name,
        known(summary.final_val_loss, lambda v: f"{v:.4f}"),
        known(summary.final_val_step, str),
        known(summary.train_time_ms, lambda v: f"{v / 1000:.1f}s"),
        known(summary.step_avg_ms, lambda v: f"{v:.2f}ms"),
        steps,
        known(summary.tokens_trained, format_count),
        known(summary.card, str),
        known(summary.torch_version, str),
        summary.status,
    ]


TABLE_HEADER = ["log", "val_loss", "val_step", "train_time", "step_avg", "steps", "tokens", "card", "torch", "status"]


def format_table(named_summaries) -> str:
    """One aligned text row per (name, LogSummary) pair, under a header row."""
    rows = [TABLE_HEADER] + [format_row(name, summary) for name, summary in named_summaries]
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_HEADER))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def plot_val_curves(named_summaries, out_path) -> None:
    try:
        import matplotlib
    except ImportError:
        sys.exit("compare.py: error: --plot needs matplotlib (pip install matplotlib)")
    matplotlib.use("Agg")  # no display needed; only a file is written
    import matplotlib.pyplot as plt

    figure, (by_time, by_step) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, summary in named_summaries:
        steps = [step for step, _, _ in summary.val_curve]
        seconds = [time_ms / 1000 for _, time_ms, _ in summary.val_curve]
        losses = [loss for _, _, loss in summary.val_curve]
        by_time.plot(seconds, losses, marker=".", label=name)
        by_step.plot(steps, losses, marker=".", label=name)
    # The untrained step-0 loss (~10.8) would squash the curves into a flat line: keep it off the y range.
    trained_losses = [loss for _, summary in named_summaries for step, _, loss in summary.val_curve if step > 0]
    if trained_losses:
        low, high = min(trained_losses), max(trained_losses)
        margin = 0.05 * (high - low) or 0.05
        for axis in (by_time, by_step):
            axis.set_ylim(low - margin, high + margin)
    by_time.set_xlabel("training time (s)")
    by_step.set_xlabel("step")
    for axis in (by_time, by_step):
        axis.set_ylabel("val loss")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", metavar="LOG", help="training log files to compare")
    parser.add_argument("--plot", metavar="OUT.png", help="also save val loss vs time and vs step to this image")
    args = parser.parse_args(argv)

    named_summaries = []
    failed = False
    for name, path in zip(display_names(args.logs), args.logs):
        try:
            named_summaries.append((name, parse_log(path)))
        except (OSError, NotALogError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            print(f"compare.py: error: {path}: {reason}", file=sys.stderr)
            failed = True

    if named_summaries:
        print(format_table(named_summaries))
        if args.plot:
            plot_val_curves(named_summaries, args.plot)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Compare NanoGPT speedrun training logs side by side, and record attempts as groups of runs.

Reads logs written by this project's train_gpt.py and the public
KellerJordan/modded-nanogpt record logs, and prints two tables.

Per log: final val loss, train time, step_avg, steps done / planned, tokens
trained, throughput and MFU (this project's logs), card, PyTorch version and
status: done, truncated, crashed, or stopped (interrupted on purpose by a
signal, resumable). A resumed run says which run it continues; when that
earlier log is among the inputs the two count as one run.

Per group: logs with the same code, the same hyperparameters apart from
seed, run_id and checkpoint bookkeeping, and the same card form a group (a
record attempt). For each: runs, runs left out (not finished), mean, sample
standard deviation, min and max of the final val loss, the one-sided t-test
p-value that the true mean is below --target (the public speedrun accepts a
record at p < 0.01), mean train time and step_avg, and with --baseline the
difference of mean train times with a 95% Welch interval. A log named more
than once (overlapping globs, a link, a byte-identical copy) counts once; a
line on stderr says which names were left out.

    python records/compare.py logs/a.txt logs/b.txt --plot compare.png

Both log layouts start with the trainer's own source code, so result lines
are only read after the "Running PyTorch ..." header that follows the source.
"""
import argparse
import ast
import hashlib
import json
import math
import operator
import os
import re
import statistics
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

try:
    from scipy import stats
except ImportError:  # the per-log table works without scipy; the group table needs it
    stats = None

TARGET_VAL_LOSS = 3.28  # the public speedrun's bar for a record
# Hyperparameters that name, seed or resume a run without changing what it computes: logs that differ
# only in these (and share code and card) are runs of one group.
FIELDS_IGNORED_FOR_GROUPING = frozenset({"seed", "run_id", "resume", "checkpoint_every", "keep_checkpoints",
                                         "checkpoint_failure_stops"})

NUMBER = r"(?:nan|inf|\d+(?:\.\d+)?)"
# Anchored at both ends with numeric fields, so f-string templates ("{step}")
# and a line cut mid-write ("step:813/1390 train_ti") never match.
STEP_LINE = re.compile(
    rf"^step:(?P<step>\d+)/(?P<planned>\d+)"
    rf"(?: val_loss:(?P<val_loss>{NUMBER}))?"
    rf"(?: train_loss:(?P<train_loss>{NUMBER}))?"
    rf" train_time:(?P<train_time>\d+)ms step_avg:(?P<step_avg>{NUMBER})ms$"
)
THROUGHPUT_LINE = re.compile(
    r"^throughput: step:\d+/\d+ tokens_per_s:(?P<tokens_per_s>\d+) mfu:(?:(?P<mfu>\d+(?:\.\d+)?)%|-)$")
RESUMED_LINE = re.compile(r"^resumed: run (?P<run_id>\S+) at step (?P<step>\d+) from .+$")
STOPPING_LINE = re.compile(r"^stopping: (?P<reason>.*)$")
# Older public logs write "Running pytorch", hence IGNORECASE.
PYTORCH_LINE = re.compile(r"^Running PyTorch (\S+)", re.IGNORECASE)
DEVICE_LINE = re.compile(r"^device: ([^{}]+)$")
HYPERPARAMETERS_LINE = re.compile(r"^hyperparameters: (\{.*\})$")
# A GPU row of the nvidia-smi table: "|   0  NVIDIA H100 80GB HBM3   On  |   00000000:19:00.0 Off |"
NVIDIA_SMI_GPU_ROW = re.compile(r"^\|\s+\d+\s+(.+?)\s+(?:On|Off)\s+\|\s+[0-9A-Fa-f]+:[0-9A-Fa-f]{2}:")
CRASH_LINE = re.compile(r"Traceback \(most recent call last\)|^[\w.]*Error:")
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
    tokens_per_s: int | None = None  # from the last throughput: line
    mfu_percent: float | None = None
    card: str | None = None
    torch_version: str | None = None
    status: str = "truncated"  # "done", "truncated", "crashed" or "stopped" (by a signal, resumable)
    crash_line: str | None = None
    stop_line: str | None = None
    code: str = ""  # the trainer's source text, before the "Running PyTorch" header
    hyperparameters: dict = field(default_factory=dict)
    resumed_run_id: str | None = None  # from "resumed: run <id> at step <k> from <checkpoint>"
    resumed_at_step: int | None = None
    # Set by link_resumed_runs when the log this one resumes is among the inputs, and on that log.
    previous: Self | None = None
    continued_by: str | None = None
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
        code_lines = lines[:header_index]
        # The Python version line just above the header is the machine's, not the code's.
        if code_lines and code_lines[-1].startswith("Running Python"):
            code_lines = code_lines[:-1]
        summary.code = "\n".join(code_lines)

    gpu_names = []
    for line in body:
        if step_match := STEP_LINE.match(line):
            summary.steps_done = int(step_match["step"])
            summary.steps_planned = int(step_match["planned"])
            summary.train_time_ms = int(step_match["train_time"])
            # step_avg is nan (public logs) or 0 (ours) for the first steps, which the trainer leaves untimed
            step_avg = float(step_match["step_avg"])
            summary.step_avg_ms = None if math.isnan(step_avg) or step_avg == 0 else step_avg
            if "nan" in (step_match["val_loss"], step_match["train_loss"]):
                summary.crash_line = summary.crash_line or line
            if step_match["val_loss"] is not None:
                summary.final_val_loss = float(step_match["val_loss"])
                summary.final_val_step = summary.steps_done
                summary.val_curve.append((summary.steps_done, summary.train_time_ms, summary.final_val_loss))
        elif throughput_match := THROUGHPUT_LINE.match(line):
            summary.tokens_per_s = int(throughput_match["tokens_per_s"])
            mfu = throughput_match["mfu"]
            summary.mfu_percent = None if mfu is None else float(mfu)
        elif stopping_match := STOPPING_LINE.match(line):
            # A signal (SIGTERM, SIGINT) stops a run on purpose, with a checkpoint to resume from.
            if stopping_match["reason"].startswith("received SIG"):
                summary.stop_line = summary.stop_line or line
            else:
                summary.crash_line = summary.crash_line or line
        elif CRASH_LINE.search(line):
            summary.crash_line = summary.crash_line or line.strip()
        elif resumed_match := RESUMED_LINE.match(line):
            summary.resumed_run_id = resumed_match["run_id"]
            summary.resumed_at_step = int(resumed_match["step"])
        elif device_match := DEVICE_LINE.match(line):
            summary.card = device_match.group(1).strip()
        elif hyperparameters_match := HYPERPARAMETERS_LINE.match(line):
            try:
                summary.hyperparameters = json.loads(hyperparameters_match.group(1))
            except json.JSONDecodeError:
                pass
        elif gpu_match := NVIDIA_SMI_GPU_ROW.match(line):
            gpu_names.append(gpu_match.group(1))

    if header_index is None and summary.steps_done is None:
        raise NotALogError("not a training log (no 'Running PyTorch' header and no step lines)")

    if summary.card is None and gpu_names:
        summary.card = ", ".join(f"{name} x{count}" for name, count in Counter(gpu_names).items())

    batch_size = summary.hyperparameters.get("batch_size")
    summary.batch_size = batch_size if isinstance(batch_size, int) else batch_size_from_source(source)

    if summary.crash_line is not None:
        summary.status = "crashed"
    elif summary.stop_line is not None:
        summary.status = "stopped"
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


def distinct_logs(paths) -> tuple[list[str], list[str]]:
    """(paths, notes): each log once, however many times it is named: the same file through overlapping globs,
    another spelling of its path, a link, or a byte-identical copy. Every log counted twice would inflate a
    group's n and lower its p-value. notes say which paths were dropped and why; unreadable paths are kept,
    to be reported by parse_log."""
    kept, notes, seen = [], [], {}
    for path in paths:
        try:
            file = os.stat(path)
            with open(path, "rb") as log:
                digest = hashlib.file_digest(log, "sha256").digest()
        except OSError:
            kept.append(path)
            continue
        same_file, same_content = seen.get((file.st_dev, file.st_ino)), seen.get(digest)
        if same_file is not None:
            notes.append(f"{path} (the same file as {same_file})")
        elif same_content is not None:
            notes.append(f"{path} (a byte-identical copy of {same_content})")
        else:
            seen[(file.st_dev, file.st_ino)] = seen[digest] = path
            kept.append(path)
    return kept, notes


def display_names(paths) -> list[str]:
    """File stems, with the parent folder added where two stems collide."""
    paths = [Path(p) for p in paths]
    stem_counts = Counter(p.stem for p in paths)
    return [f"{p.parent.name}/{p.stem}" if stem_counts[p.stem] > 1 else p.stem for p in paths]


def link_resumed_runs(named_summaries) -> None:
    """Joins each resumed log to the log it continues (file stem = run id) when that one is an input too."""
    by_stem = {}
    for name, summary in named_summaries:
        by_stem.setdefault(summary.path.stem, []).append((name, summary))
    for name, summary in named_summaries:
        candidates = [(n, s) for n, s in by_stem.get(summary.resumed_run_id, []) if s is not summary]
        if not candidates:
            continue
        # Where two folders hold a log of that id, the one beside the resumed log.
        same_folder = [(n, s) for n, s in candidates if s.path.parent == summary.path.parent]
        _, earlier = (same_folder or candidates)[0]
        # Logs that resume each other (edited by hand) would make an endless curve: leave the closing link out.
        ancestor = earlier
        while ancestor is not None and ancestor is not summary:
            ancestor = ancestor.previous
        if ancestor is summary:
            continue
        summary.previous = earlier
        earlier.continued_by = name


def stitched_val_curve(summary: LogSummary) -> list[tuple[int, int, float]]:
    """A run's val points including those of the logs it resumed: each earlier log up to the resume step."""
    points = list(summary.val_curve)
    while summary.previous is not None:
        resumed_at = summary.resumed_at_step
        earlier = [point for point in summary.previous.val_curve if point[0] <= resumed_at]
        points = earlier + [point for point in points if point[0] > resumed_at]
        summary = summary.previous
    return points


@dataclass
class Group:
    """Runs of one configuration: same code, same hyperparameters but FIELDS_IGNORED_FOR_GROUPING, same card."""
    name: str
    card: str | None
    runs: list[LogSummary]  # a resumed run is its last log; the logs it continues are not runs of their own

    @property
    def finished(self) -> list[LogSummary]:
        """The runs the statistics count: done, with a finite final val loss."""
        return [run for run in self.runs if run.status == "done" and run.final_val_loss is not None
                and math.isfinite(run.final_val_loss)]


def group_key(summary: LogSummary) -> tuple:
    hyperparameters = {name: value for name, value in summary.hyperparameters.items()
                       if name not in FIELDS_IGNORED_FOR_GROUPING}
    return summary.code, json.dumps(hyperparameters, sort_keys=True), summary.card


def group_runs(named_summaries) -> list[Group]:
    """Groups in order of first appearance; call link_resumed_runs first."""
    members = {}  # group_key -> [(display name, summary)]
    for name, summary in named_summaries:
        if summary.continued_by is None:
            members.setdefault(group_key(summary), []).append((name, summary))
    groups, used_names = [], set()
    for number, named_runs in enumerate(members.values(), start=1):
        name = group_name([name for name, _ in named_runs]) or f"group{number}"
        unique_name, suffix = name, 2
        while unique_name in used_names:
            unique_name, suffix = f"{name}-{suffix}", suffix + 1
        used_names.add(unique_name)
        runs = [summary for _, summary in named_runs]
        groups.append(Group(unique_name, runs[0].card, runs))
    return groups


def group_name(run_names) -> str:
    """Common prefix of the runs' names without a seed suffix: quality-s0, quality-s1 -> quality."""
    return re.sub(r"(?:-s\d*|[-_])+$", "", os.path.commonprefix(run_names))


@dataclass
class GroupStatistics:
    n: int  # finished runs
    left_out: int  # crashed, stopped or truncated runs
    mean: float | None = None
    sd: float | None = None  # sample standard deviation (n - 1 in the denominator)
    minimum: float | None = None
    maximum: float | None = None
    p_value: float | None = None
    train_time_ms: float | None = None  # mean
    step_avg_ms: float | None = None  # mean over the runs that have one


def group_statistics(group: Group, target: float) -> GroupStatistics:
    finished = group.finished
    result = GroupStatistics(n=len(finished), left_out=len(group.runs) - len(finished))
    if not finished:
        return result
    losses = [run.final_val_loss for run in finished]
    result.mean, result.minimum, result.maximum = statistics.mean(losses), min(losses), max(losses)
    result.sd = statistics.stdev(losses) if len(losses) > 1 else None
    result.p_value = p_value_below(losses, target)
    result.train_time_ms = statistics.mean(run.train_time_ms for run in finished)
    step_avgs = [run.step_avg_ms for run in finished if run.step_avg_ms is not None]
    result.step_avg_ms = statistics.mean(step_avgs) if step_avgs else None
    return result


def p_value_below(losses: list[float], target: float) -> float | None:
    """One-sided t-test p-value for "the true mean loss is below target", as the public speedrun computes it.
    None where the test is undefined: one run, or runs that all ended at the same loss (no spread)."""
    if len(losses) < 2 or len(set(losses)) == 1:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision warning for nearly equal values
        return float(stats.ttest_1samp(losses, target, alternative="less").pvalue)


def welch_interval(times: list[float], baseline_times: list[float]) -> tuple[float, float | None, float | None]:
    """Mean of times minus mean of baseline_times, and its 95% confidence interval by Welch's t-test (unequal
    variances, Welch-Satterthwaite degrees of freedom); the interval is None with fewer than 2 values on a side
    or no spread on both."""
    difference = statistics.mean(times) - statistics.mean(baseline_times)
    if len(times) < 2 or len(baseline_times) < 2 or (len(set(times)) == 1 and len(set(baseline_times)) == 1):
        return difference, None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = stats.ttest_ind(times, baseline_times, equal_var=False).confidence_interval(0.95)
    return difference, float(interval.low), float(interval.high)


def in_units(number: float) -> tuple[float, str]:
    """number in the largest unit it reaches: 3547210 -> (3.54721, "M"); below a thousand (number, "")."""
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if number >= threshold:
            return number / threshold, suffix
    return number, ""


def format_count(count: int) -> str:
    value, suffix = in_units(count)
    # one decimal for billions (1.2B), whole numbers below (729M)
    return f"{value:.1f}{suffix}" if suffix == "B" else f"{value:.0f}{suffix}"


def format_rate(rate: int) -> str:
    """Three significant digits: 3547210 -> 3.55M, 35500 -> 35.5K. Rounded before the unit is chosen, so
    999999 -> 1M, not 1e+03K."""
    value, suffix = in_units(float(f"{rate:.3g}"))
    return f"{value:.3g}{suffix}"


def known(value, fmt) -> str:
    return "-" if value is None else fmt(value)


def status_text(summary: LogSummary) -> str:
    text = summary.status
    if summary.resumed_run_id is not None:
        text += f" (resumed {summary.resumed_run_id}@{summary.resumed_at_step})"
    if summary.continued_by is not None:
        text += f" -> {summary.continued_by}"
    return text


def format_row(name: str, summary: LogSummary) -> list[str]:
    steps = "-" if summary.steps_done is None else f"{summary.steps_done}/{summary.steps_planned}"
    return [
        name,
        known(summary.final_val_loss, lambda v: f"{v:.4f}"),
        known(summary.final_val_step, str),
        known(summary.train_time_ms, lambda v: f"{v / 1000:.1f}s"),
        known(summary.step_avg_ms, lambda v: f"{v:.2f}ms"),
        steps,
        known(summary.tokens_trained, format_count),
        known(summary.tokens_per_s, format_rate),
        known(summary.mfu_percent, lambda v: f"{v:.1f}%"),
        known(summary.card, str),
        known(summary.torch_version, str),
        status_text(summary),
    ]


TABLE_HEADER = ["log", "val_loss", "val_step", "train_time", "step_avg", "steps", "tokens", "tok/s", "mfu", "card",
                "torch", "status"]


def aligned(rows) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def format_table(named_summaries) -> str:
    """One aligned text row per (name, LogSummary) pair, under a header row."""
    return aligned([TABLE_HEADER] + [format_row(name, summary) for name, summary in named_summaries])


def format_seconds_difference(ms: float) -> str:
    return f"{ms / 1000:+.1f}s"


def format_group_table(groups, target: float, baseline: str | None = None) -> str:
    """One aligned row per group: its statistics and, with a baseline group, the train time difference to it."""
    header = ["group", "n", "left_out", "val_loss", "sd", "min", "max", f"p(mean<{target:g})", "train_time",
              "step_avg", "card"]
    if baseline is not None:
        header.append(f"train_time-{baseline}(95%)")
        baseline_times = [run.train_time_ms for run in next(g for g in groups if g.name == baseline).finished]
    rows = [header]
    for group in groups:
        result = group_statistics(group, target)
        row = [
            group.name,
            str(result.n),
            str(result.left_out),
            known(result.mean, lambda v: f"{v:.4f}"),
            known(result.sd, lambda v: f"{v:.4f}"),
            known(result.minimum, lambda v: f"{v:.4f}"),
            known(result.maximum, lambda v: f"{v:.4f}"),
            known(result.p_value, lambda v: f"{v:.3g}"),
            known(result.train_time_ms, lambda v: f"{v / 1000:.1f}s"),
            known(result.step_avg_ms, lambda v: f"{v:.2f}ms"),
            known(group.card, str),
        ]
        if baseline is not None:
            times = [run.train_time_ms for run in group.finished]
            if group.name == baseline:
                row.append("baseline")
            elif not times or not baseline_times:
                row.append("-")
            else:
                difference, low, high = welch_interval(times, baseline_times)
                interval = ("" if low is None
                            else f" [{format_seconds_difference(low)}, {format_seconds_difference(high)}]")
                row.append(format_seconds_difference(difference) + interval)
        rows.append(row)
    return aligned(rows)


def print_report(named_summaries, groups, target: float, baseline: str | None = None) -> None:
    """The per-log table, a blank line and the group table (which needs scipy)."""
    print(format_table(named_summaries))
    print()
    if stats is None:
        print("compare.py: the group table needs scipy (pip install scipy)", file=sys.stderr)
    else:
        print(format_group_table(groups, target, baseline))


def plot_path_problem(out_path: str) -> str | None:
    """Why --plot cannot write out_path, or None: checked before any table is printed."""
    try:
        import matplotlib.figure
    except ImportError:
        return "--plot needs matplotlib (pip install matplotlib)"
    path = Path(out_path)
    extension = path.suffix.lower().removeprefix(".")
    supported = matplotlib.figure.Figure().canvas.get_supported_filetypes()
    if extension not in supported:
        return (f"--plot {out_path}: matplotlib cannot write '.{extension}' files "
                f"(it writes {', '.join(sorted(supported))})")
    if path.is_dir():
        return f"--plot {out_path}: is a directory"
    folder = path.parent
    if not folder.is_dir():
        return f"--plot {out_path}: directory {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"--plot {out_path}: directory {folder} is not writable"
    return None


def plot_val_curves(named_summaries, groups, out_path, target: float | None = None) -> None:
    """Val loss against training time and against steps: a group of several finished runs as its mean curve
    over the steps all of them validated at, with a band from min to max; every other log as its own curve."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed; only a file is written
    import matplotlib.pyplot as plt

    figure, (by_time, by_step) = plt.subplots(1, 2, figsize=(12, 4.5))
    plotted_losses = []  # after step 0, for the y range
    runs_in_bands = set()
    for group in groups:
        if len(group.finished) < 2:
            continue
        runs_in_bands.update(id(run) for run in group.finished)
        points_by_step = [{step: (time_ms, loss) for step, time_ms, loss in stitched_val_curve(run)}
                          for run in group.finished]
        shared_steps = sorted(set.intersection(*(set(points) for points in points_by_step)))
        mean_seconds = [statistics.mean(points[step][0] for points in points_by_step) / 1000 for step in shared_steps]
        losses_by_step = [[points[step][1] for points in points_by_step] for step in shared_steps]
        mean_losses = [statistics.mean(losses) for losses in losses_by_step]
        lows, highs = [min(losses) for losses in losses_by_step], [max(losses) for losses in losses_by_step]
        label = f"{group.name} (n={len(points_by_step)})"
        for axis, x in ((by_time, mean_seconds), (by_step, shared_steps)):
            (line,) = axis.plot(x, mean_losses, marker=".", label=label)
            axis.fill_between(x, lows, highs, color=line.get_color(), alpha=0.2)
        plotted_losses += [loss for step, low, high in zip(shared_steps, lows, highs) if step > 0
                           for loss in (low, high)]
    for name, summary in named_summaries:
        if summary.continued_by is not None or id(summary) in runs_in_bands:
            continue  # drawn as part of the run that resumed it, or in its group's band
        curve = stitched_val_curve(summary)
        steps = [step for step, _, _ in curve]
        seconds = [time_ms / 1000 for _, time_ms, _ in curve]
        losses = [loss for _, _, loss in curve]
        by_time.plot(seconds, losses, marker=".", label=name)
        by_step.plot(steps, losses, marker=".", label=name)
        plotted_losses += [loss for step, _, loss in curve if step > 0]
    if target is not None:
        for axis in (by_time, by_step):
            axis.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}")
        plotted_losses.append(target)
    # The untrained step-0 loss (~10.8) would squash the curves into a flat line: keep it off the y range.
    if plotted_losses:
        low, high = min(plotted_losses), max(plotted_losses)
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
    parser.add_argument("--plot", metavar="OUT.png",
                        help="also save val loss vs time and vs step to this image (any format matplotlib writes)")
    parser.add_argument("--target", type=float, metavar="LOSS",
                        help=f"val loss a record must reach, for the p-value (default {TARGET_VAL_LOSS}); "
                             "when given, --plot also draws it as a dashed line")
    parser.add_argument("--baseline", metavar="GROUP",
                        help="a group name: also print every other group's mean train time minus this group's, "
                             "with a 95%% Welch confidence interval")
    args = parser.parse_args(argv)
    target = TARGET_VAL_LOSS if args.target is None else args.target

    if args.plot and (problem := plot_path_problem(args.plot)):
        print(f"compare.py: error: {problem}", file=sys.stderr)
        return 2

    logs, duplicates = distinct_logs(args.logs)
    if duplicates:
        print(f"compare.py: counted once, left out: {', '.join(duplicates)}", file=sys.stderr)
    named_summaries = []
    failed = False
    for name, path in zip(display_names(logs), logs):
        try:
            named_summaries.append((name, parse_log(path)))
        except (OSError, NotALogError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            print(f"compare.py: error: {path}: {reason}", file=sys.stderr)
            failed = True
    if not named_summaries:
        return 1

    link_resumed_runs(named_summaries)
    groups = group_runs(named_summaries)
    group_names = [group.name for group in groups]
    if args.baseline is not None and args.baseline not in group_names:
        print(f"compare.py: error: --baseline {args.baseline}: no such group (groups: {', '.join(group_names)})",
              file=sys.stderr)
        return 2

    print_report(named_summaries, groups, target, args.baseline)
    if args.plot:
        plot_val_curves(named_summaries, groups, args.plot, args.target)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

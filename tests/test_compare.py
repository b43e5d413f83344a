"""Tests for records/compare.py against real and hand-written log fixtures."""
import contextlib
import importlib.util
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPARE_PY = REPO / "records" / "compare.py"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# records/ is not a package, so load the tool from its path.
_spec = importlib.util.spec_from_file_location("compare", COMPARE_PY)
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def run_cli(*args):
    """compare.py's main in this process (importing scipy in a fresh process takes seconds); see
    test_cli_as_a_script for the script itself."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = compare.main([str(arg) for arg in args])
        except SystemExit as exit:  # argparse
            returncode = exit.code
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def test_cli_as_a_script():
    result = subprocess.run([sys.executable, str(COMPARE_PY), str(FIXTURES / "project_h100_done.txt"), "--target=3.3"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "project_h100_done")[-1] == "done"
    assert table_row(result.stdout, "project_h100_done", table=1)[1:3] == ["1", "0"]


def table_row(stdout, name, table=0):
    """The cells of the row for name in the per-log table (0) or the group table (1)."""
    lines = stdout.split("\n\n")[table].splitlines()
    rows = [line.split("  ") for line in lines if line.startswith(name + " ")]
    assert len(rows) == 1, stdout
    return [cell.strip() for cell in rows[0] if cell.strip()]


def test_public_speedrun_log():
    summary = compare.parse_log(FIXTURES / "speedrun_010425_softcap_excerpt.txt")
    assert summary.card == "NVIDIA H100 80GB HBM3 x8"
    assert summary.torch_version == "2.6.0.dev20241231+cu126"
    assert summary.final_val_loss == 3.2785
    assert summary.final_val_step == 1390
    assert (summary.steps_done, summary.steps_planned) == (1390, 1390)
    assert summary.train_time_ms == 204345
    assert summary.step_avg_ms == 148.08
    assert summary.batch_size == 8 * 64 * 1024  # from "batch_size = 8*64*1024 # ..." in the source
    assert summary.tokens_trained == 1390 * 524288
    assert summary.status == "done"
    # only the real val lines, none of the f-string templates in the source part
    assert [step for step, _, _ in summary.val_curve] == [0, 125, 250, 375, 1375, 1390]
    assert summary.val_curve[1] == (125, 15634, 4.3686)


def test_older_public_log_with_train_loss_and_sequence_batches():
    summary = compare.parse_log(FIXTURES / "speedrun_110624_shortcuts_excerpt.txt")
    assert summary.torch_version == "2.5.1+cu124"
    assert summary.card == "NVIDIA H100 80GB HBM3 x8"
    assert summary.final_val_loss == 3.3274
    assert (summary.steps_done, summary.steps_planned) == (3200, 3200)
    assert summary.train_time_ms == 452918
    # "batch_size : int = 8*64" sequences of "sequence_length : int = 1024" tokens
    assert summary.batch_size == 524288
    assert summary.status == "done"


def test_project_log():
    summary = compare.parse_log(FIXTURES / "project_h100_done.txt")
    assert summary.card == "NVIDIA H100 80GB HBM3 x1"
    assert summary.torch_version == "2.11.0+cu130"
    assert summary.final_val_loss == 3.2785
    assert summary.final_val_step == 1390
    assert summary.train_time_ms == 204321
    assert summary.step_avg_ms == 147.41
    assert summary.batch_size == 524288  # from the hyperparameters: JSON line
    assert summary.status == "done"  # the "stopping:" docstring line in the source is not a crash
    assert summary.crash_line is None
    assert [step for step, _, _ in summary.val_curve] == [0, 125, 250, 500, 1000, 1390]


def test_truncated_cpu_log():
    summary = compare.parse_log(FIXTURES / "project_cpu_truncated.txt")
    assert summary.status == "truncated"
    assert summary.card == "cpu x2"
    assert summary.torch_version == "2.13.0+cpu"
    # the partial last line "step:813/1390 train_time:17572" is ignored
    assert (summary.steps_done, summary.steps_planned) == (812, 1390)
    assert summary.train_time_ms == 1755096
    assert (summary.final_val_step, summary.final_val_loss) == (750, 4.8812)
    # the docstring example "step:125/1390 val_loss:4.3112 ..." in the source is not a result
    assert [step for step, _, _ in summary.val_curve] == [0, 250, 500, 750]
    assert summary.tokens_trained == 812 * 16384


def test_nan_stop_is_crashed():
    summary = compare.parse_log(FIXTURES / "project_nan_stop.txt")
    assert summary.status == "crashed"
    assert summary.crash_line == "stopping: loss is nan at step 57"
    assert (summary.steps_done, summary.steps_planned) == (57, 1390)
    assert (summary.final_val_step, summary.final_val_loss) == (0, 10.8258)


def test_traceback_is_crashed():
    summary = compare.parse_log(FIXTURES / "project_oom_traceback.txt")
    assert summary.status == "crashed"
    assert summary.crash_line == "Traceback (most recent call last):"
    assert (summary.steps_done, summary.steps_planned) == (130, 1390)
    assert (summary.final_val_step, summary.final_val_loss) == (125, 4.1874)
    assert summary.tokens_trained == 130 * 1048576


def test_nan_val_loss_is_crashed(tmp_path):
    log = tmp_path / "nan_val.txt"
    log.write_text("Running PyTorch 2.11.0+cu130 compiled for CUDA 13.0\n"
                   "step:125/1390 val_loss:nan train_time:17790ms step_avg:154.61ms\n")
    summary = compare.parse_log(log)
    assert summary.status == "crashed"
    assert summary.final_val_loss != summary.final_val_loss  # nan


@pytest.mark.parametrize("expression, value", [
    ("8*64*1024", 524288), ("2*1024 + 8 - 8", 2048), ("-4*3", -12),
    ("args.batch_size", None), ("__import__('os').system('true')", None), ("2**20", None), ("1.5*2", None),
])
def test_integer_arithmetic_is_safe(expression, value):
    assert compare.integer_arithmetic(expression) == value


@pytest.mark.parametrize("count, text", [(1390 * 524288, "729M"), (1_200_000_000, "1.2B"), (45_000, "45K"), (12, "12")])
def test_format_count(count, text):
    assert compare.format_count(count) == text


def test_display_names_add_parent_only_on_collision():
    assert compare.display_names(["a/run.txt", "b/run.txt", "c/other.txt"]) == ["a/run", "b/run", "other"]


def test_cli_table_values():
    result = run_cli(FIXTURES / "project_h100_done.txt", FIXTURES / "project_cpu_truncated.txt",
                     FIXTURES / "speedrun_010425_softcap_excerpt.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == compare.TABLE_HEADER
    assert table_row(result.stdout, "project_h100_done") == [
        "project_h100_done", "3.2785", "1390", "204.3s", "147.41ms", "1390/1390", "729M", "-", "-",
        "NVIDIA H100 80GB HBM3 x1", "2.11.0+cu130", "done"]
    assert table_row(result.stdout, "project_cpu_truncated") == [
        "project_cpu_truncated", "4.8812", "750", "1755.1s", "2188.40ms", "812/1390", "13M", "-", "-",
        "cpu x2", "2.13.0+cpu", "truncated"]
    assert table_row(result.stdout, "speedrun_010425_softcap_excerpt")[-3:] == [
        "NVIDIA H100 80GB HBM3 x8", "2.6.0.dev20241231+cu126", "done"]


def test_cli_bad_files_fail_but_others_print(tmp_path):
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("just some notes\nno training here\n")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    missing = tmp_path / "missing.txt"
    result = run_cli(not_a_log, FIXTURES / "project_nan_stop.txt", binary, missing, tmp_path)
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 4, result.stderr
    assert f"{not_a_log}: not a training log" in errors[0]
    assert f"{binary}: not a training log" in errors[1]
    assert f"{missing}: No such file or directory" in errors[2]
    assert f"{tmp_path}: Is a directory" in errors[3]
    assert "Traceback" not in result.stderr
    assert table_row(result.stdout, "project_nan_stop")[1:] == [
        "10.8258", "0", "6.8s", "145.19ms", "57/1390", "30M", "-", "-", "NVIDIA H100 80GB HBM3 x1", "2.11.0+cu130",
        "crashed"]


def test_cli_plot_writes_png(tmp_path):
    out = tmp_path / "curves.png"
    result = run_cli(FIXTURES / "project_h100_done.txt", FIXTURES / "speedrun_010425_softcap_excerpt.txt",
                     "--plot", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000

    import matplotlib.image
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > height  # the two panels sit side by side


# ---------------------------------------------------------------- groups of runs and their statistics

SOURCE = '"""A trainer (synthetic)."""\nprint("training")'
H100_X8 = "NVIDIA H100 80GB HBM3 x8"


def write_log(path: Path, final_val_loss: float, train_time_ms: int = 200_000, seed: int = 0, code: str = SOURCE,
              card: str = H100_X8, crashed: bool = False, **hyperparameters) -> Path:
    """A minimal log in train_gpt.py's layout: source, header, device, hyperparameters, step lines."""
    values = {"num_iterations": 100, "muon_lr": 0.05, "batch_size": 524288, "seed": seed, "run_id": path.stem}
    values.update(hyperparameters)
    lines = [code, "=" * 100, "Running Python 3.12.3", "Running PyTorch 2.11.0+cu130 compiled for CUDA 13.0",
             "=" * 100, f"device: {card}", "hyperparameters: " + json.dumps(values),
             "step:0/100 val_loss:10.8258 train_time:0ms step_avg:0.00ms",
             f"step:50/100 train_loss:4.1000 train_time:{train_time_ms // 2}ms step_avg:{train_time_ms / 80:.2f}ms"]
    if crashed:
        lines.append("stopping: train loss is nan at step 51")
    else:
        lines += [f"step:100/100 train_loss:3.3000 train_time:{train_time_ms}ms step_avg:{train_time_ms / 90:.2f}ms",
                  f"step:100/100 val_loss:{final_val_loss:.4f} train_time:{train_time_ms}ms "
                  f"step_avg:{train_time_ms / 90:.2f}ms"]
    path.write_text("\n".join(lines) + "\n")
    return path


def groups_of(paths):
    named_summaries = [(name, compare.parse_log(path)) for name, path in zip(compare.display_names(paths), paths)]
    compare.link_resumed_runs(named_summaries)
    return compare.group_runs(named_summaries)


# One-sided critical values from a t table: P(T_df <= t) = p.
@pytest.mark.parametrize("df, t, p", [(4, -3.747, 0.01), (9, -2.821, 0.01), (1, -6.314, 0.05), (20, -2.528, 0.01),
                                      (3, -2.353, 0.05)])
def test_p_value_matches_t_table(tmp_path, df, t, p):
    n = df + 1
    # Evenly spread losses (4 decimals, as logs write them) shifted so that their t statistic is the table's t.
    spread = [round((i - (n - 1) / 2) * 0.02, 4) for i in range(n)]
    shift = round(t * compare.statistics.stdev(spread) / math.sqrt(n), 4)
    losses = [round(3.28 + shift + d, 4) for d in spread]
    paths = [write_log(tmp_path / f"run-s{seed}.txt", loss, seed=seed) for seed, loss in enumerate(losses)]

    mean = math.fsum(losses) / n
    sd = math.sqrt(math.fsum((loss - mean) ** 2 for loss in losses) / (n - 1))
    assert (mean - 3.28) / (sd / math.sqrt(n)) == pytest.approx(t, abs=0.005)

    [group] = groups_of(paths)
    assert group.name == "run"
    result = compare.group_statistics(group, target=3.28)
    assert (result.n, result.left_out) == (n, 0)
    assert result.mean == pytest.approx(mean) and result.sd == pytest.approx(sd)
    assert (result.minimum, result.maximum) == (min(losses), max(losses))
    assert result.p_value == pytest.approx(p, abs=1e-4)


@pytest.mark.parametrize("change, same_group", [
    ({"seed": 7, "run_id": "other"}, True),
    ({"resume": "checkpoints/a/state_step000050_rank0.pt", "checkpoint_every": 25, "keep_checkpoints": 2}, True),
    ({"muon_lr": 0.04}, False),
    ({"num_iterations": 120}, False),
    ({"code": SOURCE + "\n# one more comment"}, False),
    ({"card": "NVIDIA H100 80GB HBM3 x4"}, False),
])
def test_grouping(tmp_path, change, same_group):
    first = write_log(tmp_path / "a.txt", 3.27)
    second = write_log(tmp_path / "b.txt", 3.28, **change)
    assert len(groups_of([first, second])) == (1 if same_group else 2)


@pytest.mark.parametrize("names, group_names", [
    (["quality-s0", "quality-s1", "quality-s2"], ["quality"]),
    (["run-s10", "run-s11"], ["run"]),
    (["a_1", "a_2"], ["a"]),
    (["x", "y"], ["group1"]),
])
def test_group_names(tmp_path, names, group_names):
    paths = [write_log(tmp_path / f"{name}.txt", 3.28, seed=seed) for seed, name in enumerate(names)]
    assert [group.name for group in groups_of(paths)] == group_names


def test_group_names_are_unique(tmp_path):
    paths = [write_log(tmp_path / "lr-s0.txt", 3.28), write_log(tmp_path / "lr-s1.txt", 3.27, muon_lr=0.04)]
    assert [group.name for group in groups_of(paths)] == ["lr", "lr-2"]


def test_cli_group_table_leaves_out_crashed_runs(tmp_path):
    paths = [write_log(tmp_path / "lr-s0.txt", 3.2701, train_time_ms=200_000),
             write_log(tmp_path / "lr-s1.txt", 3.2745, train_time_ms=202_000, seed=1),
             write_log(tmp_path / "lr-s2.txt", 0, seed=2, crashed=True),
             write_log(tmp_path / "single.txt", 3.2700, muon_lr=0.04),
             write_log(tmp_path / "flat-s0.txt", 3.2700, muon_lr=0.03),
             write_log(tmp_path / "flat-s1.txt", 3.2700, muon_lr=0.03, seed=1)]
    result = run_cli(*paths)
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "lr-s2")[-1] == "crashed"
    assert result.stdout.split("\n\n")[1].splitlines()[0].split() == [
        "group", "n", "left_out", "val_loss", "sd", "min", "max", "p(mean<3.28)", "train_time", "step_avg", "card"]
    p_value = compare.stats.ttest_1samp([3.2701, 3.2745], 3.28, alternative="less").pvalue
    assert table_row(result.stdout, "lr", table=1) == [
        "lr", "2", "1", "3.2723", f"{compare.statistics.stdev([3.2701, 3.2745]):.4f}", "3.2701", "3.2745",
        f"{p_value:.3g}", "201.0s", f"{(200_000 / 90 + 202_000 / 90) / 2:.2f}ms", H100_X8]
    # one run: no spread to test against; equal losses: no spread either
    assert table_row(result.stdout, "single", table=1)[1:8] == ["1", "0", "3.2700", "-", "3.2700", "3.2700", "-"]
    assert table_row(result.stdout, "flat", table=1)[1:8] == ["2", "0", "3.2700", "0.0000", "3.2700", "3.2700", "-"]


def test_cli_target(tmp_path):
    paths = [write_log(tmp_path / f"r-s{seed}.txt", loss, seed=seed) for seed, loss in enumerate([3.01, 3.03, 3.05])]
    result = run_cli(*paths, "--target", "3.1")
    expected = compare.stats.ttest_1samp([3.01, 3.03, 3.05], 3.1, alternative="less").pvalue
    assert table_row(result.stdout, "r", table=1)[7] == f"{expected:.3g}"
    assert "p(mean<3.1)" in result.stdout


def test_welch_interval_against_hand_computation(tmp_path):
    baseline_s, faster_s = [204.3, 205.1, 203.8, 204.9], [199.2, 201.5, 198.7]
    paths = [write_log(tmp_path / f"base-s{seed}.txt", 3.27, train_time_ms=round(s * 1000), seed=seed)
             for seed, s in enumerate(baseline_s)]
    paths += [write_log(tmp_path / f"fast-s{seed}.txt", 3.275, train_time_ms=round(s * 1000), seed=seed, muon_lr=0.04)
              for seed, s in enumerate(faster_s)]

    def mean_and_variance(values):
        mean = sum(values) / len(values)
        return mean, sum((v - mean) ** 2 for v in values) / (len(values) - 1)

    (m1, v1), (m2, v2) = mean_and_variance(faster_s), mean_and_variance(baseline_s)
    n1, n2 = len(faster_s), len(baseline_s)
    standard_error = math.sqrt(v1 / n1 + v2 / n2)
    df = standard_error ** 4 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    half_width = compare.stats.t.ppf(0.975, df) * standard_error
    difference = m1 - m2

    [base, fast] = groups_of(paths)
    got = compare.welch_interval([r.train_time_ms for r in fast.finished], [r.train_time_ms for r in base.finished])
    assert got == pytest.approx((difference * 1000, (difference - half_width) * 1000, (difference + half_width) * 1000))

    result = run_cli(*paths, "--baseline", "base")
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "base", table=1)[-1] == "baseline"
    assert table_row(result.stdout, "fast", table=1)[-1] == (
        f"{difference:+.1f}s [{difference - half_width:+.1f}s, {difference + half_width:+.1f}s]")


def test_cli_unknown_baseline(tmp_path):
    paths = [write_log(tmp_path / "a.txt", 3.27), write_log(tmp_path / "b.txt", 3.27, muon_lr=0.04)]
    result = run_cli(*paths, "--baseline", "c")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == "compare.py: error: --baseline c: no such group (groups: a, b)"


# ---------------------------------------------------------------- throughput, stops, resumed runs

@pytest.mark.parametrize("rate, text", [(3547210, "3.55M"), (35500, "35.5K"), (1_234_000_000, "1.23B"), (512, "512"),
                                        (999_499, "999K"), (999_999, "1M"), (999_999_999, "1B")])
def test_format_rate(rate, text):
    assert compare.format_rate(rate) == text


def test_cli_throughput_columns(tmp_path):
    cpu_log = tmp_path / "cpu.txt"
    cpu_log.write_text("Running PyTorch 2.13.0+cpu compiled for CUDA None\ndevice: cpu x1\n"
                       "step:4/4 val_loss:7.1234 train_time:3000ms step_avg:1500.00ms\n"
                       "throughput: step:4/4 tokens_per_s:5120 mfu:-\n")
    result = run_cli(FIXTURES / "project_h100_throughput.txt", cpu_log, FIXTURES / "project_h100_done.txt")
    assert result.returncode == 0, result.stderr
    # from the last throughput: line; the warm-up's "step_avg:0.00ms" lines are unknowns, not zeros
    assert table_row(result.stdout, "project_h100_throughput")[1:9] == [
        "3.2785", "1390", "204.3s", "147.41ms", "1390/1390", "729M", "3.59M", "38.6%"]
    assert table_row(result.stdout, "cpu")[7:9] == ["5.12K", "-"]
    assert table_row(result.stdout, "project_h100_done")[7:9] == ["-", "-"]  # no throughput lines


def test_run_cut_in_its_warm_up_has_no_step_avg(tmp_path):
    log = tmp_path / "early.txt"
    log.write_text("Running PyTorch 2.11.0+cu130 compiled for CUDA 13.0\n"
                   "step:0/1390 val_loss:10.8258 train_time:0ms step_avg:0.00ms\n"
                   "step:1/1390 train_loss:10.8101 train_time:0ms step_avg:0.00ms\n")
    summary = compare.parse_log(log)
    assert summary.step_avg_ms is None and summary.status == "truncated"


@pytest.mark.parametrize("stop_line, status", [
    ("stopping: received SIGTERM at step 40; resume with --resume=checkpoints/x/state_step000030_rank0.pt", "stopped"),
    ("stopping: received SIGINT at step 2", "stopped"),
    ("stopping: train loss is nan at step 41", "crashed"),
])
def test_stopping_reason_decides_status(tmp_path, stop_line, status):
    log = tmp_path / "run.txt"
    log.write_text("Running PyTorch 2.11.0+cu130 compiled for CUDA 13.0\n"
                   "step:40/100 train_loss:4.0000 train_time:4500ms step_avg:150.00ms\n" + stop_line + "\n")
    assert compare.parse_log(log).status == status


def test_resumed_pair_counts_as_one_run(tmp_path):
    # A third run of the same configuration that ran through, from the resumed log's text.
    other = (FIXTURES / "pair_second.txt").read_text().replace('"run_id": "pair_second"', '"run_id": "pair_other"')
    other = re.sub(r"^resumed: .*\n", "", other.replace('"seed": 3', '"seed": 4'), flags=re.MULTILINE)
    (tmp_path / "pair_other.txt").write_text(other.replace("val_loss:3.2791", "val_loss:3.2755"))
    paths = [FIXTURES / "pair_first.txt", FIXTURES / "pair_second.txt", tmp_path / "pair_other.txt"]
    result = run_cli(*paths)
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "pair_first")[-1] == "stopped -> pair_second"
    assert table_row(result.stdout, "pair_second")[-1] == "done (resumed pair_first@30)"
    # one group of two runs: the stopped log is part of pair_second's run, not a left-out run
    assert table_row(result.stdout, "pair", table=1)[1:4] == ["2", "0", f"{(3.2791 + 3.2755) / 2:.4f}"]
    # train time: the resumed log's last train_time, since the trainer carries on the clock
    assert table_row(result.stdout, "pair", table=1)[8] == f"{(13507 + 13507) / 2 / 1000:.1f}s"

    [group] = groups_of(paths)
    resumed = group.runs[0]
    assert resumed.path.name == "pair_second.txt"
    # the plotted curve: the earlier log's points up to the resume step, then the resumed log's
    assert [step for step, _, _ in compare.stitched_val_curve(resumed)] == [0, 25, 50, 75, 100]


def test_logs_resuming_each_other_do_not_loop(tmp_path):
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / f"{name}.txt").write_text(
            "Running PyTorch 2.11.0+cu130 compiled for CUDA 13.0\n"
            f"resumed: run {other} at step 2 from checkpoints/{other}/state_step000002_rank0.pt\n"
            "step:4/4 val_loss:7.0000 train_time:600ms step_avg:150.00ms\n")
    [group] = groups_of([tmp_path / "a.txt", tmp_path / "b.txt"])
    assert [compare.stitched_val_curve(run) for run in group.runs] == [[(4, 600, 7.0)]]


def test_resumed_log_alone_is_a_run_of_its_own():
    summary = compare.parse_log(FIXTURES / "pair_second.txt")
    assert (summary.resumed_run_id, summary.resumed_at_step) == ("pair_first", 30)
    assert summary.status == "done"
    assert compare.parse_log(FIXTURES / "pair_first.txt").status == "stopped"


# ---------------------------------------------------------------- --plot

@pytest.mark.parametrize("out, reason", [
    ("curves.xyz", "matplotlib cannot write '.xyz' files"),
    ("curves", "matplotlib cannot write '.' files"),
    ("missing/curves.png", "does not exist"),
    ("folder.png", "is a directory"),
])
def test_cli_plot_refusals_come_before_the_table(tmp_path, out, reason):
    (tmp_path / "folder.png").mkdir()
    result = run_cli(FIXTURES / "project_h100_done.txt", "--plot", tmp_path / out)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"compare.py: error: --plot {tmp_path / out}: ") and reason in result.stderr


def test_cli_plot_of_a_group_of_three(tmp_path):
    paths = []
    for seed, final in enumerate([3.271, 3.276, 3.279]):
        path = write_log(tmp_path / f"g-s{seed}.txt", final, seed=seed)
        text = path.read_text().replace("step:50/100 train_loss:4.1000",
                                        f"step:50/100 val_loss:{3.9 + seed / 100:.4f}")
        path.write_text(text)
        paths.append(path)
    out = tmp_path / "group.png"
    result = run_cli(*paths, FIXTURES / "project_h100_done.txt", "--plot", out, "--target", "3.28")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def second_name(log: Path, how: str) -> Path:
    """Another name for log: the same path again (overlapping globs), another spelling, a link, a copy."""
    other = {"same-path": log, "other-spelling": log.parent / "." / log.name, "symlink": log.parent / "link.txt",
             "hard-link": log.parent / "hard.txt", "copy": log.parent / "records" / log.name}[how]
    if how == "symlink":
        other.symlink_to(log)
    elif how == "hard-link":
        other.hardlink_to(log)
    elif how == "copy":
        other.parent.mkdir()
        other.write_bytes(log.read_bytes())
    return other


@pytest.mark.parametrize("how, why", [("same-path", "the same file as"), ("other-spelling", "the same file as"),
                                      ("symlink", "the same file as"), ("hard-link", "the same file as"),
                                      ("copy", "a byte-identical copy of")])
def test_cli_counts_a_log_named_twice_once(tmp_path, how, why):
    paths = [write_log(tmp_path / f"lr-s{seed}.txt", loss, seed=seed) for seed, loss in enumerate([3.27, 3.28, 3.29])]
    twice = second_name(paths[0], how)
    result = run_cli(*paths, twice)
    assert result.returncode == 0, result.stderr
    assert table_row(result.stdout, "lr", table=1)[1:4] == ["3", "0", "3.2800"]
    assert result.stderr.splitlines() == [f"compare.py: counted once, left out: {twice} ({why} {paths[0]})"]


def test_cli_keeps_logs_that_differ_by_a_byte(tmp_path):
    first = write_log(tmp_path / "lr-s0.txt", 3.27)
    second = tmp_path / "lr-s1.txt"
    second.write_bytes(first.read_bytes() + b"\n")
    result = run_cli(first, second)
    assert table_row(result.stdout, "lr", table=1)[1:3] == ["2", "0"] and result.stderr == ""

"""Tests for records/compare.py against real and hand-written log fixtures."""
import importlib.util
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
    return subprocess.run([sys.executable, str(COMPARE_PY), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


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
        "10.8258", "0", "6.8s", "145.19ms", "57/1390", "30M", "-", "-", "NVIDIA H100 80GB HBM3 x1", "2.11.0+cu130", "crashed"]


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

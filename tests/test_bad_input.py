"""Bad input, faults and misuse, by kind (issue 28): each is found before the first timed step, a finished run is never
lost by what fails after it, an OS or library limit is one `error:` line naming the file or value, and a setting
that would silently do something else is refused or warned about. Whole runs are train_gpt.main() in this process,
on one rank, with a tiny model."""
import contextlib
import dataclasses
import errno
import importlib.util
import json
import math
import resource
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import train_gpt
from tests.shards import synthetic_tokens, write_shard

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("compare", REPO / "records" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

# 128-token steps of a 6-layer, 32-wide model: a few steps take about a second.
TINY = dict(sequence_length=128, batch_size=128, val_tokens=128, num_layers=6, attention_free_layers="",
            model_dim=32, num_heads=2, num_kv_heads=2, mlp_dim=64, num_iterations=4, val_loss_every=0,
            timing_warmup_steps=1, run_id="tiny")


@pytest.fixture
def shards(tmp_path):
    directory = tmp_path / "shards"
    directory.mkdir()
    write_shard(directory / "train_000000.bin", synthetic_tokens(4000, seed=1))
    write_shard(directory / "val_000000.bin", synthetic_tokens(1000, seed=3))
    return directory


def tiny_args(shards: Path, **overrides) -> train_gpt.Hyperparameters:
    fields = dict(TINY, train_files=str(shards / "train_*.bin"), val_files=str(shards / "val_*.bin"))
    fields.update(overrides)
    return train_gpt.Hyperparameters(**fields)


@dataclasses.dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    log: str  # the run's log, "" if none was written

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture
def train(tmp_path, monkeypatch, capsys):
    """Runs train_gpt.main(argv) in this process as a one-rank group; returns an Outcome. A failed run leaves through
    abandon(), which here raises SystemExit instead of ending the process."""
    monkeypatch.chdir(tmp_path)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    def abandon(run, exit_status):
        if run.logfile is not None:
            with contextlib.suppress(OSError):
                run.logfile.close()
        raise SystemExit(exit_status)

    monkeypatch.setattr(train_gpt, "abandon", abandon)

    def run(shards: Path, **overrides) -> Outcome:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=str(port)).items():
            monkeypatch.setenv(name, value)
        values = dict(TINY, train_files=str(shards / "train_*.bin"), val_files=str(shards / "val_*.bin"))
        values.update(overrides)
        stderr = ""
        try:
            status = train_gpt.main([f"--{name}={value}" for name, value in values.items()])
        except SystemExit as error:
            status, stderr = (1, f"{error.code}\n") if isinstance(error.code, str) else (error.code, "")
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            for number, handler in handlers.items():
                signal.signal(number, handler)
        captured = capsys.readouterr()
        log_path = tmp_path / "logs" / f"{values['run_id']}.txt"
        return Outcome(status, captured.out, captured.err + stderr, log_path.read_text() if log_path.exists() else "")

    return run


def step_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("step:")]


def assert_one_error_line(outcome: Outcome, *fragments):
    assert outcome.status != 0
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr[-3000:]
    errors = outcome.errors()
    assert len(errors) == 1, outcome.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


# -----------------------------------------------------------------------------
# 1. Bad input is found before the run spends its time


@pytest.mark.parametrize("warmup", [0, 2])
def test_a_bad_token_in_a_later_shard_stops_the_run_before_its_first_timed_step(train, shards, warmup):
    tokens = synthetic_tokens(4000, seed=2)
    tokens[3210] = 50304
    write_shard(shards / "train_000001.bin", tokens)  # reached at step 32 of 40 (4000 tokens: 31 steps of 128)
    outcome = train(shards, num_iterations=40, timing_warmup_steps=warmup)
    assert_one_error_line(outcome, f"{shards / 'train_000001.bin'}: token id 50304 at position 3210")
    # Checked while the first step ran (it compiles on a GPU), or before it when every step is timed.
    stops = [line for line in outcome.log.splitlines() if line.startswith("stopping: ")]
    assert len(stops) == 1 and stops[0].endswith(f"(at step {min(warmup, 1)})"), stops
    assert all(line.startswith("step:1/40 ") and "train_time:0ms" in line for line in step_lines(outcome.log))
    assert compare.parse_log(Path("logs/tiny.txt")).status == "crashed"


def test_training_files_read_are_the_shards_the_steps_reach(shards):
    for index in (1, 2):
        write_shard(shards / f"train_00000{index}.bin", synthetic_tokens(4000, seed=index))
    files = sorted(str(path) for path in shards.glob("train_*.bin"))  # 31 steps of 128 tokens each
    assert train_gpt.training_files_read(files, 128, 0, 31) == files[:1]
    assert train_gpt.training_files_read(files, 128, 0, 32) == files[:2]
    assert train_gpt.training_files_read(files, 128, 31, 62) == files[1:2]  # resumed at step 31
    assert train_gpt.training_files_read(files, 128, 30, 93) == files


@pytest.mark.parametrize("layers,free,unused", [
    (6, "0,3", ["value_embeds.0.weight"]),  # value embedding 0 feeds layers 0 and 3
    (8, "2,7", ["value_embeds.2.weight"]),
    (6, "0,1,2,3,4,5", ["value_embeds.0.weight", "value_embeds.1.weight", "value_embeds.2.weight"]),
])
def test_settings_that_leave_a_parameter_unused_are_refused_naming_it(shards, layers, free, unused):
    args = tiny_args(shards, num_layers=layers, attention_free_layers=free)
    assert train_gpt.parameters_without_gradient(args) == unused
    with pytest.raises(train_gpt.InputError) as error:
        train_gpt.check_run_inputs(args, 1)
    assert f"attention_free_layers={free!r}" in str(error.value) and ", ".join(unused) in str(error.value)
    assert train_gpt.parameters_without_gradient(tiny_args(shards, num_layers=layers, attention_free_layers="1")) == []


def test_samples_longer_than_the_context_are_refused_before_training(shards):
    args = tiny_args(shards, sample_at_end=True, sample_prompts="Once upon a time", sample_tokens=125)
    with pytest.raises(train_gpt.InputError, match=r"'Once upon a time' is 4 tokens.*sample_tokens=125.*"
                                                   r"sequence_length=128"):
        train_gpt.check_run_inputs(args, 1)
    train_gpt.check_run_inputs(dataclasses.replace(args, sample_tokens=124), 1)  # 128 tokens: fits exactly


def test_checkpoints_the_disk_cannot_hold_are_refused_before_training(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(shards, save_checkpoint=True)
    checkpoint = train_gpt.model_state_bytes(args)[0]
    free = 3 * checkpoint  # periodic checkpoints: keep_checkpoints = 2, and one being written
    monkeypatch.setattr(train_gpt.shutil, "disk_usage", lambda path: type("Usage", (), dict(free=free))())
    train_gpt.check_run_outputs(args)
    train_gpt.check_run_outputs(dataclasses.replace(args, checkpoint_every=1, num_iterations=10))
    with pytest.raises(train_gpt.InputError, match=r"checkpoints need about .* \(4 of .* at once\).* keep_checkpoints"):
        train_gpt.check_run_outputs(dataclasses.replace(args, checkpoint_every=1, num_iterations=10,
                                                        keep_checkpoints=3))
    (tmp_path / "logs" / "tiny").mkdir()
    train_gpt.check_run_outputs(args)  # an empty folder of that name is fine
    with monkeypatch.context() as patch, pytest.raises(train_gpt.InputError,
                                                       match="logs/tiny: cannot write the run's checkpoints into it"):
        patch.setattr(train_gpt.os, "access", lambda path, mode: False)  # a read-only folder, to anyone but root
        train_gpt.check_run_outputs(args)
    (tmp_path / "logs" / "tiny").rmdir()
    (tmp_path / "logs" / "tiny").write_text("a file where the checkpoints would go")
    with pytest.raises(train_gpt.InputError, match="is a file, where the run's checkpoints would go"):
        train_gpt.check_run_outputs(args)


def test_checkpoint_size_estimate_is_the_saved_size(train, shards):
    outcome = train(shards, save_checkpoint=True, run_id="sized")
    assert outcome.status == 0, outcome.stderr[-3000:]
    saved = Path("logs/sized/step_000004.pt").stat().st_size
    estimate = train_gpt.model_state_bytes(tiny_args(shards))[0]
    assert 0.98 * saved < estimate <= saved  # the tensors; the file adds names and code


# -----------------------------------------------------------------------------
# 2. A finished run is never lost by what happens after it


def failing_save(failure: Exception):
    def save(state, f):
        f.write(b"half a checkpoint")
        raise failure
    return save


DISK_FULL = {"OSError": OSError(errno.ENOSPC, "No space left on device"),
             "torch's RuntimeError": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")}


@pytest.mark.parametrize("failure", DISK_FULL.values(), ids=DISK_FULL.keys())
def test_a_final_checkpoint_that_cannot_be_written_keeps_the_result(train, shards, monkeypatch, failure):
    monkeypatch.setattr(torch, "save", failing_save(failure))
    outcome = train(shards, save_checkpoint=True)
    assert outcome.status == 1 and "Traceback" not in outcome.stderr
    lines = outcome.stdout.splitlines()
    done = next(i for i, line in enumerate(lines) if line.startswith("done: val_loss"))
    assert lines[done + 1].startswith("warning: checkpoint of step 4 not written to logs/tiny/step_000004.pt: ")
    assert "partial file was removed" in lines[done + 1] and len(lines) == done + 2
    assert list(Path("logs/tiny").iterdir()) == []
    summary = compare.parse_log(Path("logs/tiny.txt"))
    assert summary.status == "done" and summary.final_val_loss is not None


@pytest.mark.parametrize("stops", [False, True])
def test_a_periodic_checkpoint_that_fails_ends_the_run_only_when_asked(train, shards, monkeypatch, stops):
    monkeypatch.setattr(torch, "save", failing_save(OSError(errno.ENOSPC, "No space left on device")))
    outcome = train(shards, checkpoint_every=2, checkpoint_failure_stops=stops)
    assert "warning: checkpoint of step 2 not written" in outcome.log and "Traceback" not in outcome.stderr
    if stops:
        assert outcome.status == 1
        assert "stopping: the checkpoint of step 2 could not be written (checkpoint_failure_stops=true)" in outcome.log
        assert compare.parse_log(Path("logs/tiny.txt")).status == "crashed"
    else:
        assert outcome.status == 0 and "done: val_loss" in outcome.stdout
        assert compare.parse_log(Path("logs/tiny.txt")).status == "done"


def test_a_failure_after_the_result_is_logged_does_not_make_the_run_crashed(train, shards, monkeypatch):
    def broken_samples(*args):
        raise RuntimeError("the sampler broke")

    monkeypatch.setattr(train_gpt, "log_samples", broken_samples)
    outcome = train(shards, sample_at_end=True)
    assert outcome.status == 1 and "done: val_loss" in outcome.stdout
    assert "warning: after the run finished: RuntimeError: the sampler broke" in outcome.log
    assert compare.parse_log(Path("logs/tiny.txt")).status == "done"


def test_a_peer_lost_after_the_result_is_logged_does_not_make_the_run_crashed(train, shards, monkeypatch):
    def barrier_of_a_dead_peer(*args, **kwargs):
        raise dist.DistError("a peer closed the connection")

    monkeypatch.setattr(train_gpt.dist, "barrier", barrier_of_a_dead_peer)  # teardown's, after done:
    outcome = train(shards)
    assert outcome.status == 1 and "done: val_loss" in outcome.stdout and "Traceback" not in outcome.stderr
    assert "warning: after the run finished: DistError: a peer closed the connection" in outcome.log
    assert compare.parse_log(Path("logs/tiny.txt")).status == "done"


# -----------------------------------------------------------------------------
# 3. An OS or library limit is one error line naming the file or the value


def test_an_unreadable_shard_is_one_error_line_naming_it(train, shards, monkeypatch):
    unreadable = shards / "train_000001.bin"
    write_shard(unreadable, synthetic_tokens(4000, seed=2))

    def open_(path, *args, **kwargs):  # as chmod 000 does for anyone but root
        if str(path) == str(unreadable):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(train_gpt, "open", open_, raising=False)
    assert_one_error_line(train(shards), f"{unreadable}: cannot read it: Permission denied")


def test_a_run_id_too_long_for_the_file_system_is_refused(tmp_path, monkeypatch, shards):
    monkeypatch.chdir(tmp_path)
    longest = 255 - len(".txt")  # NAME_MAX of the usual file systems
    train_gpt.check_run_outputs(tiny_args(shards, run_id="r" * longest))
    with pytest.raises(train_gpt.InputError, match=f"is {longest + 1} characters.*allow {longest}"):
        train_gpt.check_run_outputs(tiny_args(shards, run_id="r" * (longest + 1)))
    with pytest.raises(train_gpt.InputError, match="--resume='rrrr.*File name too long"):
        train_gpt.check_run_inputs(tiny_args(shards, resume="r" * 300), 1)


@pytest.mark.parametrize("name,value,limit", [
    ("seed", 2**64, 2**63 - 1),
    ("num_iterations", 10**30, 2**63 - 1),
    ("collective_timeout_s", 10**10, 10**9),
    ("window_end_tokens", 2**40, 2**31 - 1),
])
def test_integers_too_large_for_the_libraries_are_refused_naming_the_field(shards, name, value, limit):
    with pytest.raises(train_gpt.InputError, match=rf"^{name}={value}: too large, at most {limit} "):
        train_gpt.check_hyperparameters(tiny_args(shards, **{name: value}), 1)
    train_gpt.check_hyperparameters(tiny_args(shards, **{name: limit} if name != "window_end_tokens"
                                              else {name: limit, "window_start_tokens": 128}), 1)


@pytest.mark.parametrize("sizes,fragment", [
    (dict(model_dim=2**20, mlp_dim=2**20, num_heads=2**10, num_kv_heads=2**10), "GiB, more than the"),
    (dict(model_dim=2**62, num_heads=2**60, num_kv_heads=2**60), "no such model can be built"),
])
def test_a_model_too_large_for_the_memory_is_refused_before_it_is_built(shards, sizes, fragment):
    with pytest.raises(train_gpt.InputError, match=fragment):
        train_gpt.check_model_fits(tiny_args(shards, **sizes), torch.device("cpu"))
    train_gpt.check_model_fits(tiny_args(shards), torch.device("cpu"))


@pytest.mark.parametrize("phase", ["setup", "training"])
def test_a_file_size_limit_hit_while_logging_is_one_error_line(train, shards, phase):
    args = tiny_args(shards)
    setup_bytes = len("\n".join([Path(train_gpt.__file__).read_text(), "=" * 100,
                                 train_gpt.environment_report(torch.device("cpu"), 1),
                                 "hyperparameters: " + json.dumps(dataclasses.asdict(args)), ""]).encode())
    limit = setup_bytes - 10 if phase == "setup" else setup_bytes + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        outcome = train(shards)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert_one_error_line(outcome, "logs/tiny.txt: cannot write the log: File too large", "ulimit -f")


def test_a_log_created_by_another_run_at_the_same_moment_is_refused(train, shards, monkeypatch):
    checked = train_gpt.check_run_outputs

    def check_then_another_run_starts(args):
        checked(args)
        Path("logs/tiny.txt").write_text("the other run's log")

    monkeypatch.setattr(train_gpt, "check_run_outputs", check_then_another_run_starts)
    outcome = train(shards)
    assert_one_error_line(outcome, "logs/tiny.txt was created by another run a moment ago")
    assert Path("logs/tiny.txt").read_text() == "the other run's log"


def test_a_console_that_is_gone_does_not_stop_the_run(train, shards, monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    outcome = train(shards)
    assert outcome.status == 0 and "done: val_loss" in outcome.log


# -----------------------------------------------------------------------------
# 4. Settings that would silently do something else: refused, or warned about


@pytest.mark.parametrize("link", ["same file", "hard link", "symbolic link"])
def test_training_files_that_include_a_validation_shard_are_refused(shards, link):
    val = shards / "val_000000.bin"
    train_files = str(shards / "*.bin")
    if link != "same file":
        (shards / "more").mkdir()
        copy = shards / "more" / "train_000001.bin"
        copy.hardlink_to(val) if link == "hard link" else copy.symlink_to(val)
        train_files = str(shards / "more" / "train_*.bin")
    with pytest.raises(train_gpt.InputError, match="matches both train_files=.* and val_files=.*first rule"):
        train_gpt.check_run_inputs(tiny_args(shards, train_files=train_files, num_iterations=1), 1)


def test_a_shrinking_window_is_refused(shards):
    with pytest.raises(train_gpt.InputError, match="window_end_tokens=256 is below window_start_tokens=512"):
        train_gpt.check_hyperparameters(tiny_args(shards, window_start_tokens=512, window_end_tokens=256), 1)
    train_gpt.check_hyperparameters(tiny_args(shards, window_start_tokens=256, window_end_tokens=256), 1)


@pytest.mark.parametrize("overrides,first_step,fragment", [
    (dict(timing_warmup_steps=4), 0, "timing_warmup_steps=4 covers all 4 step(s)"),
    (dict(timing_warmup_steps=2, num_iterations=10), 8, "timing_warmup_steps=2 covers all 2 step(s)"),  # resumed
    (dict(checkpoint_every=4), 0, "checkpoint_every=4 is not below num_iterations=4"),
    (dict(muon_lr=0.0, embed_lr=0.0, head_lr=0.0, scalar_lr=0.0), 0, "every learning rate is 0"),
    (dict(muon_momentum_start=0.99), 0, "muon_momentum_start=0.99 is above muon_momentum=0.95"),
    (dict(val_loss_every=5), 0, "val_loss_every=5 is beyond num_iterations=4"),
    (dict(sample_tokens=100), 0, "sample_tokens=100 has no effect without sample_at_end=true"),
    (dict(sample_prompts="Hello"), 0, "sample_prompts='Hello' has no effect without sample_at_end=true"),
    (dict(keep_checkpoints=5, save_checkpoint=True), 0, "keep_checkpoints=5 has no effect without checkpoint_every"),
    (dict(checkpoint_failure_stops=True), 0, "checkpoint_failure_stops=True has no effect without checkpoint_every"),
    (dict(force_resume=True), 0, "force_resume=True has no effect without resume"),
])
def test_settings_that_may_not_be_meant_are_warned_about(shards, overrides, first_step, fragment):
    assert [fragment in line for line in train_gpt.setting_warnings(tiny_args(shards, **overrides), first_step)] == [True]
    assert train_gpt.setting_warnings(tiny_args(shards), 0) == []


def test_a_warning_goes_to_the_console_and_the_log_once(train, shards):
    outcome = train(shards, timing_warmup_steps=10)
    warning = "warning: timing_warmup_steps=10 covers all 4 step(s) this run trains"
    assert outcome.status == 0 and outcome.stdout.count(warning) == 1 and outcome.log.count(warning) == 1


@pytest.mark.parametrize("overrides", [dict(head_lr=1e6), dict(muon_lr=0.0, embed_lr=0.0, head_lr=0.0, scalar_lr=0.0)],
                         ids=["diverged", "all learning rates 0"])
def test_a_run_that_did_not_learn_ends_with_an_error(train, shards, overrides):
    outcome = train(shards, val_loss_every=2, **overrides)
    assert outcome.status == 1 and "done:" not in outcome.stdout
    assert "warning: val loss" in outcome.stdout and "at step 2 is no better than the untrained" in outcome.log
    final = [float(line.split("val_loss:")[1].split()[0]) for line in step_lines(outcome.log) if "val_loss" in line][-1]
    assert final > math.log(50304) - train_gpt.NOT_LEARNED_MARGIN
    assert "stopping: the model did not learn" in outcome.log and "ln(vocab_size) = 10.8258" in outcome.stdout
    assert compare.parse_log(Path("logs/tiny.txt")).status == "crashed"

"""Runs that survive on their own: a torchrun --max-restarts group whose rank is killed continues from its newest
checkpoint (--resume=auto) to the uninterrupted run's losses; a stop that lands in the last steps finishes the run;
SIGHUP (a closed terminal) stops with a line and a checkpoint."""
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import train_gpt
from tests.test_train_run import compare, environment, logged_losses, run, wait_for_line
from tests.tiny_runs import ITERATIONS, TRAIN_GPT, tiny_arguments, train_gpt_command, worker_pids


@pytest.fixture(scope="module")
def healed_run(tmp_path_factory, tiny_shards):
    """Rank 1 is killed right after the checkpoint of step 4; torchrun restarts both ranks once, with no command
    typed in between. Returns the working directory and the finished process."""
    cwd = tmp_path_factory.mktemp("healed")
    arguments = tiny_arguments(tiny_shards, run_id="heal", resume="auto", checkpoint_every="2")
    command = train_gpt_command("--standalone", "--nproc_per_node=2", "--max-restarts=1", arguments=arguments)
    process = subprocess.Popen(command, cwd=cwd, env=dict(environment(), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_line(cwd / "logs" / "heal.txt", r"^checkpoint: step 4 ", process)
    os.kill(worker_pids(process.pid)[1], signal.SIGKILL)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the restarted run did not finish in 120 s: {process.stdout.read()[-3000:]}")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return cwd, arguments


def test_a_killed_rank_is_restarted_from_the_newest_checkpoint_and_ends_like_the_uninterrupted_run(
        healed_run, reference_log):
    cwd, _ = healed_run
    logs = cwd / "logs"
    assert sorted(p.name for p in logs.glob("*.txt")) == ["heal.resume1.txt", "heal.txt"]  # a log per attempt
    first, second = (logs / "heal.txt").read_text(), (logs / "heal.resume1.txt").read_text()
    assert "\nresume=auto: no complete checkpoint in logs/heal/; training starts at step 0\n" in first
    assert not re.search("^done:", first, re.MULTILINE)
    resumed = re.findall(r"^resumed: run heal at step (\d+) from logs/heal/step_0000(\d\d).pt", second, re.MULTILINE)
    assert len(resumed) == 1 and resumed[0][0] == str(int(resumed[0][1])), second[-2000:]
    step = int(resumed[0][0])
    assert 4 <= step < ITERATIONS
    reference = logged_losses(reference_log)
    before, after = logged_losses(logs / "heal.txt"), logged_losses(logs / "heal.resume1.txt")
    assert sorted(after) == ([("train_loss", s) for s in range(step + 1, ITERATIONS + 1)]
                             + [("val_loss", s) for s in (4, 8) if s >= step])
    for key, value in {**before, **after}.items():
        assert value == reference[key], key
    assert re.search(rf"^done: val_loss {reference[('val_loss', 8)]} at step 8", second, re.MULTILINE)
    assert not list((logs / "heal").glob(".*"))  # no partial file left behind

    # compare.py joins the two logs into one run, as it joins any resumed run.
    summaries = [(path.stem, compare.parse_log(path)) for path in (logs / "heal.txt", logs / "heal.resume1.txt")]
    compare.link_resumed_runs(summaries)
    (_, earlier), (_, later) = summaries
    assert earlier.continued_by == "heal.resume1" and later.previous is earlier
    assert later.status == "done" and compare.status_text(later) == f"done (resumed heal@{step})"
    curve = compare.stitched_val_curve(later)
    assert curve[0][0] == 0 and curve[-1][0] == 8 and curve[-1][2] == float(reference[("val_loss", 8)])


def test_the_same_command_after_the_run_finished_trains_nothing(healed_run):
    cwd, arguments = healed_run
    before = sorted(p.name for p in (cwd / "logs").rglob("*"))
    result = run([sys.executable, str(TRAIN_GPT), *arguments], cwd, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ("resume=auto: run heal has finished (logs/heal.resume1.txt has its done: line); nothing "
                             "to train, no new log\n")
    assert sorted(p.name for p in (cwd / "logs").rglob("*")) == before


def test_auto_resume_skips_what_a_crash_left_and_knows_a_finished_run(healed_run, tmp_path, monkeypatch):
    cwd, _ = healed_run
    monkeypatch.chdir(tmp_path)
    shutil.copytree(cwd / "logs" / "heal", "logs/heal")
    shutil.copy(cwd / "logs" / "heal.txt", "logs/heal.txt")  # the first attempt only: it died before done:
    newest = sorted(Path("logs/heal").glob("step_*.pt"))[-1]
    Path("logs/heal/.step_000008.pt.partial").write_bytes(newest.read_bytes()[:1000])  # a save cut by a kill
    Path("logs/heal/step_000007.pt").write_bytes(newest.read_bytes()[:5000])  # truncated by a failing copy
    log_name, checkpoint, notes, finished = train_gpt.auto_resume("heal", ITERATIONS)
    assert (log_name, checkpoint, finished) == ("heal.resume1.txt", str(newest), "")
    assert notes[0] == "resume=auto: removed logs/heal/.step_000008.pt.partial, left by an interrupted save"
    assert "skipping logs/heal/step_000007.pt: not a complete checkpoint" in notes[1] and len(notes) == 2
    assert not Path("logs/heal/.step_000008.pt.partial").exists()
    # A checkpoint of the last step means the run has nothing left to train, even without a done: line.
    train_gpt.torch.save(dict(train_gpt.load_checkpoint(newest), step=ITERATIONS), "logs/heal/step_000008.pt")
    assert train_gpt.auto_resume("heal", ITERATIONS)[3] == "logs/heal/step_000008.pt holds its last step, 8"


@pytest.mark.parametrize("overrides, fragment", [
    (dict(resume="auto", checkpoint_every="2"), "resume=auto needs a fixed --run_id"),
    (dict(resume="auto", run_id="x"), "resume=auto with checkpoint_every=0"),
])
def test_auto_resume_without_what_it_needs_is_refused(overrides, fragment):
    args = train_gpt.parse_hyperparameters([f"--{name}={value}" for name, value in overrides.items()])
    with pytest.raises(train_gpt.InputError, match=re.escape(fragment)):
        train_gpt.check_hyperparameters(args, world_size=1)


def test_restarts_with_torchruns_shared_store_are_refused(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    train_gpt.check_restarts()  # one group only: nothing can read a replaced group's keys
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    with pytest.raises(train_gpt.InputError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun"):
        train_gpt.check_restarts()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    train_gpt.check_restarts()


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """train_gpt.main in this process as a one-rank run in tmp_path; the signal handlers it installs are undone."""
    monkeypatch.chdir(tmp_path)
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(name, value)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def main(argv: list[str]) -> int:
        monkeypatch.setenv("MASTER_PORT", str(train_gpt.free_port()))
        try:
            return train_gpt.main(argv)
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
    return main


# A SIGTERM that arrives when the run has trained through step k: the next step carries the vote, and the ranks
# learn it one step later. With k = 2 or 3 of 4 the vote arrives when every step is trained.
@pytest.mark.parametrize("signal_after_step", [1, 2, 3])
def test_a_stop_in_the_last_steps_finishes_the_run_and_an_earlier_one_is_resumable(
        in_process, tiny_shards, monkeypatch, signal_after_step, tmp_path):
    train_step = train_gpt.train_step

    def step_then_signal(run, tr, stop_requested):
        train_step(run, tr, stop_requested)
        if tr.step == signal_after_step:
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(train_gpt, "train_step", step_then_signal)
    arguments = tiny_arguments(tiny_shards, run_id="late", resume="auto", checkpoint_every="100", batch_size="128",
                               val_tokens="128", val_loss_every="0", num_iterations="4")
    exit_status = in_process(arguments)
    log = Path("logs/late.txt").read_text()
    if signal_after_step < 2:  # steps were left: stopped, with a checkpoint that resumes
        stopped_at = signal_after_step + 2
        assert exit_status == 128 + signal.SIGTERM
        assert re.search(rf"^stopping: received SIGTERM at step {stopped_at}; resume with the same command "
                         r"\(--resume=auto\); log: logs/late.txt$", log, re.MULTILINE)
        monkeypatch.setattr(train_gpt, "train_step", train_step)
        assert in_process(arguments) == 0
        log = Path("logs/late.resume1.txt").read_text()
        assert f"resumed: run late at step {stopped_at} from logs/late/step_00000{stopped_at}.pt" in log
    else:
        assert exit_status == 0
        assert not re.search("^stopping:", log, re.MULTILINE)
        assert "\nreceived SIGTERM after the last step: the run finishes\n" in log
    assert re.search(r"^step:4/4 val_loss:", log, re.MULTILINE), log[-1500:]
    assert re.search(r"^done: val_loss \S+ at step 4", log, re.MULTILINE)


def test_a_closed_terminal_stops_the_run_with_a_line_and_a_checkpoint(tmp_path, tiny_shards):
    """The terminal the run was started from closes: SIGHUP, and a console that is gone. (Under torchrun the
    workers get the SIGHUP from torchrun, which passes it on.)"""
    controller, terminal = pty.openpty()

    def take_the_terminal():  # the new session's controlling terminal, as a login shell's
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    command = [sys.executable, str(TRAIN_GPT), *tiny_arguments(tiny_shards, run_id="hangup", checkpoint_every="100",
                                                                num_iterations="30", val_loss_every="0")]
    process = subprocess.Popen(command, cwd=tmp_path, env=environment(), stdin=terminal, stdout=terminal,
                               stderr=terminal, start_new_session=True, preexec_fn=take_the_terminal)
    os.close(terminal)
    log_path, deadline = tmp_path / "logs" / "hangup.txt", time.monotonic() + 120
    try:
        while not (log_path.exists() and re.search(r"^step:2/30 train_loss", log_path.read_text(), re.MULTILINE)):
            assert time.monotonic() < deadline and process.poll() is None, "the run did not reach step 2"
            if select.select([controller], [], [], 0.2)[0]:
                os.read(controller, 65536)  # the console, read so that it never fills
        os.close(controller)  # the terminal hangs up
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    log = log_path.read_text()
    stops = re.findall(r"^stopping: received SIGHUP at step (\d+); resume with --resume=(\S+); log: "
                       r"logs/hangup.txt$", log, re.MULTILINE)
    assert len(stops) == 1, log[-2000:]
    step, checkpoint = int(stops[0][0]), tmp_path / stops[0][1]
    assert 2 <= step < 30 and train_gpt.load_checkpoint(checkpoint)["step"] == step
    assert compare.parse_log(log_path).status == "stopped"

"""Tests of data/cached_fineweb10B.py against a local fake hub (no network)."""
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from data.cached_fineweb10B import download, main, shard_names
from data.tokenizer import EOT, read_shard, write_shard

NAMES = shard_names(3)


class FakeHub:
    """fetch(filename, dest_dir) that copies from a local folder and records the calls."""

    def __init__(self, folder, fail_on=(), corrupt=()):
        self.folder, self.fail_on, self.corrupt = folder, set(fail_on), set(corrupt)
        self.calls = []

    def __call__(self, filename, dest_dir):
        self.calls.append(filename)
        if filename in self.fail_on:
            raise OSError("connection reset by peer")
        dest = os.path.join(dest_dir, filename)
        shutil.copy(os.path.join(self.folder, filename), dest)
        if filename in self.corrupt:  # a download cut short
            with open(dest, "r+b") as f:
                f.truncate(os.path.getsize(dest) - 10)
        return dest


@pytest.fixture
def hub_dir(tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir()
    for i, name in enumerate(NAMES):
        write_shard(folder / name, np.array([EOT] + [i + 1] * (100 + i), dtype=np.uint16))
    return folder


def assert_same_shard(path_a, path_b):
    assert read_shard(path_a).tolist() == read_shard(path_b).tolist()


def test_shard_names():
    assert shard_names(9)[0] == "fineweb_val_000000.bin"
    assert shard_names(9)[1:] == [f"fineweb_train_{i:06d}.bin" for i in range(1, 10)]


def test_download_fetches_everything_then_nothing(tmp_path, hub_dir):
    out = tmp_path / "out"
    hub = FakeHub(hub_dir)
    download(NAMES, out, fetch=hub)
    assert hub.calls == NAMES
    assert sorted(os.listdir(out)) == sorted(NAMES)  # no staging folder left behind
    for name in NAMES:
        assert_same_shard(out / name, hub_dir / name)
    again = FakeHub(hub_dir)
    download(NAMES, out, fetch=again)
    assert again.calls == []  # complete shards are not fetched again


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_existing_shard_is_fetched_again(tmp_path, hub_dir, damage):
    out = tmp_path / "out"
    download(NAMES, out, fetch=FakeHub(hub_dir))
    broken = out / NAMES[1]
    if damage == "truncate":
        with open(broken, "r+b") as f:
            f.truncate(500)
    else:
        broken.write_bytes(b"<html>rate limited</html>" * 50)
    hub = FakeHub(hub_dir)
    download(NAMES, out, fetch=hub)
    assert hub.calls == [NAMES[1]]
    assert_same_shard(broken, hub_dir / NAMES[1])


def test_failed_fetch_keeps_completed_shards_and_leaves_no_partial_file(tmp_path, hub_dir):
    out = tmp_path / "out"
    hub = FakeHub(hub_dir, fail_on={NAMES[2]})
    with pytest.raises(RuntimeError, match=f"could not download {NAMES[2]}: connection reset"):
        download(NAMES, out, fetch=hub)
    assert hub.calls == NAMES[:3]  # stops at the first failure
    assert sorted(os.listdir(out)) == sorted(NAMES[:2])
    for name in NAMES[:2]:
        assert_same_shard(out / name, hub_dir / name)


def test_corrupt_download_is_not_moved_into_place(tmp_path, hub_dir):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="truncated"):
        download(NAMES, out, fetch=FakeHub(hub_dir, corrupt={NAMES[0]}))
    assert os.listdir(out) == []


def test_main_failure_says_what_to_do(tmp_path, hub_dir, capsys):
    out = tmp_path / "out"
    status = main(["2", "--output_dir", str(out)], fetch=FakeHub(hub_dir, fail_on={NAMES[1]}))
    assert status == 1
    message = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert message.startswith("error: ")
    assert NAMES[1] in message and "HF_TOKEN" in message and "rerun" in message
    assert os.listdir(out) == [NAMES[0]]
    assert main(["2", "--output_dir", str(out)], fetch=FakeHub(hub_dir)) == 0
    assert sorted(os.listdir(out)) == sorted(NAMES[:3])


@pytest.mark.parametrize("args, fragment", [
    (["104"], "has 103 train shards; asked for 104"),
    (["-1"], "asked for -1"),
    (["nine"], "invalid int value: 'nine'"),
    (["1", "--output_dir", "{file}"], "is a file"),
])
def test_main_command_line_errors_are_one_line(tmp_path, hub_dir, capsys, args, fragment):
    (tmp_path / "a_file").write_bytes(b"")
    hub = FakeHub(hub_dir)
    with pytest.raises(SystemExit) as error:
        main([arg.format(file=tmp_path / "a_file") for arg in args], fetch=hub)
    assert error.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and message.count("\n") == 1 and fragment in message
    assert hub.calls == []


@pytest.mark.parametrize("failure", [
    {"fail_on": {NAMES[1]}},  # the network
    {"corrupt": {NAMES[1]}},  # a download cut short
])
def test_a_corrupt_shard_stays_until_its_replacement_has_arrived(tmp_path, hub_dir, failure):
    out = tmp_path / "out"
    download(NAMES, out, fetch=FakeHub(hub_dir))
    broken = out / NAMES[1]
    broken.write_bytes(broken.read_bytes()[:-2])  # the user's copy, damaged
    damaged = broken.read_bytes()
    with pytest.raises(RuntimeError, match=f"could not download {NAMES[1]}"):
        download(NAMES, out, fetch=FakeHub(hub_dir, **failure))
    assert broken.read_bytes() == damaged and sorted(os.listdir(out)) == sorted(NAMES)
    download(NAMES, out, fetch=FakeHub(hub_dir))
    assert_same_shard(broken, hub_dir / NAMES[1])


def test_ctrl_c_during_a_download_keeps_the_old_file_and_the_rerun_completes(tmp_path, hub_dir, capsys):
    out = tmp_path / "out"
    download(NAMES, out, fetch=FakeHub(hub_dir))
    (out / NAMES[2]).write_bytes(b"<html>rate limited</html>")
    killed_run_staging = out / ".download-abc123"  # what a killed run leaves
    killed_run_staging.mkdir()
    (killed_run_staging / NAMES[3]).write_bytes(b"half")

    def interrupted(filename, dest_dir):
        (Path(dest_dir) / filename).write_bytes(b"the first bytes")
        raise KeyboardInterrupt
    assert main(["3", "--output_dir", str(out)], fetch=interrupted) == 130
    assert "interrupted: shards complete in" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == sorted(NAMES)  # the stale staging folder is gone, and ours
    assert (out / NAMES[2]).read_bytes() == b"<html>rate limited</html>"
    assert main(["3", "--output_dir", str(out)], fetch=FakeHub(hub_dir)) == 0
    assert_same_shard(out / NAMES[2], hub_dir / NAMES[2])


def test_a_full_disk_keeps_the_old_file_and_says_so(tmp_path, hub_dir, capsys):
    out = tmp_path / "out"
    download(NAMES, out, fetch=FakeHub(hub_dir))
    (out / NAMES[1]).write_bytes(b"corrupt")

    def disk_full(filename, dest_dir):
        (Path(dest_dir) / filename).write_bytes(b"the first bytes")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert main(["3", "--output_dir", str(out)], fetch=disk_full) == 2
    message = capsys.readouterr().err.splitlines()[-1]
    assert message.startswith("error: cannot write to --output_dir=") and "No space left on device" in message
    assert "free some space" in message and "network" not in message
    assert sorted(os.listdir(out)) == sorted(NAMES) and (out / NAMES[1]).read_bytes() == b"corrupt"

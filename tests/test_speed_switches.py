"""CPU tests of the same-math speed switches merged_qkv and batched_muon (DESIGN.md 4 and 7): the merged model
equals the unmerged one in weights, forward, gradients and a whole optimizer step; training and resuming with the
switches flipped, on 1 and 2 ranks, continues the same run. (Muon's variants on 1, 2 and 4 ranks are tested in
test_train_gpt.py, beside the loop's own test.)"""
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import train_gpt
from tests.shards import synthetic_tokens, write_shard

REPO = Path(__file__).resolve().parent.parent
SWITCHES_ON = dict(merged_qkv="true", batched_muon="true")
SWITCHES_OFF = dict(merged_qkv="false", batched_muon="false")

# -----------------------------------------------------------------------------
# merged_qkv against the unmerged model, term by term

# kv heads 1 of 2: k and v have half q's rows, so the row blocks differ in shape.
TINY = dict(num_layers=6, model_dim=64, num_heads=2, num_kv_heads=1, mlp_dim=128, sequence_length=256,
            attention_free_layers="3")


@pytest.fixture
def single_rank_group(tmp_path):
    """A one-rank gloo group in this process, for Muon's all_gather."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def seeded_model(merged_qkv: bool):
    torch.manual_seed(0)
    model = train_gpt.build_model(train_gpt.Hyperparameters(**TINY, merged_qkv=merged_qkv), torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the zero-initialized head and projections would hide the attention
        for name, param in sorted(train_gpt.checkpoint_layout(model, dict(model.named_parameters())).items()):
            if name == "lm_head.weight" or name.endswith("proj.weight"):
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def tokens(length=256):
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randint(0, 2000, (length + 1,), generator=generator)
    inputs[::97] = train_gpt.EOT_TOKEN
    return inputs[:-1].int(), inputs[1:].long()


def by_checkpoint_name(model, tensors_by_param: dict) -> dict:
    return train_gpt.checkpoint_layout(model, {name: tensors_by_param[param] for name, param in model.named_parameters()})


def test_merged_qkv_has_the_unmerged_weights_and_one_stacked_matrix_per_attention():
    plain, merged = seeded_model(False), seeded_model(True)
    assert all(isinstance(block.attn, train_gpt.MergedQKVAttention) for i, block in enumerate(merged.blocks) if i != 3)
    assert merged.blocks[0].attn.qkv.weight.shape == (64 + 32 + 32, 64)
    assert not any(name.endswith((".q.weight", ".k.weight", ".v.weight")) for name, _ in merged.named_parameters())
    expected, stored = plain.state_dict(), train_gpt.checkpoint_layout(merged, merged.state_dict())
    assert list(stored) != list(merged.state_dict()) and sorted(stored) == sorted(expected)
    assert all(torch.equal(stored[name], expected[name]) for name in expected)
    round_trip = train_gpt.model_layout(merged, stored)
    assert all(torch.equal(round_trip[name], value) for name, value in merged.state_dict().items())


def test_merged_qkv_forward_and_gradients_equal_the_unmerged_models():
    results = {}
    for merged_qkv in (False, True):
        model = seeded_model(merged_qkv)
        inputs, targets = tokens()
        loss = model(inputs, targets, torch.tensor(1, dtype=torch.int32))
        loss.backward()
        results[merged_qkv] = loss.item(), by_checkpoint_name(model, {p: p.grad for p in model.parameters()})
    (plain_loss, plain_grads), (loss, grads) = results[False], results[True]
    assert loss == pytest.approx(plain_loss, rel=1e-6)  # measured: equal
    assert sorted(grads) == sorted(plain_grads)
    for name, grad in plain_grads.items():
        # Measured: fp32 gradients within 3e-6 of their largest entry; the bf16 embeddings' within 2.2e-4,
        # under one bf16 rounding step (2^-8) of it.
        tolerance = 1e-5 if grad.dtype == torch.float32 else 2 ** -8
        assert (grads[name] - grad).abs().max() <= tolerance * grad.abs().max(), name
    assert plain_grads["blocks.0.attn.k.weight"].abs().max() > 0


@pytest.mark.parametrize("merged_qkv,batched_muon", [(True, False), (False, True), (True, True)])
def test_one_optimizer_step_with_the_switches_equals_the_plain_step(single_rank_group, merged_qkv, batched_muon):
    """The same gradients (the plain model's, stacked where merged): Muon must orthogonalize q, k and v apart,
    each with its own shape scale, to move them as the plain Muon does. (From each model's own gradients the
    steps differ more: Newton-Schulz amplifies their fp32 rounding differences along small singular values.)"""
    initial, weights = seeded_model(False).state_dict(), {}
    gradient_generator = torch.Generator().manual_seed(3)
    gradients = {name: torch.randn(value.shape, generator=gradient_generator).to(value.dtype)
                 for name, value in initial.items()}
    for switches in ((False, False), (merged_qkv, batched_muon)):
        model = seeded_model(switches[0])
        args = train_gpt.Hyperparameters(**TINY, merged_qkv=switches[0], batched_muon=switches[1])
        adam, muon = train_gpt.build_optimizers(model, args, rank=0, world_size=1)
        assert isinstance(muon, train_gpt.BatchedMuon) == switches[1]
        model_gradients = train_gpt.model_layout(model, gradients)
        for name, param in model.named_parameters():
            param.grad = model_gradients[name].clone()
        adam.step()
        muon.step()
        weights[switches] = train_gpt.checkpoint_layout(model, model.state_dict())
    plain, switched = weights[False, False], weights[merged_qkv, batched_muon]
    for name, weight in plain.items():
        update, difference = weight - initial[name], switched[name] - weight
        assert difference.norm() <= 1e-3 * update.norm(), name  # measured: equal
    for part in "qkv":  # the step moved them: the comparison above is not of unchanged weights
        name = f"blocks.0.attn.{part}.weight"
        assert (plain[name] - initial[name]).norm() > 0.01 * initial[name].norm()


# -----------------------------------------------------------------------------
# Training and resuming with the switches flipped, on 1 and 2 ranks

# Two 128-token micro-batches per step on one rank, one per rank on two; checkpoints at steps 3 and 6.
RUN = dict(TINY, sequence_length="128", batch_size="256", val_tokens="256", num_iterations="6",
           val_loss_every="3", checkpoint_every="3", keep_checkpoints="2")
STEP_LOSS = re.compile(r"^step:(\d+)/\d+ (train_loss|val_loss):(\S+) ", re.MULTILINE)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shards")
    write_shard(directory / "train_000000.bin", synthetic_tokens(12000, seed=1))
    write_shard(directory / "val_000000.bin", synthetic_tokens(2000, seed=3))
    return directory


def overrides(data_dir: Path, **values) -> list[str]:
    values = dict(RUN, train_files=str(data_dir / "train_*.bin"), val_files=str(data_dir / "val_*.bin"), **values)
    return [f"--{name}={value}" for name, value in values.items()]


def losses(log: Path) -> dict:
    return {(kind, int(step)): float(value) for step, kind, value in STEP_LOSS.findall(log.read_text())}


@contextlib.contextmanager
def one_rank_process(cwd: Path):
    """This process as rank 0 of 1 in cwd, as a plain `python train_gpt.py` is; leaves the environment, the
    working directory and the signal handlers as they were, and no process group behind."""
    environment = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(train_gpt.free_port()))
    saved_environment, saved_directory = {name: os.environ.get(name) for name in environment}, os.getcwd()
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    os.environ.update(environment)
    os.chdir(cwd)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.chdir(saved_directory)
        for name, value in saved_environment.items():
            os.environ.pop(name) if value is None else os.environ.update({name: value})
        for number, handler in handlers.items():
            signal.signal(number, handler)


def train_in_process(cwd: Path, argv: list[str]) -> dict:
    """One rank of train_gpt.py in this process, as main() runs it (without its signal handlers and exits);
    returns the final weights as checkpoints hold them."""
    with one_rank_process(cwd):
        run = train_gpt.setup(train_gpt.parse_hyperparameters(argv))
        tr = train_gpt.build_training(run)
        signals = train_gpt.StopSignals(run)
        train_gpt.train(run, tr, signals)
        assert train_gpt.finish(run, tr, signals) == 0
        train_gpt.teardown(run)
        return train_gpt.checkpoint_layout(tr.model, tr.model.state_dict())


def relative_difference(weights: dict, reference: dict) -> float:
    """|weights - reference| / |reference| over all weights together (Frobenius)."""
    difference = sum((weights[name].float() - value.float()).square().sum() for name, value in reference.items())
    return (difference / sum(value.float().square().sum() for value in reference.values())).sqrt().item()


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, data_dir):
    """One rank, switches off: the run every other is compared with."""
    cwd = tmp_path_factory.mktemp("plain")
    weights = train_in_process(cwd, overrides(data_dir, run_id="plain", **SWITCHES_OFF))
    return cwd, losses(cwd / "logs" / "plain.txt"), weights


def test_a_plain_checkpoint_resumed_with_the_switches_on_continues_the_same_run(plain_run, data_dir, tmp_path):
    cwd, plain_losses, plain_weights = plain_run
    checkpoint = cwd / "logs" / "plain" / "step_000003.pt"
    weights = train_in_process(tmp_path, overrides(data_dir, run_id="on", resume=str(checkpoint), **SWITCHES_ON))
    resumed = losses(tmp_path / "logs" / "on.txt")
    assert sorted(resumed) == [("train_loss", s) for s in range(4, 7)] + [("val_loss", 3), ("val_loss", 6)]
    for key, value in resumed.items():  # the same to rounding: one unit of the log's 4th decimal at most
        assert value == pytest.approx(plain_losses[key], abs=1.5e-4), key
    # Measured: 4e-4 (Newton-Schulz amplifies rounding along small singular values), while the weights of step 3
    # are 8e-2 away from those of step 6.
    assert relative_difference(weights, plain_weights) < 2e-3
    assert relative_difference(torch.load(checkpoint, weights_only=True)["model"], plain_weights) > 2e-2


def test_two_ranks_with_the_switches_on_train_as_one_and_resume_with_them_off(plain_run, data_dir, tmp_path):
    _, plain_losses, plain_weights = plain_run
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "train_gpt.py"), *overrides(data_dir, run_id="on2", **SWITCHES_ON)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    two_ranks = losses(tmp_path / "logs" / "on2.txt")
    assert sorted(two_ranks) == sorted(plain_losses)
    for key, value in two_ranks.items():  # the same tokens; only the order of the sums differs
        assert value == pytest.approx(plain_losses[key], abs=2e-3), key
    saved = torch.load(tmp_path / "logs" / "on2" / "step_000003.pt", weights_only=True)
    assert saved["world_size"] == 2 and "blocks.0.attn.q.weight" in saved["model"]
    assert "blocks.0.attn.q.weight" in saved["muon_momentum"]  # gathered from its owner, stored apart
    weights = train_in_process(tmp_path, overrides(data_dir, run_id="off1", resume="logs/on2/step_000003.pt",
                                                   **SWITCHES_OFF))
    for key, value in losses(tmp_path / "logs" / "off1.txt").items():
        assert value == pytest.approx(two_ranks[key], abs=2e-3), key
    assert relative_difference(weights, plain_weights) < 1e-2


# -----------------------------------------------------------------------------
# tools/compare_switches.py: its dry run on the CPU

_spec = importlib.util.spec_from_file_location("compare_switches", REPO / "tools" / "compare_switches.py")
compare_switches = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_switches)
TABLE_ROW = re.compile(r"^\| (?P<variant>[^|]+) \| (?P<switches>[^|]+) \| (?P<ms>[\d.]+) \| (?P<ratio>[\d.]+)x \| "
                       r"- \| - \| (?P<loss>[\d.]+) \| \d+ \|$", re.MULTILINE)


def dry_run_arguments(data_dir: Path, out: Path, *options) -> list[str]:
    return ["--dry-run", f"--out={out}", *options, f"--train_files={data_dir / 'train_*.bin'}",
            f"--val_files={data_dir / 'val_*.bin'}", "--num_layers=6", "--attention_free_layers=3"]


# fp8_head's products take about a minute per step on a CPU: the dry run leaves it out.
NOT_FP8 = [(name, switches) for name, switches in compare_switches.VARIANTS if "fp8_head" not in switches]


def test_compare_switches_dry_run_times_each_variant_and_profiles_one(data_dir, tmp_path):
    variants = ",".join(name for name, _ in reversed(NOT_FP8))  # run in VARIANTS' order whatever the list's
    with one_rank_process(tmp_path):
        assert compare_switches.main(dry_run_arguments(data_dir, tmp_path / "out", f"--variants={variants}",
                                                       "--profile=exact-math switches")) == 0
    table = (tmp_path / "out" / "switches.md").read_text()
    rows = [match.groupdict() for match in TABLE_ROW.finditer(table)]
    assert [row["variant"] for row in rows] == [name for name, _ in NOT_FP8]
    assert [row["switches"] for row in rows] == [", ".join(switches) or "-" for _, switches in NOT_FP8]
    baseline = float(rows[0]["ms"])
    for row in rows:  # each ratio is to this call's baseline
        assert float(row["ratio"]) == pytest.approx(float(row["ms"]) / baseline, rel=1e-3, abs=1e-3), row
    assert all(row["loss"] == rows[0]["loss"] for row in rows)  # same seed and tokens, same math
    assert "- all switches, ms/step <= 0.77x: not measured" in table
    assert re.search(r"^- exact-math switches, ms/step <= 0.87x: [\d.]+x, (met|NOT met)$", table, re.MULTILINE)
    profile = (tmp_path / "out" / "profile.txt").read_text()
    assert "## Profile of 'exact-math switches'" in table and profile.rstrip() in table
    muon_row = re.search(r"^Muon \(Newton-Schulz\) +([\d.]+) ", profile, re.MULTILINE)
    assert muon_row and float(muon_row.group(1)) > 0  # batched Newton-Schulz inside Muon's scope
    log = next((tmp_path / "logs").glob("*.txt")).read_text()
    assert [line for line in log.splitlines() if line.startswith("variant: ")] == [
        f"variant: {name} ({', '.join(switches) or 'no switch'})" for name, switches in NOT_FP8]


def test_compare_switches_quality_dry_run_stops_at_the_budget(data_dir, tmp_path):
    with one_rank_process(tmp_path):
        assert compare_switches.main(dry_run_arguments(data_dir, tmp_path / "out", "--protocol=quality",
                                                       "--budget=0.001")) == 0
    table = (tmp_path / "out" / "quality.md").read_text()
    assert re.search(r"^\| baseline \| 1 \| [\d.]+ \| [\d.]+ \|$", table, re.MULTILINE)
    assert re.search(r"^\| baseline \| 1 \| [\d.]+ \|$", table, re.MULTILINE)  # the mean of the one run
    for name, seed in (("fp8_head", 1), ("baseline", 2), ("fp8_head", 2)):
        assert f"- {name} seed {seed}: skipped, the budget of 0 s would not hold it" in table
    assert "- fp8_head mean <= 2.655: not measured" in table

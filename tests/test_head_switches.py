"""The LM head's speed switches on the CPU: fused_loss (the chunked soft-capped cross-entropy) against the
plain path, fp8_head's products against bf16 ones, and training runs with each switch on 1 and 2 ranks and
across a resume.

FP8 products run through torch._scaled_mm. On a CPU without FP8 units, oneDNN's e4m3 x e4m3 product is
about 1000 times slower than PyTorch's own CPU kernel (same results, checked below), so the FP8 tests turn
oneDNN off (without_onednn)."""
import contextlib
import functools
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import train_gpt
from tests.shards import synthetic_tokens, write_shard
from tests.test_train_run import arguments, logged_losses, run

VOCAB = 50304  # the real vocabulary: the plain path's logits are then 50,304 wide, as on the GPU
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@contextlib.contextmanager
def without_onednn():
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(enabled)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


# -----------------------------------------------------------------------------
# fused_loss: the same loss and gradients as the plain path


def head_loss_and_gradients(loss_function, x: torch.Tensor, head, targets: torch.Tensor):
    """loss_function(x, head, targets, soft cap 15)'s value and the gradients of x and of the head's weight."""
    loss = loss_function(x, head, targets, 15.0)
    loss.backward()
    result = loss.item(), x.grad.clone(), head.weight.grad.clone()
    x.grad = head.weight.grad = None
    return result


def small_model(**overrides) -> train_gpt.GPT:
    """A 6-layer, 64-wide model with the real vocabulary; every weight random (the zero-initialized head and
    projections too, so that the soft cap's tanh is far from 0 and every gradient is non-zero)."""
    args = train_gpt.Hyperparameters(sequence_length=256, model_dim=64, num_heads=2, num_kv_heads=2, mlp_dim=128,
                                     num_layers=6, attention_free_layers="", bf16_embeddings=False, **overrides)
    torch.manual_seed(0)
    model = train_gpt.build_model(args, torch.device("cpu"))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.03)
        model.lm_head.weight.normal_(0, 0.5)  # logits of several units: the soft cap bends them
    return model


def loss_and_gradients(model: train_gpt.GPT, micro_batches: int = 3):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, VOCAB, (256,), generator=generator, dtype=torch.int32)
    targets = torch.randint(0, VOCAB, (256,), generator=generator)
    targets[[7, -1]] = train_gpt.IGNORED_TARGET  # the loader pads a shard's last window so
    loss = model(inputs, targets, torch.tensor(2)) / micro_batches  # as train_step scales each micro-batch
    loss.backward()
    return loss.detach(), {name: param.grad for name, param in model.named_parameters()}


@pytest.fixture(scope="module")
def plain_result():
    return loss_and_gradients(small_model())


@pytest.mark.parametrize("chunk_tokens", [64, 100, 1000])  # divides the 256 tokens, does not, more than all
def test_fused_loss_gives_the_plain_loss_and_every_gradient(plain_result, chunk_tokens):
    plain_loss, plain_gradients = plain_result
    loss, gradients = loss_and_gradients(small_model(fused_loss=True, fused_loss_chunk_tokens=chunk_tokens))
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert gradients.keys() == plain_gradients.keys()
    for name, gradient in gradients.items():
        assert plain_gradients[name].norm() > 0, name
        assert relative_error(gradient, plain_gradients[name]) < 1e-4, name


def test_fused_loss_without_gradients_is_the_plain_loss_and_needs_no_backward(plain_result):
    model = small_model(fused_loss=True, fused_loss_chunk_tokens=100)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, VOCAB, (256,), generator=generator, dtype=torch.int32)
    targets = torch.randint(0, VOCAB, (256,), generator=generator)
    targets[[7, -1]] = train_gpt.IGNORED_TARGET
    with torch.no_grad():
        loss = model(inputs, targets, torch.tensor(2))
    assert loss.item() == pytest.approx(3 * plain_result[0].item(), rel=1e-6)


def test_fused_loss_in_bf16_activations_is_the_plain_path_to_bf16_rounding():
    """With bf16 activations (the GPU's), the plain path soft-caps in bf16, the fused one in fp32."""
    torch.manual_seed(0)
    x = torch.randn(256, 64).bfloat16().requires_grad_()
    head = train_gpt.CastedLinear(64, VOCAB)
    torch.nn.init.normal_(head.weight, 0, 0.5)
    targets = torch.randint(0, VOCAB, (256,))
    plain_loss, plain_x, plain_w = head_loss_and_gradients(train_gpt.softcapped_cross_entropy, x, head, targets)
    loss, grad_x, grad_w = head_loss_and_gradients(
        functools.partial(train_gpt.chunked_softcapped_cross_entropy, chunk_tokens=96), x, head, targets)
    assert loss == pytest.approx(plain_loss, rel=1e-3)
    assert relative_error(grad_x, plain_x) < 2e-2 and relative_error(grad_w, plain_w) < 2e-2


# -----------------------------------------------------------------------------
# fp8_head: the three products against bf16 ones

# e4m3 keeps 3 mantissa bits: rounding to nearest errs by at most 2^-4 of a value, about 2^-4 / sqrt(3) = 0.036
# in RMS over spread-out mantissas; e5m2 keeps 2 bits: at most 2^-3, RMS about 0.072. A product's error
# relative to its norm is near the root-sum-square of its two operands' (independent errors average out in
# the sum): about 0.05 for the forward (e4m3 x e4m3; measured 0.037), 0.08 for the gradients (e5m2 x e4m3;
# measured 0.06). A wrong scale (underflow or saturation) or a wrong operand gives errors near 1.
FORWARD_TOLERANCE, GRADIENT_TOLERANCE = 0.06, 0.1


def fp8_case(tokens: int = 256, dim: int = 64, vocab: int = 1024):
    """x as the head sees it (RMS-normed), a trained-looking head weight, and the gradient of a mean over
    the tokens of a cross-entropy: (softmax - onehot) / tokens."""
    generator = torch.Generator().manual_seed(0)
    x = train_gpt.norm(torch.randn(tokens, dim, generator=generator))
    weight = torch.randn(vocab, dim, generator=generator) * 0.05
    probabilities = torch.softmax(3 * torch.randn(tokens, vocab, generator=generator), dim=-1)
    onehot = torch.nn.functional.one_hot(torch.randint(0, vocab, (tokens,), generator=generator), vocab)
    return x, weight, (probabilities - onehot) / tokens


def test_fp8_linear_forward_and_both_gradients_match_the_exact_products():
    x, weight, grad = fp8_case()
    x, weight = x.requires_grad_(), weight.requires_grad_()
    with without_onednn():
        out = train_gpt.FP8Linear.apply(x, weight, len(x))
        out.backward(grad)
    assert out.dtype == x.dtype and weight.grad.dtype == torch.float32
    exact_x, exact_w = grad @ weight.detach(), grad.T @ x.detach()
    assert relative_error(out, x.detach() @ weight.detach().T) < FORWARD_TOLERANCE
    assert relative_error(x.grad, exact_x) < GRADIENT_TOLERANCE
    assert relative_error(weight.grad, exact_w) < GRADIENT_TOLERANCE


def test_fp8_linear_gradient_scale_follows_the_tokens_the_loss_averages_over():
    """A mean over 8 times more tokens (8 micro-batches) has 8 times smaller gradients. With the scale for
    a count 256 times too large they drop into e5m2's subnormals and lose their precision."""
    x, weight, grad = fp8_case()
    errors = {}
    for grad_tokens in (8 * len(x), 8 * len(x) * 256):
        x_leaf = x.clone().requires_grad_()
        with without_onednn():
            train_gpt.FP8Linear.apply(x_leaf, weight, grad_tokens).backward(grad / 8)
        errors[grad_tokens] = relative_error(x_leaf.grad, grad / 8 @ weight)
    assert errors[8 * len(x)] < GRADIENT_TOLERANCE < errors[8 * len(x) * 256]


def test_scaled_mm_without_onednn_is_the_same_product():
    x, weight, _ = fp8_case(tokens=64, vocab=128)
    x8, w8 = train_gpt.FP8Products.input_operand(x), train_gpt.FP8Products.weight_operand(weight, x.dtype)
    with without_onednn():
        fast = train_gpt.FP8Products.output(x8, w8, torch.float32)
    assert torch.equal(fast, train_gpt.FP8Products.output(x8, w8, torch.float32))


class FP8CastSpy(TorchFunctionMode):
    """Records the largest magnitude of every tensor cast to an FP8 dtype."""

    def __init__(self):
        super().__init__()
        self.largest = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and (kwargs.get("dtype") in FP8_DTYPES or any(a in FP8_DTYPES for a in args[1:])):
            self.largest.append(args[0].abs().max().item())
        return func(*args, **kwargs)


@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_fp8_casts_saturate_before_casting(dtype):
    """PyTorch 2.11 on CUDA turns values beyond the FP8 range into NaN (2.13 on the CPU saturates itself), so
    to_fp8 clamps first: what reaches the cast is already in range."""
    largest = torch.finfo(dtype).max
    x = torch.tensor([1.0, -3e5, 3e5, float("inf"), -float("inf")])
    with FP8CastSpy() as spy:
        cast = train_gpt.to_fp8(x, 2.0, dtype)
    assert spy.largest and max(spy.largest) <= largest
    assert cast.float().tolist() == [2.0, -largest, largest, largest, -largest]


def test_fp8_head_is_the_bf16_head_without_gradients_and_loads_its_weights():
    plain, fp8 = small_model(), small_model(fp8_head=True)
    assert isinstance(fp8.lm_head, train_gpt.FP8CastedLinear)
    fp8.load_state_dict(plain.state_dict())  # strict: the same names and shapes
    inputs = torch.randint(0, VOCAB, (256,), dtype=torch.int32)
    with torch.no_grad():
        assert torch.equal(fp8(inputs, None, torch.tensor(2)), plain(inputs, None, torch.tensor(2)))


def test_fused_loss_with_fp8_head_gives_the_fp8_heads_loss_and_gradients():
    """The chunked loss with FP8Products quantizes the same values with the same scales as FP8Linear under
    the plain loss, so the two agree far more closely than FP8 and bf16 do."""
    torch.manual_seed(0)
    x = train_gpt.norm(torch.randn(256, 64)).requires_grad_()
    targets = torch.randint(0, 1024, (256,))
    head = train_gpt.FP8CastedLinear(64, 1024, grad_tokens=256)
    torch.nn.init.normal_(head.weight, 0, 0.5)
    with without_onednn():
        plain_loss, plain_x, plain_w = head_loss_and_gradients(train_gpt.softcapped_cross_entropy, x, head, targets)
        loss, grad_x, grad_w = head_loss_and_gradients(functools.partial(
            train_gpt.chunked_softcapped_cross_entropy, chunk_tokens=96, products=train_gpt.FP8Products),
            x, head, targets)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert relative_error(grad_x, plain_x) < 1e-3 and relative_error(grad_w, plain_w) < 1e-3


# -----------------------------------------------------------------------------
# Checks before training


@pytest.mark.parametrize("overrides,fragment", [
    (dict(fp8_head=True, model_dim=72, num_heads=2, num_kv_heads=2), "model_dim=72"),
    (dict(fp8_head=True, fused_loss=True, fused_loss_chunk_tokens=100), "fused_loss_chunk_tokens=100"),
    (dict(fused_loss=True, fused_loss_chunk_tokens=0), "fused_loss_chunk_tokens=0"),
])
def test_bad_switch_settings_are_refused(overrides, fragment):
    with pytest.raises(train_gpt.InputError, match=fragment):
        train_gpt.check_hyperparameters(train_gpt.Hyperparameters(**overrides), world_size=1)
    train_gpt.check_hyperparameters(train_gpt.Hyperparameters(fused_loss_chunk_tokens=100, fused_loss=True), 1)


def test_fp8_head_is_refused_on_a_card_without_fp8_units(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    card = torch.device("cuda", 0)
    with pytest.raises(train_gpt.InputError, match=r"A100.* 8\.0.*--fp8_head=false"):
        train_gpt.check_device(train_gpt.Hyperparameters(fp8_head=True), card)
    train_gpt.check_device(train_gpt.Hyperparameters(), card)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    train_gpt.check_device(train_gpt.Hyperparameters(fp8_head=True), card)


# -----------------------------------------------------------------------------
# Training runs: 4 steps of a 6-layer model, in this process (1 rank) and under torchrun (2 ranks)

RUN = dict(num_layers="6", attention_free_layers="5", num_iterations="4", val_loss_every="0")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shards")
    write_shard(directory / "train_000000.bin", synthetic_tokens(20000, seed=1))
    write_shard(directory / "val_000000.bin", synthetic_tokens(4000, seed=3))
    return directory


def train_here(cwd: Path, data_dir: Path, run_id: str, **overrides) -> dict:
    """One rank in this process (oneDNN off, see the module's docstring); the logged losses."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=str(train_gpt.free_port())).items():
            patch.setenv(name, value)
        patch.setattr(train_gpt, "abandon", lambda run, status: pytest.fail(f"the run failed: {status}"))
        handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            with without_onednn():
                assert train_gpt.main(arguments(data_dir, run_id=run_id, **{**RUN, **overrides})) == 0
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
    return logged_losses(cwd / "logs" / f"{run_id}.txt")


def assert_close(losses: dict, reference: dict, tolerance: float):
    assert losses.keys() == reference.keys()
    for key, value in losses.items():
        assert float(value) == pytest.approx(float(reference[key]), abs=tolerance), (key, losses, reference)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    cwd = tmp_path_factory.mktemp("runs")
    return cwd, {"plain": train_here(cwd, data_dir, "plain", checkpoint_every="2"),
                 "fp8": train_here(cwd, data_dir, "fp8", fp8_head="true"),
                 "both": train_here(cwd, data_dir, "both", fp8_head="true", fused_loss="true",
                                    fused_loss_chunk_tokens="96")}


def test_each_switch_trains_like_the_plain_path(runs):
    """4 steps: FP8 moves the losses by its rounding only. (Tiny differences grow through Muon's bf16
    Newton-Schulz, so even same-math switches are compared with a tolerance here; the exact comparison is
    test_fused_loss_gives_the_plain_loss_and_every_gradient.)"""
    _, losses = runs
    assert float(losses["plain"][("val_loss", 4)]) < float(losses["plain"][("train_loss", 1)]) - 1
    assert_close(losses["fp8"], losses["plain"], 0.05)
    assert_close(losses["both"], losses["fp8"], 0.02)


def test_resuming_with_fused_loss_switched_on_continues_the_run(runs, data_dir):
    cwd, losses = runs
    resumed = train_here(cwd, data_dir, "resumed", resume="logs/plain/step_000002.pt", fused_loss="true",
                         fused_loss_chunk_tokens="100")
    assert "resumed: run plain at step 2" in (cwd / "logs" / "resumed.txt").read_text()
    assert sorted(resumed) == [("train_loss", 3), ("train_loss", 4), ("val_loss", 4)]
    assert_close(resumed, {key: losses["plain"][key] for key in resumed}, 0.02)


def test_both_switches_on_two_ranks_train_as_on_one(runs, data_dir, tmp_path):
    """The same global batch on 2 gloo ranks; oneDNN is turned off in each rank by a launcher."""
    _, losses = runs
    launcher = tmp_path / "without_onednn.py"
    launcher.write_text(f"import runpy, sys, torch\ntorch._C._set_mkldnn_enabled(False)\n"
                        f"sys.argv[0] = {str(train_gpt.__file__)!r}\n"
                        f"runpy.run_path(sys.argv[0], run_name='__main__')\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(launcher),
               *arguments(data_dir, run_id="both2", fp8_head="true", fused_loss="true", fused_loss_chunk_tokens="96",
                          **RUN)]
    result = run(command, tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "device: cpu x2" in (tmp_path / "logs" / "both2.txt").read_text()
    assert_close(logged_losses(tmp_path / "logs" / "both2.txt"), losses["both"], 0.02)

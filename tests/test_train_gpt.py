"""CPU tests of train_gpt.py's parts: Newton-Schulz, Muon (1 vs 2 gloo ranks), the attention masks, the
model, the schedules, the data loader and the input checks. The training runs are in test_train_run.py."""
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

import train_gpt
from tests.shards import write_shard

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
BLOCK = 128  # DESIGN.md 3: FlexAttention's block size


# -----------------------------------------------------------------------------
# Newton-Schulz

# Each singular value s of X = G / ||G||_F goes through the scalar quintic p(s) = a s + b s^3 + c s^5 five
# times (the iteration commutes with the SVD). Measured on random Gaussian matrices (float32 in, singular
# values of the bf16 output in float64): 0.674 .. 1.144 for 512x128, 128x512, 64x256 and 768x3072;
# 0.678 .. 1.203 for 256x256 above the threshold below. The exact scalar map p^5 has maximum 1.2024 on
# (0, 1] and stays >= 0.68 for s >= 0.0016; bf16 rounding adds a few percent, hence the band [0.6, 1.25].
NS_BAND = (0.6, 1.25)
# p^5(s) ~ 3.4445^5 s ~ 484 s for small s, so an input singular value below ~0.0013 ||G||_F cannot reach the
# band in 5 steps. Random square matrices have singular values down to ~0 (the smallest of a 256x256
# Gaussian is ~1e-3 of the largest), so for square inputs the band is asserted only for singular values
# >= 0.002 ||G||_F. Tall and wide random matrices have all singular values well above that (~0.03 ||G||_F).
NS_SQUARE_THRESHOLD = 0.002


def polar_factor(g: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    return u @ vh


@pytest.mark.parametrize("shape", [(512, 128), (128, 512), (256, 256)])
def test_newton_schulz_singular_values_in_band(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    for _ in range(2):
        g = torch.randn(shape, generator=generator, dtype=torch.float32)
        out = train_gpt.newton_schulz_orthogonalize(g, 5)
        assert out.shape == g.shape
        assert out.dtype == torch.bfloat16
        out64 = out.double()
        singular_values = torch.linalg.svdvals(out64)
        assert singular_values.max() <= NS_BAND[1], singular_values.max()
        u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
        if shape[0] != shape[1]:
            assert singular_values.min() >= NS_BAND[0], singular_values.min()
        else:
            # The iteration maps singular pair (u_i, v_i) of G to u_i p^5(s_i) v_i^T: read p^5(s_i) off the
            # output along G's own singular vectors, and check it where s_i is large enough (see above).
            mapped = torch.einsum("ri,rc,ic->i", u, out64, vh)
            relative = s / g.double().norm()
            considered = relative >= NS_SQUARE_THRESHOLD
            assert considered.sum() >= 0.9 * len(s)  # the threshold leaves out only the small tail
            assert mapped[considered].min() >= NS_BAND[0], mapped[considered].min()
            assert mapped.max() <= NS_BAND[1]
        # Nearly the polar factor U V^T of the input.
        polar = polar_factor(g)
        cosine = (out64 * polar).sum() / (out64.norm() * polar.norm())
        assert cosine > 0.95, cosine


def test_newton_schulz_orientation_is_consistent():
    # Transposing the input transposes the output exactly: the tall case iterates on the wide orientation.
    g = torch.randn(96, 40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(train_gpt.newton_schulz_orthogonalize(g, 5),
                       train_gpt.newton_schulz_orthogonalize(g.T.contiguous(), 5).T)


# -----------------------------------------------------------------------------
# Muon: the same step on 1, 2 and 4 gloo ranks, bitwise; batched_muon and row splits (merged_qkv) the same

sys.path.insert(0, str(TESTS))
import muon_worker  # noqa: E402


@pytest.fixture(scope="module")
def muon_ranks(tmp_path_factory) -> dict[int, list[dict]]:
    """world size -> every rank's saved results (variant -> results); all ranks of the world sizes 1, 2 and 4
    run at once, each in its own process."""
    tmp_path = tmp_path_factory.mktemp("muon")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for world_size in (1, 2, 4):
        store = tmp_path / f"store{world_size}"
        outputs = [tmp_path / f"muon_w{world_size}_r{rank}.pt" for rank in range(world_size)]
        runs[world_size] = [(subprocess.Popen([sys.executable, str(TESTS / "muon_worker.py"), str(rank),
                                               str(world_size), str(store), str(output)], env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), output)
                            for rank, output in enumerate(outputs)]
    results = {}
    for world_size, ranks in runs.items():
        for process, _ in ranks:
            stdout, _ = process.communicate(timeout=120)
            assert process.returncode == 0, stdout
        results[world_size] = [torch.load(output) for _, output in ranks]
    return results


def reference_muon(momenta=muon_worker.MOMENTA, nesterov=True):
    """DESIGN.md 4 written out: buf = m buf + (1-m) g; g = (1-m) g + m buf; p -= lr sqrt(max(1, r/c)) orth(g)."""
    params = muon_worker.make_params()
    buffers = [torch.zeros_like(p) for p in params]
    snapshots = []
    for step, momentum in enumerate(momenta):
        for i, grad in enumerate(muon_worker.make_grads(step)):
            buffers[i] = momentum * buffers[i] + (1 - momentum) * grad
            update = (1 - momentum) * grad + momentum * buffers[i] if nesterov else buffers[i]
            rows, cols = params[i].shape
            orth = train_gpt.newton_schulz_orthogonalize(update, 5).float()
            params[i] = params[i] - muon_worker.LR * max(1.0, rows / cols) ** 0.5 * orth
        snapshots.append([p.clone() for p in params])
    return snapshots


def test_muon_two_and_four_ranks_equal_one_rank_bitwise(muon_ranks):
    single, = (result["loop"] for result in muon_ranks[1])
    pair = [result["loop"] for result in muon_ranks[2]]
    shapes = muon_worker.SHAPES
    # Groups by size, largest first, each in the order given.
    assert single["groups"] == [shapes[:5], shapes[5:8], shapes[8:]]
    for step in range(len(muon_worker.MOMENTA)):
        for rank_result in pair + [result["loop"] for result in muon_ranks[4]]:
            for i, (a, b) in enumerate(zip(single["snapshots"][step], rank_result["snapshots"][step])):
                assert torch.equal(a, b), f"step {step}, parameter {i} {shapes[i]}"
    # Every parameter moved at every step, and its momentum lives on exactly one of the 2 ranks.
    previous = muon_worker.make_params()
    for snapshot in single["snapshots"]:
        assert all(not torch.equal(before, after) for before, after in zip(previous, snapshot))
        previous = snapshot
    assert all(single["owned"])
    assert [a + b for a, b in zip(pair[0]["owned"], pair[1]["owned"])] == [1] * len(shapes)
    # Rank 1 owns the second parameter of each chunk of 2: positions 1, 3 of the five and 1 of the three.
    assert pair[1]["owned"] == [False, True, False, True, False, False, True, False, False]

    # The steps are DESIGN.md 4's Muon with the group's momentum of each step (0.6, 0.8, 0.95) and Nesterov:
    # compare each step's update with the reference's, relative to its size (Frobenius, all parameters).
    def updates(snapshots):
        before = muon_worker.make_params()
        for snapshot in snapshots:
            yield torch.cat([(after - b).flatten() for after, b in zip(snapshot, before)])
            before = snapshot

    def relative_differences(snapshots_a, snapshots_b):
        return [((a - b).norm() / b.norm()).item() for a, b in zip(updates(snapshots_a), updates(snapshots_b))]

    assert max(relative_differences(single["snapshots"], reference_muon())) < 0.01
    # Measured: the correct reference is within 0.2%; a fixed momentum of 0.95 (the constructor's) or
    # plain instead of Nesterov momentum is 20-80% off at steps 2-3 (step 1 is the same up to bf16 rounding,
    # as orthogonalization ignores the update's scale).
    assert max(relative_differences(single["snapshots"], reference_muon(momenta=(0.95,) * 3))) > 0.15
    assert max(relative_differences(single["snapshots"], reference_muon(nesterov=False))) > 0.15


@pytest.mark.parametrize("variant", ["batched", "loop_stacked", "batched_stacked"])
def test_batched_muon_and_row_splits_equal_the_loop_on_1_2_and_4_ranks(muon_ranks, variant):
    """batched_muon, and parameters stacked from several matrices with row_splits (merged_qkv's q, k, v), give
    every matrix the loop's update on separate matrices, to bf16 rounding (measured: bitwise on the CPU)."""
    loop = muon_ranks[1][0]["loop"]
    for world_size, results in muon_ranks.items():
        for rank, result in enumerate(results):
            before = muon_worker.make_params()
            for step, (expected, snapshot) in enumerate(zip(loop["snapshots"], result[variant]["snapshots"])):
                for i, (old, want, got) in enumerate(zip(before, expected, snapshot)):
                    difference = ((got - old) - (want - old)).norm() / (want - old).norm()
                    assert difference < 1e-3, (world_size, rank, step, muon_worker.SHAPES[i], difference.item())
                before = expected
            if variant == "batched":  # the same owners: momentum is handed over on resume as the loop's
                assert result[variant]["owned"] == muon_ranks[world_size][rank]["loop"]["owned"]


# -----------------------------------------------------------------------------
# Attention masks


def document_layouts():
    """Name -> documents (document index of each token) for sequences of 8 blocks (1024 tokens)."""
    length = 8 * BLOCK
    generator = torch.Generator().manual_seed(7)
    layouts = {}
    random_eot = torch.rand(length, generator=generator) < 0.01
    random_eot[0] = True
    layouts["random"] = random_eot
    long_doc = torch.zeros(length, dtype=torch.bool)
    long_doc[[0, 100, 900, 1000]] = True  # one document over blocks 0..7, partial at both ends
    layouts["spanning_many_blocks"] = long_doc
    tiny = torch.rand(length, generator=generator) < 0.3
    layouts["many_tiny"] = tiny
    single = torch.zeros(length, dtype=torch.bool)
    single[0] = True
    layouts["single"] = single
    none = torch.zeros(length, dtype=torch.bool)  # no EOT at all: one document 0
    layouts["no_eot"] = none
    aligned = torch.zeros(length, dtype=torch.bool)
    aligned[[0, 256, 384, 385, 767]] = True  # documents starting exactly on block boundaries
    layouts["block_aligned"] = aligned
    return {name: eot.long().cumsum(0) for name, eot in layouts.items()}


LAYOUTS = document_layouts()


def block_mask_contents(block_mask, length):
    """(token mask, partial block set, full block set) the BlockMask stands for."""
    num_blocks = length // BLOCK
    assert block_mask.BLOCK_SIZE == (BLOCK, BLOCK)
    dense = torch.zeros(length, length, dtype=torch.bool)
    partial, full = set(), set()
    for row in range(num_blocks):
        rows = slice(row * BLOCK, (row + 1) * BLOCK)
        partial_row = block_mask.kv_indices[0, 0, row, :block_mask.kv_num_blocks[0, 0, row]].tolist()
        full_row = block_mask.full_kv_indices[0, 0, row, :block_mask.full_kv_num_blocks[0, 0, row]].tolist()
        assert len(set(partial_row)) == len(partial_row) and len(set(full_row)) == len(full_row)
        for col in partial_row:
            query = torch.arange(row * BLOCK, (row + 1) * BLOCK)[:, None]
            key = torch.arange(col * BLOCK, (col + 1) * BLOCK)[None, :]
            dense[rows, col * BLOCK:(col + 1) * BLOCK] = block_mask.mask_mod(0, 0, query, key)
            partial.add((row, col))
        for col in full_row:
            dense[rows, col * BLOCK:(col + 1) * BLOCK] = True
            full.add((row, col))
    return dense, partial, full


def brute_force_mask(documents, window):
    n = len(documents)
    docs = documents.tolist()
    return torch.tensor([[q >= k and docs[q] == docs[k] and q // BLOCK - k // BLOCK < window for k in range(n)]
                         for q in range(n)])


def test_dense_mask_matches_spec_rule_on_hand_made_example():
    eot = torch.zeros(3 * BLOCK, dtype=torch.bool)
    eot[[0, 5, 6, 130, 300]] = True
    documents = eot.long().cumsum(0)
    for window in (1, 2, 3):
        dense = train_gpt.dense_sliding_window_mask(documents, torch.tensor(window, dtype=torch.int32))
        assert dense.dtype == torch.bool
        assert torch.equal(dense, brute_force_mask(documents, window)), window
    # Spot checks of the rule (documents start at 0, 5, 6, 130, 300): same document, causal, window in blocks.
    window_1 = train_gpt.dense_sliding_window_mask(documents, torch.tensor(1, dtype=torch.int32))
    window_2 = train_gpt.dense_sliding_window_mask(documents, torch.tensor(2, dtype=torch.int32))
    assert window_1[127, 7] and not window_1[129, 7] and window_2[129, 7]
    assert not window_2[130, 129] and not window_2[7, 129] and not window_2[6, 5] and window_2[6, 6]
    assert window_1[299, 256] and not window_1[299, 255] and window_2[299, 200] and not window_2[300, 299]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_block_mask_equals_dense_mask(layout):
    documents = LAYOUTS[layout]
    length = len(documents)
    num_blocks = length // BLOCK
    for window in range(1, num_blocks + 1):
        window_tensor = torch.tensor(window, dtype=torch.int32)
        block_mask = train_gpt.sliding_window_block_mask(documents, window_tensor)
        dense = train_gpt.dense_sliding_window_mask(documents, window_tensor)
        reconstructed, partial, full = block_mask_contents(block_mask, length)
        assert torch.equal(reconstructed, dense), (layout, window)
        assert not partial & full, "a block pair counted both full and partial"
        for row, col in full:  # a full block is fully allowed by the token rule
            assert dense[row * BLOCK:(row + 1) * BLOCK, col * BLOCK:(col + 1) * BLOCK].all()
        for row, col in partial:  # a listed partial block holds at least one allowed pair
            assert dense[row * BLOCK:(row + 1) * BLOCK, col * BLOCK:(col + 1) * BLOCK].any()
        # FlexAttention only skips mask_mod where it is told the block is full: fully allowed off-diagonal
        # blocks of one document are marked full (the point of the full/partial split).
        if layout in ("single", "no_eot"):
            assert full == {(r, c) for r in range(num_blocks) for c in range(num_blocks) if 0 < r - c < window}


def attention_inputs(heads, kv_heads, length, head_dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, length, head_dim, generator=generator)
    k = torch.randn(1, kv_heads, length, head_dim, generator=generator)
    v = torch.randn(1, kv_heads, length, head_dim, generator=generator)
    return q, k, v


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("layout,window,heads,kv_heads", [
    ("random", 3, 2, 2), ("spanning_many_blocks", 2, 2, 2), ("many_tiny", 8, 2, 2), ("random", 1, 4, 2),
    ("block_aligned", 5, 4, 1)])
def test_flex_attention_agrees_with_sdpa_dense_mask(layout, window, heads, kv_heads):
    documents = LAYOUTS[layout]
    window_tensor = torch.tensor(window, dtype=torch.int32)
    q, k, v = attention_inputs(heads, kv_heads, len(documents))
    gqa = heads != kv_heads
    block_mask = train_gpt.sliding_window_block_mask(documents, window_tensor)
    dense = train_gpt.dense_sliding_window_mask(documents, window_tensor)
    flex = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=gqa)
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)
    # The comparison can tell masks apart: plain causal attention gives a clearly different result.
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    assert (causal - sdpa).abs().max() > 0.1


@pytest.mark.parametrize("device,compile,expected", [
    ("cpu", "auto", "dense_sliding_window_mask"), ("cpu", "true", "dense_sliding_window_mask"),
    ("cuda", "auto", "compiled_sliding_window_block_mask"), ("cuda", "false", "sliding_window_block_mask")])
def test_attention_mask_function_is_chosen_once_per_device_and_compilation(device, compile, expected):
    args = train_gpt.Hyperparameters(compile=compile)
    assert train_gpt.attention_mask_function(args, torch.device(device)) is getattr(train_gpt, expected)


def test_compiled_block_mask_leaves_the_window_to_the_block_lists():
    """Same block lists; mask_mod without the window term (the record's), where eager's has it."""
    documents = LAYOUTS["single"]
    window = torch.tensor(1, dtype=torch.int32)
    eager = train_gpt.sliding_window_block_mask(documents, window)
    compiled = train_gpt.compiled_sliding_window_block_mask(documents, window)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(eager, name), getattr(compiled, name)), name
    query, key = torch.tensor(3 * BLOCK), torch.tensor(BLOCK)  # same document, two blocks back: outside the window
    zero = torch.tensor(0)
    assert not eager.mask_mod(zero, zero, query, key) and compiled.mask_mod(zero, zero, query, key)
    assert not compiled.mask_mod(zero, zero, key, query)  # still causal


def test_compiled_flex_attention_uses_the_block_lists():
    """Compiled FlexAttention (the GPU's path; its forward also compiles on CPU) visits only the listed blocks
    and skips mask_mod in full ones, unlike eager FlexAttention. So it agrees with the dense rule only if
    the block lists themselves are right; a mask that wrongly lists every causal block as full must differ."""
    compiled_flex = torch.compile(flex_attention, dynamic=False)
    documents = LAYOUTS["random"]
    q, k, v = attention_inputs(4, 2, len(documents))
    for window in (2, 5):
        window_tensor = torch.tensor(window, dtype=torch.int32)
        dense = train_gpt.dense_sliding_window_mask(documents, window_tensor)
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)
        block_mask = train_gpt.sliding_window_block_mask(documents, window_tensor)
        flex = compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=True)
        torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)
    num_blocks = len(documents) // BLOCK
    causal_blocks = torch.ones(num_blocks, num_blocks, dtype=torch.bool).tril(-1)
    counts = causal_blocks.sum(-1, dtype=torch.int32)[None, None]
    indices = causal_blocks.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)[None, None]
    wrong = BlockMask.from_kv_blocks(block_mask.kv_num_blocks, block_mask.kv_indices, counts, indices,
                                     BLOCK_SIZE=BLOCK, mask_mod=block_mask.mask_mod)
    assert (compiled_flex(q, k, v, block_mask=wrong, enable_gqa=True) - sdpa).abs().max() > 0.1


# -----------------------------------------------------------------------------
# The model

TINY = dict(vocab_size=50304, num_layers=12, model_dim=32, num_heads=2, num_kv_heads=2, mlp_dim=64,
            sequence_length=512, attention_free_layers="7")


def tiny_model(seed=0, randomize=True, **overrides):
    args = train_gpt.Hyperparameters(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = train_gpt.build_model(args, torch.device("cpu"))
    if randomize:  # the zero-initialized head and projections would hide everything behind a zero output
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name == "lm_head.weight" or name.endswith("proj.weight"):
                    param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model, args


def tiny_tokens(length=256, seed=0):  # EOT about every 200 tokens: documents span blocks
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 2000, (length + 1,), generator=generator)
    tokens[torch.rand(length + 1, generator=generator) < 0.005] = train_gpt.EOT_TOKEN
    tokens[0] = train_gpt.EOT_TOKEN
    return tokens[:-1].int(), tokens[1:].long()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("kv_heads,compute_dtype", [(2, "auto"), (1, "auto"), (2, "bfloat16")])
def test_model_flex_and_sdpa_paths_agree_in_forward(kv_heads, compute_dtype):
    model, args = tiny_model(num_kv_heads=kv_heads, compute_dtype=compute_dtype)
    inputs, targets = tiny_tokens(length=512)  # 4 blocks, documents spanning several of them
    assert model.mask_function is train_gpt.dense_sliding_window_mask  # build_model picks SDPA on CPU
    window = torch.tensor(2, dtype=torch.int32)  # narrower than the sequence: the window matters
    with torch.no_grad():
        sdpa_logits = model(inputs, None, window)
        sdpa_loss = model(inputs, targets, window)
        other_window_loss = model(inputs, targets, torch.tensor(1, dtype=torch.int32))
        model.mask_function = train_gpt.sliding_window_block_mask
        flex_logits = model(inputs, None, window)
        flex_loss = model(inputs, targets, window)
    assert sdpa_logits.shape == (len(inputs), args.vocab_size)
    assert sdpa_logits.abs().max() <= args.logit_softcap
    difference = abs(flex_loss.item() - sdpa_loss.item())
    assert difference < 2e-3 * sdpa_loss.item(), (flex_loss, sdpa_loss)
    # bf16 activations through 11 attention layers: measured 0.14-0.17 at most and 0.0125 on average for
    # logits of size ~3 (an ulp is 1/64); attention without the window gives ~2 at most and 0.04 on average.
    logits_difference = (flex_logits - sdpa_logits).abs()
    assert logits_difference.max() < 0.5 and logits_difference.mean() < 0.02, logits_difference.max()
    # The tolerance is tight enough to see the attention: a one-block-narrower window is far outside it.
    assert abs(other_window_loss.item() - sdpa_loss.item()) > 10 * difference


def test_compiled_model_with_flex_attention_matches_and_never_recompiles_for_a_new_window():
    """The GPU's forward path, on CPU: torch.compile of the whole model, with the BlockMask built inside the
    compiled graph and FlexAttention's block-sparse kernel. It must agree with the SDPA path, and a growing
    window (written into the same device tensor) must not trigger a recompile."""
    model, _ = tiny_model(num_kv_heads=1)
    inputs, targets = tiny_tokens(length=512)
    window = torch.tensor(2, dtype=torch.int32)
    with torch.no_grad():
        sdpa_losses = [model(inputs, targets, torch.tensor(w, dtype=torch.int32)).item() for w in (2, 4)]
        model.mask_function = train_gpt.compiled_sliding_window_block_mask  # as build_model on a GPU
        compiled = torch.compile(model, dynamic=False)
        flex_losses = [compiled(inputs, targets, window).item()]
        window.fill_(4)
        with torch._dynamo.config.patch(error_on_recompile=True):
            flex_losses.append(compiled(inputs, targets, window).item())
    assert abs(sdpa_losses[0] - sdpa_losses[1]) > 1e-3  # the two windows really differ
    for flex_loss, sdpa_loss in zip(flex_losses, sdpa_losses):
        assert abs(flex_loss - sdpa_loss) < 2e-3 * sdpa_loss, (flex_losses, sdpa_losses)

def test_model_initial_loss_is_log_vocab():
    model, args = tiny_model(randomize=False)
    assert not model.lm_head.weight.any()
    inputs, targets = tiny_tokens()
    with torch.no_grad():
        loss = model(inputs, targets, torch.tensor(1, dtype=torch.int32))
    assert loss.dtype == torch.float32
    assert abs(loss.item() - math.log(args.vocab_size)) < 1e-5


def test_model_layer_layout_and_value_embeddings():
    model, args = tiny_model()
    assert [block.attn is None for block in model.blocks] == [i == 7 for i in range(12)]
    assert len(model.value_embeds) == 3
    inputs, targets = tiny_tokens()
    tables = [table(inputs).to(model.activation_dtype) for table in model.value_embeds]
    seen = []

    def record(module, positional):
        _, _, value_embedding, _ = positional
        if value_embedding is None:
            seen.append(None)
        else:
            matches = [i for i, table in enumerate(tables) if torch.equal(value_embedding, table)]
            seen.append(matches[0] if len(matches) == 1 else f"unknown {matches}")

    hooks = [block.register_forward_pre_hook(record) for block in model.blocks]
    loss = model(inputs, targets, torch.tensor(2, dtype=torch.int32))
    for hook in hooks:
        hook.remove()
    assert seen == [0, 1, 2, None, None, None, None, None, None, 0, 1, 2]
    loss.backward()
    for i, table in enumerate(model.value_embeds):
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0, i
    assert model.blocks[7].attn is None and model.blocks[6].attn.q.weight.grad.abs().sum() > 0
    assert model.skip_weights.grad is not None and model.skip_weights.grad.abs().sum() > 0
    assert model.embed.weight.dtype == torch.bfloat16  # bf16_embeddings defaults to true


def test_build_optimizers_puts_every_parameter_in_one_group():
    model, args = tiny_model(randomize=False)
    adam, muon = train_gpt.build_optimizers(model, args, rank=0, world_size=1)
    assert isinstance(muon, train_gpt.Muon) and isinstance(adam, torch.optim.Adam)
    grouped = [p for optimizer in (adam, muon) for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    muon_params = {id(p) for group in muon.param_groups for p in group["params"]}
    assert muon_params == {id(p) for name, p in model.named_parameters() if name.startswith("blocks.") and p.ndim == 2}
    lrs = {id(p): group["lr"] for group in adam.param_groups for p in group["params"]}
    assert lrs[id(model.embed.weight)] == args.embed_lr and lrs[id(model.lm_head.weight)] == args.head_lr
    assert all(lrs[id(table.weight)] == args.embed_lr for table in model.value_embeds)
    assert lrs[id(model.skip_weights)] == args.scalar_lr
    assert adam.defaults["betas"] == (0.8, 0.95) and adam.defaults["weight_decay"] == 0
    assert adam.defaults["eps"] == 1e-8 == args.adam_eps  # PyTorch's default, as the record
    assert all(group["initial_lr"] == group["lr"] for opt in (adam, muon) for group in opt.param_groups)


# -----------------------------------------------------------------------------
# Schedules


def test_learning_rate_schedule():
    args = train_gpt.Hyperparameters(num_iterations=1000, cooldown_frac=0.4)
    lr = lambda step: train_gpt.learning_rate_multiplier(step, args)  # noqa: E731
    assert lr(0) == 1.0 and lr(300) == 1.0 and lr(600) == 1.0  # cooldown starts at step 600
    assert lr(800) == pytest.approx(0.5) and lr(700) == pytest.approx(0.75)
    assert lr(1000) == 0.0
    values = [lr(step) for step in range(1001)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    # Linear in the cooldown: equal steps down.
    diffs = np.diff(values[600:])
    assert np.allclose(diffs, -1 / 400)


SCHEDULE_LENGTHS = [1390, 1000, 300, 100]


@pytest.mark.parametrize("iterations", SCHEDULE_LENGTHS)
def test_window_schedule_is_the_records_at_every_step(iterations):
    """blocks(step) = floor(((1 - x) * 128 + x * 1856) / 128), x = step / num_iterations (the record's)."""
    args = train_gpt.Hyperparameters(num_iterations=iterations)
    values = [train_gpt.window_blocks_at(step, args) for step in range(iterations + 1)]
    expected = [int(((1 - s / iterations) * 128 + s / iterations * 1856) // 128) for s in range(iterations + 1)]
    assert values == expected
    assert values[0] == 1 and values[-1] == 14 and all(isinstance(v, int) for v in values)
    assert values.index(14) >= 0.96 * iterations  # 14 blocks only at the very end
    assert all(a <= b for a, b in zip(values, values[1:]))
    if iterations == 1390:
        assert sum(values[:-1]) / iterations == pytest.approx(7.26, abs=0.005)  # the record's mean window
    wider = train_gpt.Hyperparameters(num_iterations=iterations, window_start_tokens=256, window_end_tokens=2048)
    assert train_gpt.window_blocks_at(0, wider) == 2 and train_gpt.window_blocks_at(iterations, wider) == 16


@pytest.mark.parametrize("iterations", SCHEDULE_LENGTHS)
def test_muon_momentum_warms_up_over_300_steps_whatever_the_length(iterations):
    args = train_gpt.Hyperparameters(num_iterations=iterations)
    for step in range(iterations + 1):
        fraction = min(step / 300, 1)
        assert train_gpt.muon_momentum_at(step, args) == pytest.approx((1 - fraction) * 0.85 + fraction * 0.95)
    assert train_gpt.muon_momentum_at(iterations, args) == pytest.approx(min(0.95, 0.85 + 0.1 * iterations / 300))
    if iterations == 100:
        assert train_gpt.muon_momentum_at(100, args) == pytest.approx(0.8833, abs=1e-4)


@pytest.mark.parametrize("iterations", SCHEDULE_LENGTHS)
def test_learning_rate_at_every_step(iterations):
    args = train_gpt.Hyperparameters(num_iterations=iterations)  # cooldown over the last 40%
    for step in range(iterations + 1):
        remaining = 1 - step / iterations
        assert train_gpt.learning_rate_multiplier(step, args) == pytest.approx(min(remaining / 0.4, 1.0))
    assert train_gpt.learning_rate_multiplier(iterations, args) == 0.0


# -----------------------------------------------------------------------------
# Data loader and input checks


def numbered_shards(tmp_path: Path, sizes) -> list[str]:
    """Shards whose token i of shard s is 10000 * s + i (mod 50000): every token names its place."""
    files = []
    for s, size in enumerate(sizes):
        files.append(str(tmp_path / f"train_{s:06d}.bin"))
        write_shard(Path(files[-1]), (10000 * s + np.arange(size)) % 50000)
    return files


def steps_seen(files, steps, batch_size, sequence_length, world_size, first_step=0):
    """For each step: the (inputs, targets) pairs of every rank's micro-batches, as token lists, in order."""
    streams = [train_gpt.training_batches(files, batch_size, sequence_length, rank, world_size, torch.device("cpu"),
                                          50304, first_step) for rank in range(world_size)]
    result = []
    for _ in range(steps):
        pieces = []
        for stream in streams:
            for inputs, targets in next(stream):
                assert inputs.dtype == torch.int32 and targets.dtype == torch.int64
                assert inputs.shape == targets.shape == (sequence_length,)
                pieces.append((inputs.tolist(), targets.tolist()))
        result.append(pieces)
    return result


# Uneven shard ends: 5 batches + 37 tokens, exactly 3 batches + 1 token, 2 batches (its last batch lacks the
# next token, so only 1 fits), then 4 batches and a bit.
UNEVEN_SIZES = [5 * 1024 + 37, 3 * 1024 + 1, 2 * 1024, 4 * 1024 + 300]


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_every_step_trains_on_the_same_tokens_on_any_number_of_ranks(tmp_path, world_size):
    files = numbered_shards(tmp_path, UNEVEN_SIZES)
    steps = 5 + 3 + 1 + 4
    one_rank = steps_seen(files, steps, 1024, 128, 1)
    many = steps_seen(files, steps, 1024, 128, world_size)
    # Not only the set: the same sequences in the same order (rank r's slice follows rank r - 1's).
    assert many == one_rank
    # Each step's batch is batch_size + 1 contiguous tokens of one shard; a shard's rest that cannot hold
    # batch_size + 1 tokens is skipped, and the next shard starts at its first token.
    starts = [(s, b * 1024) for s, count in enumerate([5, 3, 1, 4]) for b in range(count)]
    for (shard, start), pieces in zip(starts, one_rank):
        inputs = [token for piece_inputs, _ in pieces for token in piece_inputs]
        targets = [token for _, piece_targets in pieces for token in piece_targets]
        first = 10000 * shard + start
        assert inputs == [t % 50000 for t in range(first, first + 1024)]
        assert targets == [t % 50000 for t in range(first + 1, first + 1025)]
    with pytest.raises(StopIteration):  # and the data ends there (check_run_inputs refuses longer runs)
        steps_seen(files, steps + 1, 1024, 128, world_size)


def test_resumed_stream_continues_where_the_step_left_it(tmp_path):
    files = numbered_shards(tmp_path, UNEVEN_SIZES)
    whole = steps_seen(files, 13, 1024, 256, 2)
    for first_step in (1, 5, 8, 9, 12):
        assert steps_seen(files, 13 - first_step, 1024, 256, 2, first_step) == whole[first_step:]


def test_validation_batches_may_end_exactly_at_the_shard_end(tmp_path):
    path = tmp_path / "val_000000.bin"
    write_shard(path, np.arange(4 * 256))  # exactly val_tokens: the very last target is unknown
    for world_size in (1, 2, 4):
        per_rank = [train_gpt.validation_batches([str(path)], 1024, 256, rank, world_size, torch.device("cpu"), 50304)
                    for rank in range(world_size)]
        sequences = [per_rank[rank][m] for m in range(4 // world_size) for rank in range(world_size)]
        for index, (inputs, targets) in enumerate(sequences):
            assert inputs.tolist() == list(range(256 * index, 256 * index + 256))
            expected = list(range(256 * index + 1, 256 * index + 257))
            if index == 3:
                expected[-1] = -100  # ignored by the loss
            assert targets.tolist() == expected


def test_shard_tokens_above_int16_survive(tmp_path):
    path = tmp_path / "high.bin"
    write_shard(path, [train_gpt.EOT_TOKEN, 65535, 40000, 1, 2])
    (inputs, targets), = train_gpt.micro_batches(train_gpt.load_shard(str(path), 65536), 0, 4, 4, torch.device("cpu"))
    assert inputs.tolist() == [50256, 65535, 40000, 1] and targets.tolist() == [65535, 40000, 1, 2]


@pytest.mark.parametrize("position", [0, 777, 9999])
def test_token_id_outside_the_vocabulary_is_named_with_file_and_position(tmp_path, position):
    tokens = np.arange(10000) % 5000
    tokens[position] = 50304
    tokens[-1] = 60000 if position != 9999 else 50304  # only the first offending position is named
    path = tmp_path / "bad.bin"
    write_shard(path, tokens)
    with pytest.raises(train_gpt.InputError) as error:
        train_gpt.load_shard(str(path), 50304)
    assert str(path) in str(error.value) and f"position {position}" in str(error.value)
    assert "token id 50304" in str(error.value) and "vocab_size=50304" in str(error.value)
    assert len(train_gpt.load_shard(str(path))) == 10000  # without a vocabulary, nothing is checked


def good_run(tmp_path: Path, **overrides):
    """A shard set and arguments that pass check_run_inputs, for 2 ranks."""
    (tmp_path / "data").mkdir(exist_ok=True)
    for name in ("train_000000.bin", "train_000001.bin", "val_000000.bin"):
        if not (tmp_path / "data" / name).exists():
            write_shard(tmp_path / "data" / name, np.arange(10000) % 5000)
    fields = dict(train_files=str(tmp_path / "data" / "train_*.bin"), val_files=str(tmp_path / "data" / "val_*.bin"),
                  sequence_length=256, batch_size=1024, val_tokens=2048, num_iterations=10,
                  model_dim=64, num_heads=2, num_kv_heads=2, mlp_dim=128)
    fields.update(overrides)
    return train_gpt.Hyperparameters(**fields)


def test_check_run_inputs_accepts_good_input(tmp_path):
    train_files, val_files = train_gpt.check_run_inputs(good_run(tmp_path), world_size=2)
    assert [Path(f).name for f in train_files] == ["train_000000.bin", "train_000001.bin"]
    assert [Path(f).name for f in val_files] == ["val_000000.bin"]


def check_fails(args, world_size, *fragments):
    with pytest.raises(ValueError) as error:
        train_gpt.check_run_inputs(args, world_size)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))
    return str(error.value)


def test_check_run_inputs_rejects_bad_arguments(tmp_path):
    check_fails(good_run(tmp_path, train_files=str(tmp_path / "nowhere" / "*.bin")), 2,
                str(tmp_path / "nowhere" / "*.bin"), "train")
    check_fails(good_run(tmp_path, val_files=str(tmp_path / "data" / "missing_*.bin")), 2, "missing_*.bin", "val")
    check_fails(good_run(tmp_path, batch_size=1025), 2, "batch_size=1025", "2 ranks")
    check_fails(good_run(tmp_path, batch_size=768), 2, "batch_size=768", "micro-batches", "sequence_length=256")
    check_fails(good_run(tmp_path, sequence_length=200, batch_size=400, val_tokens=400), 2,
                "sequence_length=200", "128")
    check_fails(good_run(tmp_path, val_tokens=1000), 2, "val_tokens=1000", "512")
    check_fails(good_run(tmp_path, val_tokens=0), 2, "val_tokens=0")
    check_fails(good_run(tmp_path, attention_free_layers="7,x"), 2, "attention_free_layers='7,x'", "comma-separated")
    check_fails(good_run(tmp_path, attention_free_layers="12"), 2, "no layer 12")
    check_fails(good_run(tmp_path, num_iterations=0), 2, "num_iterations=0")
    check_fails(good_run(tmp_path, cooldown_frac=1.5), 2, "cooldown_frac=1.5")
    # The same batch is fine on 1 rank and on 4, with the micro-batch counts this implies.
    train_gpt.check_run_inputs(good_run(tmp_path), 1)
    train_gpt.check_run_inputs(good_run(tmp_path), 4)


def test_check_run_inputs_too_few_tokens_says_how_many_shards(tmp_path):
    # 2 train shards of 10000 tokens: each holds (10000 - 1) // 1024 = 9 steps of 1024 tokens.
    args = good_run(tmp_path, num_iterations=100)
    message = check_fails(args, 2, "train", "100 steps", "hold 18", str(tmp_path / "data"))
    shards = int(message.split("about ")[1].split(" such shards")[0])
    assert shards * 9 >= 100 and (shards - 1) * 9 < 100  # enough, and not more
    train_gpt.check_run_inputs(good_run(tmp_path, num_iterations=18), 2)  # exactly enough
    # Validation short of tokens fails the same way.
    check_fails(good_run(tmp_path, val_tokens=512 * 20), 2, "val", "20 micro-batches", "19 micro-batches",
                "lower val_tokens")


# (override, fragments of the error): every kind of bad hyperparameter, each caught before anything runs.
BAD_HYPERPARAMETERS = [
    (dict(num_iterations=-3), ["num_iterations=-3", "above 0"]),
    (dict(model_dim=0), ["model_dim=0", "above 0"]),
    (dict(num_heads=0), ["num_heads=0"]),
    (dict(mlp_dim=-64), ["mlp_dim=-64"]),
    (dict(vocab_size=0), ["vocab_size=0"]),
    (dict(vocab_size=50000), ["vocab_size=50000", "50256"]),
    (dict(vocab_size=70000), ["vocab_size=70000", "uint16"]),
    (dict(newton_schulz_steps=0), ["newton_schulz_steps=0"]),
    (dict(sample_tokens=0), ["sample_tokens=0"]),
    (dict(keep_checkpoints=0), ["keep_checkpoints=0"]),
    (dict(collective_timeout_s=0), ["collective_timeout_s=0"]),
    (dict(val_loss_every=-1), ["val_loss_every=-1", "0 or more"]),
    (dict(checkpoint_every=-5), ["checkpoint_every=-5"]),
    (dict(momentum_warmup_steps=-1), ["momentum_warmup_steps=-1"]),
    (dict(timing_warmup_steps=-2), ["timing_warmup_steps=-2"]),
    (dict(cooldown_frac=-0.1), ["cooldown_frac=-0.1", "fraction"]),
    (dict(cooldown_frac=float("nan")), ["cooldown_frac=nan"]),
    (dict(muon_momentum=1.5), ["muon_momentum=1.5", "fraction"]),
    (dict(muon_momentum_start=-0.5), ["muon_momentum_start=-0.5"]),
    (dict(muon_lr=float("nan")), ["muon_lr=nan", "finite"]),
    (dict(embed_lr=float("inf")), ["embed_lr=inf", "finite"]),
    (dict(head_lr=-0.1), ["head_lr=-0.1"]),
    (dict(scalar_lr=float("-inf")), ["scalar_lr=-inf"]),
    (dict(adam_eps=0.0), ["adam_eps=0.0", "above 0"]),
    (dict(logit_softcap=0.0), ["logit_softcap=0.0", "above 0"]),
    (dict(logit_softcap=float("nan")), ["logit_softcap=nan"]),
    (dict(peak_tflops=-1.0), ["peak_tflops=-1.0"]),
    (dict(window_start_tokens=64), ["window_start_tokens=64", "one 128-token block"]),
    (dict(window_end_tokens=0), ["window_end_tokens=0"]),
    (dict(model_dim=66, num_heads=3, num_kv_heads=3), ["model_dim=66", "head dim divisible by 4"]),
    (dict(num_heads=3, num_kv_heads=3), ["num_heads=3", "heads must divide"]),
    (dict(num_kv_heads=3, num_heads=2), ["num_kv_heads=3", "kv heads must divide"]),
    (dict(num_layers=7), ["num_layers=7", "even"]),
    (dict(num_layers=4), ["num_layers=4", ">= 6"]),
    (dict(attention_free_layers="7,x"), ["attention_free_layers='7,x'", "comma-separated"]),
    (dict(attention_free_layers="12"), ["no layer 12"]),
    (dict(compile="yes"), ["compile='yes'", "auto, true, false"]),
    (dict(compute_dtype="fp8"), ["compute_dtype='fp8'", "bfloat16"]),
    (dict(sample_at_end=True, sample_prompts=" "), ["sample_prompts"]),
    (dict(run_id="../outside"), ["run_id='../outside'", "letters"]),
    (dict(run_id="/tmp/abs"), ["run_id='/tmp/abs'"]),
    (dict(run_id=".hidden"), ["run_id='.hidden'"]),
]


@pytest.mark.parametrize("overrides,fragments", BAD_HYPERPARAMETERS, ids=[str(case[0]) for case in BAD_HYPERPARAMETERS])
def test_bad_hyperparameters_are_refused_naming_the_field(tmp_path, overrides, fragments):
    check_fails(good_run(tmp_path, **overrides), 2, *fragments)


def test_hyperparameters_are_frozen_and_every_field_has_a_meaning():
    args = train_gpt.Hyperparameters()
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.num_iteratons = 5  # a typo cannot create a field
    with pytest.raises(TypeError):
        dataclasses.replace(args, num_iteratons=5)
    for setting in dataclasses.fields(args):
        assert len(setting.metadata["meaning"]) > 10, setting.name
        assert setting.metadata["valid"] in (None, *train_gpt.RANGES), setting.name
    # Every numeric field has a range (strings and booleans are checked by value where it matters).
    unranged = [s.name for s in dataclasses.fields(args) if s.type in (int, float, "int", "float")
                and s.metadata["valid"] is None]
    assert unranged == []


def test_help_prints_every_field_with_its_meaning():
    result = subprocess.run([sys.executable, str(REPO / "train_gpt.py"), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    for setting in dataclasses.fields(train_gpt.Hyperparameters):
        assert f"--{setting.name}=" in result.stdout
        assert setting.metadata["meaning"] in result.stdout, setting.name


def test_relative_pattern_matching_nothing_names_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_fails(good_run(tmp_path, train_files="nowhere/*.bin"), 2, "'nowhere/*.bin'", str(tmp_path), "train")


def test_a_directory_matching_a_shard_pattern_is_refused(tmp_path):
    (tmp_path / "data" / "train_000002.bin").parent.mkdir(exist_ok=True)
    good_run(tmp_path)
    (tmp_path / "data" / "train_000002.bin").mkdir()
    check_fails(good_run(tmp_path), 2, str(tmp_path / "data" / "train_000002.bin"), "not a regular file")


def test_run_outputs_are_checked_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").write_text("a file where the log folder should be")
    with pytest.raises(train_gpt.InputError, match="cannot write logs into"):
        train_gpt.check_run_outputs(good_run(tmp_path))
    (tmp_path / "logs").unlink()
    train_gpt.check_run_outputs(good_run(tmp_path, run_id="fresh"))
    (tmp_path / "logs" / "old.txt").write_text("a finished run")
    with pytest.raises(train_gpt.InputError, match="old.txt exists"):
        train_gpt.check_run_outputs(good_run(tmp_path, run_id="old"))
    (tmp_path / "logs" / "gone").mkdir()
    (tmp_path / "logs" / "gone" / "step_000010.pt").write_bytes(b"a checkpoint whose log was deleted")
    with pytest.raises(train_gpt.InputError, match="already holds checkpoints"):
        train_gpt.check_run_outputs(good_run(tmp_path, run_id="gone"))
    assert (tmp_path / "logs" / "old.txt").read_text() == "a finished run"


def test_bad_shards_are_rejected_naming_the_file(tmp_path):
    cases = {
        "magic.bin": (dict(magic=12345), ["magic number 12345", "20240520"]),
        "version.bin": (dict(version=7), ["version 7"]),
        "truncated.bin": (dict(header_tokens=20000), ["20000 tokens", "truncated"]),
        "longer.bin": (dict(header_tokens=100), ["100 tokens"]),
    }
    for name, (kwargs, fragments) in cases.items():
        path = tmp_path / name
        write_shard(path, np.arange(10000) % 5000, **kwargs)
        with pytest.raises(ValueError) as error:
            train_gpt.read_shard_header(str(path))
        assert str(path) in str(error.value)
        for fragment in fragments:
            assert fragment in str(error.value), (name, str(error.value))
        # check_run_inputs reads every header up front
        (tmp_path / "set").mkdir(exist_ok=True)
        for old in (tmp_path / "set").glob("*"):
            old.unlink()
        write_shard(tmp_path / "set" / "train_000000.bin", np.arange(10000) % 5000)
        os.link(path, tmp_path / "set" / "train_000001.bin")
        args = good_run(tmp_path, train_files=str(tmp_path / "set" / "train_*.bin"))
        check_fails(args, 2, str(tmp_path / "set" / "train_000001.bin"))
    short = tmp_path / "short.bin"
    short.write_bytes(np.array([20240520, 1, 0], dtype="<i4").tobytes())
    with pytest.raises(ValueError) as error:
        train_gpt.read_shard_header(str(short))
    assert str(short) in str(error.value) and "12 bytes" in str(error.value) and "1024" in str(error.value)
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(300))
    assert train_gpt.read_shard_header(str(good)) == 300


def test_parse_hyperparameters():
    args = train_gpt.parse_hyperparameters(["--num_iterations=7", "--cooldown_frac=0.25", "--save_checkpoint=true",
                                            "--bf16_embeddings=0", "--run_id=abc=def", "--train_files=a/*.bin"])
    assert args.num_iterations == 7 and isinstance(args.num_iterations, int)
    assert args.cooldown_frac == 0.25
    assert args.save_checkpoint is True and args.bf16_embeddings is False
    assert args.run_id == "abc=def" and args.train_files == "a/*.bin"
    assert args.model_dim == train_gpt.Hyperparameters().model_dim  # untouched fields keep their defaults
    assert train_gpt.parse_hyperparameters([]) == train_gpt.Hyperparameters()
    assert math.isnan(train_gpt.parse_hyperparameters(["--embed_lr=nan"]).embed_lr)
    for argv, fragment in [(["--no_such_thing=1"], "no_such_thing"), (["--num_iterations"], "--num_iterations"),
                           (["num_iterations=3"], "num_iterations=3"), (["--num_iterations=3.5"], "int"),
                           (["--compile_me=1"], "compile_me"), (["--save_checkpoint=maybe"], "maybe")]:
        with pytest.raises(SystemExit) as error:
            train_gpt.parse_hyperparameters(argv)
        assert fragment in str(error.value.code), (argv, error.value.code)


# -----------------------------------------------------------------------------
# The resume warning about other code

CODE = "a = 1\nb = 2\nc = 3\n"  # this file's code; each case is the code that wrote the checkpoint
CODE_CHANGES = {
    "same": (CODE, None),
    "one line changed": (CODE.replace("b = 2", "b = 5"), "2 line(s) differ, the first: '-b = 5'"),
    "one line added since": (CODE.replace("c = 3\n", ""), "1 line(s) differ, the first: '+c = 3'"),
    "one line removed since": (CODE + "d = 4\n", "1 line(s) differ, the first: '-d = 4'"),
    "removed line that starts with --": ("--x\n" + CODE, "1 line(s) differ, the first: '---x'"),
    "final newline only": (CODE.rstrip("\n"), "only line endings or the final newline differ"),
    "line endings only": (CODE.replace("\n", "\r\n"), "only line endings or the final newline differ"),
}


@pytest.mark.parametrize("saved,expected", CODE_CHANGES.values(), ids=CODE_CHANGES.keys())
def test_code_difference_names_the_first_changed_line(saved, expected):
    assert train_gpt.code_difference(saved, CODE) == expected

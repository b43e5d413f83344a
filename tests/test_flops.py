"""The FLOP count behind the trainer's tokens/s and MFU log: train_gpt.training_flops_per_token and
train_gpt.mean_attended_keys, checked against torch's FlopCounterMode and the trainer's own dense mask."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import train_gpt

SEQUENCE_LENGTH = 256
SMALL = dict(vocab_size=512, num_layers=6, model_dim=64, num_heads=2, mlp_dim=256)


def counted_training_flops(num_kv_heads, attention_free_layers, backend, custom_mapping=None) -> int:
    """FlopCounterMode's count for one forward (with the loss) + backward of a small GPT on the CPU path."""
    torch.manual_seed(0)
    model = train_gpt.GPT(**SMALL, num_kv_heads=num_kv_heads, max_seq_len=SEQUENCE_LENGTH, logit_softcap=15.0,
                          attention_free_layers=attention_free_layers,
                          mask_function=train_gpt.dense_sliding_window_mask)
    inputs, targets = torch.randint(0, SMALL["vocab_size"], (2, SEQUENCE_LENGTH))
    counter = FlopCounterMode(display=False, custom_mapping=custom_mapping or {})
    with sdpa_kernel(backend), counter:
        model(inputs, targets, torch.tensor(1, dtype=torch.int32)).backward()
    return counter.get_total_flops()


def formula_training_flops(num_kv_heads, attention_free_layers, attended_keys) -> float:
    num_attention_layers = SMALL["num_layers"] - len(attention_free_layers)
    return SEQUENCE_LENGTH * train_gpt.training_flops_per_token(
        **SMALL, num_kv_heads=num_kv_heads, num_attention_layers=num_attention_layers, attended_keys=attended_keys)


# What FlopCounterMode counts (PyTorch 2.13, CPU): every aten.mm by its shapes, values ignored - so the zero-init
# LM head and output projections count in full, forward and both backward products (input and weight grads;
# the first block's input needs a grad too, through the embedding). The bf16 casts of the weights (type_as),
# norms, rotary, soft cap, softmax, cross-entropy and elementwise ops count 0, as in the formula; embedding
# lookups count 0. Attention: the CPU path runs SDPA with a dense boolean (time, time) mask, and every
# counter of SDPA is dense (each query x every key) whatever the mask - so the comparison uses
# attended_keys = sequence_length, not the masked mean. (FlexAttention on GPU is counted dense too, unless
# given a sparsity hint: never use FlopCounterMode's attention figure for the trainer's MFU.)
#
# The default CPU kernel, aten._scaled_dot_product_flash_attention_for_cpu, has no formula in FlopCounterMode
# and counts 0. The MATH backend decomposes SDPA into bmm's (q k^T, p v; with GQA, k and v repeated to all
# heads first), and autograd's backward of each bmm is two bmm's: exactly 3x forward, the formula's convention.
# The count then matches the formula exactly (ratio 1.000000 for the three shapes below).
@pytest.mark.parametrize("num_kv_heads, attention_free_layers", [(2, (3,)), (1, (3,)), (2, ()), (1, (0, 5))])
def test_formula_matches_flop_counter(num_kv_heads, attention_free_layers):
    counted = counted_training_flops(num_kv_heads, attention_free_layers, SDPBackend.MATH)
    expected = formula_training_flops(num_kv_heads, attention_free_layers, attended_keys=SEQUENCE_LENGTH)
    assert counted == pytest.approx(expected, rel=1e-6)


# Torch's own SDPA formulas (used for the CUDA flash / efficient / cuDNN kernels and for FlexAttention), given
# here to the CPU kernel: the backward counts 5 products (it recomputes q k^T, like the flash kernels do), i.e.
# 2.5x forward, where the formula's model FLOPs take 2x. The count exceeds the formula by half the forward
# attention products: here by 5.7% (0.0575 = 0.5 * 83.9M / 729.8M).
def test_torch_sdpa_formulas_count_backward_as_two_and_a_half_forward():
    aten = torch.ops.aten  # the formulas take shapes: q, k, v forward; grad_out, q, k, v backward
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu:
               lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
               aten._scaled_dot_product_flash_attention_for_cpu_backward:
               lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v)}
    counted = counted_training_flops(2, (3,), SDPBackend.FLASH_ATTENTION, mapping)
    matrices = formula_training_flops(2, (3,), attended_keys=0)
    attention = formula_training_flops(2, (3,), attended_keys=SEQUENCE_LENGTH) - matrices  # 3x forward
    assert counted == pytest.approx(matrices + attention * 3.5 / 3, rel=1e-6)


@pytest.mark.parametrize("sequence_length, window_blocks", [
    (128, 1), (128, 5), (256, 1), (256, 2), (384, 2), (384, 3), (512, 1), (512, 2), (512, 3), (512, 4),
    (512, 14), (300, 2), (200, 1)])
def test_mean_attended_keys_matches_dense_mask(sequence_length, window_blocks):
    documents = torch.zeros(sequence_length, dtype=torch.long)  # one document: no boundary shortens the window
    mask = train_gpt.dense_sliding_window_mask(documents, torch.tensor(window_blocks, dtype=torch.int32))
    brute_force = mask.sum().item() / sequence_length
    assert train_gpt.mean_attended_keys(sequence_length, window_blocks) == pytest.approx(brute_force, rel=1e-12)


def test_mean_attended_keys_closed_forms():
    assert train_gpt.mean_attended_keys(65536, 1) == 64.5  # (128 + 1) / 2: the own block, causally
    assert train_gpt.mean_attended_keys(1024, 8) == 1025 / 2  # window covers the sequence: plain causal
    assert train_gpt.mean_attended_keys(1024, 100) == 1025 / 2
    # 512 blocks, window 14: 64.5 + 128 * (0 + 1 + ... + 12 + 13 * 499) / 512
    assert train_gpt.mean_attended_keys(65536, 14) == 64.5 + 128 * (78 + 13 * 499) / 512 == 1705.75


# The record model, 12 x 768, at sequence_length 65536. The design notes' "about 780 MFLOP per token
# (6 x 121M matrix parameters + attention)" does not hold by construction: 6 x 121.2M = 727.3M, and attention
# at the final 14-block window adds 172.9M (900.2M in all), at 1 block 6.5M (733.8M). So check the two parts.
def test_record_model_flops_per_token():
    model = dict(num_layers=12, model_dim=768, num_heads=6, num_kv_heads=6, mlp_dim=3072, vocab_size=50304,
                 num_attention_layers=11)
    matrix_params = 12 * 2 * 768 * 3072 + 11 * 4 * 768 * 768 + 768 * 50304
    assert matrix_params == 121_208_832
    matrices = train_gpt.training_flops_per_token(**model, attended_keys=0)
    assert matrices == 6 * matrix_params == 727_252_992
    for window_blocks, keys, attention in [(1, 64.5, 6_538_752), (14, 1705.75, 172_922_112)]:
        attended_keys = train_gpt.mean_attended_keys(65536, window_blocks)
        assert attended_keys == keys
        total = train_gpt.training_flops_per_token(**model, attended_keys=attended_keys)
        assert total - matrices == 3 * 11 * 2 * 2 * 768 * keys == attention  # 3 x (q k^T + p v), 11 layers

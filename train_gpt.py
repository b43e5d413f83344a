"""NanoGPT speedrun trainer: a GPT-2-small-sized model trained on FineWeb to 3.28 validation loss.

One file, read top to bottom: Muon, the model's modules, the GPT, the data loader, the hyperparameters,
setup, and the training loop in its phases (setup, evaluate, one training step, finish). The design is the
public speedrun's as of January 2025; DESIGN.md beside this file explains every part and its figures.

    torchrun --standalone --nproc_per_node=8 train_gpt.py             # a record attempt
    torchrun --standalone --nproc_per_node=1 train_gpt.py --num_iterations=100
    python train_gpt.py --help                                        # every hyperparameter

Every field of `Hyperparameters` can be overridden as --name=value. On a machine without CUDA the same
script trains on the CPU (gloo, SDPA attention with a dense mask, float32 activations, no compilation).
"""

import os

# Set before CUDA starts: fewer fragmentation stalls with the large, changing activation sizes.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import dataclasses
import difflib
import functools
import glob
import json
import math
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
import warnings
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch._inductor.config as inductor_config
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from torch.nn.parallel import DistributedDataParallel as DDP

EOT_TOKEN = 50256  # GPT-2's <|endoftext|>; it starts every document
ATTENTION_BLOCK = 128  # FlexAttention's block size; sequence lengths are multiples of it


class InputError(ValueError):
    """Bad input that the user can fix: the message names the file or the value, and the remedy."""


# -----------------------------------------------------------------------------
# Muon: momentum orthogonalized by Newton-Schulz (Keller Jordan's optimizer for hidden matrices)


def newton_schulz_orthogonalize(grad: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately replaces grad's singular values by values near 1 (roughly U V^T of its SVD).

    A quintic iteration whose coefficients maximise the slope at zero; it does not converge to exactly 1
    but leaves singular values in a band around it, which trains as well and costs only 5 steps in bf16.
    Leading dimensions are a batch of matrices of one shape (batched_muon), each orthogonalized on its own.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = grad.bfloat16()
    transposed = grad.size(-2) > grad.size(-1)
    if transposed:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius >= spectral norm, so spectral <= 1
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    return x.mT if transposed else x


# torch 2.13 deprecates all_gather_into_tensor for all_gather_single; the flat-buffer form suits NCCL and gloo.
all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for the 2-D weights inside the transformer blocks.

    Parameters of equal size form a group. Each group is walked in chunks of world_size parameters:
    rank r orthogonalizes parameter r of the chunk, and all ranks exchange the updates with an
    asynchronous all_gather that overlaps the next chunk's Newton-Schulz. Momentum buffers therefore
    live only on the rank that owns the parameter; the result is the same on any number of ranks.

    row_splits maps a parameter that stacks several matrices (merged_qkv's q, k and v) to their row counts:
    each of its row blocks is orthogonalized and scaled as its own matrix, so the update is the unmerged one.
    """

    def __init__(self, params, lr: float, momentum: float, nesterov: bool = True, ns_steps: int = 5,
                 rank: int = 0, world_size: int = 1, orthogonalize=newton_schulz_orthogonalize,
                 row_splits: dict | None = None):
        params = list(params)
        sizes = sorted({p.numel() for p in params}, reverse=True)
        groups = [dict(params=[p for p in params if p.numel() == size]) for size in sizes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))
        self.rank, self.world_size, self.orthogonalize = rank, world_size, orthogonalize
        self.row_splits = row_splits or {}
        # One flat bf16 receive buffer per group, kept outside param_groups so state_dict stays small.
        self.gather_buffers = [torch.empty(world_size * size, dtype=torch.bfloat16, device=params[0].device)
                               for size in sizes]

    def matrices(self, tensor: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """tensor (param's shape, or flat) as the matrices Muon orthogonalizes: param's row blocks."""
        return tensor.view_as(param).split(self.row_splits.get(param, param.size(0)))

    def momentum_update(self, param: torch.Tensor, group: dict) -> torch.Tensor:
        """Updates param's momentum buffer with its gradient; returns what is orthogonalized (Nesterov's)."""
        grad, momentum = param.grad, group["momentum"]
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buffer = state["momentum_buffer"]
        buffer.lerp_(grad, 1 - momentum)  # EMA of gradients
        return grad.lerp_(buffer, momentum) if group["nesterov"] else buffer

    def _orthogonalized_momentum(self, param: torch.Tensor, group: dict) -> torch.Tensor:
        update = self.momentum_update(param, group)
        orthogonalized = [self.orthogonalize(matrix, group["ns_steps"]).flatten()
                          for matrix in self.matrices(update, param)]
        return torch.cat(orthogonalized) if len(orthogonalized) > 1 else orthogonalized[0]

    def apply_update(self, param: torch.Tensor, update: torch.Tensor, lr: float):
        """param -= lr x update, each matrix scaled by sqrt(max(1, rows / columns))."""
        for block, block_update in zip(self.matrices(param, param), self.matrices(update, param)):
            shape_scale = max(1.0, block.size(-2) / block.size(-1)) ** 0.5
            block.add_(block_update, alpha=-lr * shape_scale)

    def owned_parameters(self):
        """(parameter, rank that owns its momentum) for every parameter, in the order step() walks them."""
        for group in self.param_groups:
            for index, param in enumerate(group["params"]):
                yield param, index % self.world_size

    @torch.no_grad()
    def step(self):
        for group, gathered in zip(self.param_groups, self.gather_buffers):
            params, rows = group["params"], gathered.view(self.world_size, -1)
            in_flight = None  # (handle, chunk) whose updates are still arriving

            def apply_updates(handle, chunk):
                handle.wait()
                for param, update in zip(chunk, rows):  # a last, short chunk ignores the spare rows
                    self.apply_update(param, update, group["lr"])

            for start in range(0, len(params), self.world_size):
                chunk = params[start:start + self.world_size]
                # A rank without a parameter in the last chunk sends its own row back unchanged.
                mine = (self._orthogonalized_momentum(chunk[self.rank], group) if self.rank < len(chunk)
                        else rows[self.rank])
                if in_flight is not None:  # the previous chunk's updates are read before the buffer is reused
                    apply_updates(*in_flight)
                in_flight = (all_gather_flat(gathered, mine, async_op=True), chunk)
            apply_updates(*in_flight)


class BatchedMuon(Muon):
    """Muon with one batched Newton-Schulz per matrix shape (batched_muon): each rank orthogonalizes all the
    matrices it owns at once, shape by shape, tall ones transposed to their wide orientation (as the loop
    does each), then exchanges each group's updates with one all_gather. The owners are Muon's, so the
    momentum buffers and checkpoints are the same; the result equals the loop's to bf16 rounding (a batched
    product may round differently). A later record's way (@kellerjordan0's batched Muon)."""

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        # Group g's buffer holds world_size rows of its chunks' updates: rank r's row carries its parameter of
        # every chunk (a rank without one in the last chunk sends padding).
        self.gather_buffers = [torch.empty(self.world_size * self.chunks(group) * group["params"][0].numel(),
                                           dtype=torch.bfloat16, device=group["params"][0].device)
                               for group in self.param_groups]

    def chunks(self, group: dict) -> int:
        return -(-len(group["params"]) // self.world_size)

    def orthogonalized_owned(self) -> dict:
        """param -> its flat bf16 update, for every parameter this rank owns: one orthogonalize call per
        (wide shape, steps)."""
        pieces = {}  # param -> [matrix, transposed?] for each matrix it is orthogonalized as
        by_shape = {}  # (wide shape, steps) -> [(param, index into pieces[param])]
        for group in self.param_groups:
            for param in group["params"][self.rank::self.world_size]:
                update = self.momentum_update(param, group)
                pieces[param] = []
                for matrix in self.matrices(update, param):
                    tall = matrix.size(-2) > matrix.size(-1)
                    wide = matrix.mT if tall else matrix
                    by_shape.setdefault((tuple(wide.shape), group["ns_steps"]), []).append((param, len(pieces[param])))
                    pieces[param].append([wide, tall])
        for (_, steps), members in by_shape.items():
            stacked = self.orthogonalize(torch.stack([pieces[param][index][0] for param, index in members]), steps)
            for (param, index), result in zip(members, stacked):
                pieces[param][index][0] = result.mT if pieces[param][index][1] else result
        return {param: torch.cat([matrix.flatten() for matrix, _ in matrices]) for param, matrices in pieces.items()}

    @torch.no_grad()
    def step(self):
        updates = self.orthogonalized_owned()
        exchanges = []
        for group, gathered in zip(self.param_groups, self.gather_buffers):
            params, size = group["params"], group["params"][0].numel()
            mine = [updates[param] for param in params[self.rank::self.world_size]]
            if len(mine) < self.chunks(group):  # no parameter of this rank in the last chunk
                mine.append(torch.zeros(size, dtype=torch.bfloat16, device=gathered.device))
            exchanges.append((all_gather_flat(gathered, torch.cat(mine), async_op=True), group, gathered))
        for handle, group, gathered in exchanges:
            handle.wait()
            rows = gathered.view(self.world_size, self.chunks(group), -1)
            for index, param in enumerate(group["params"]):
                self.apply_update(param, rows[index % self.world_size, index // self.world_size], group["lr"])


# -----------------------------------------------------------------------------
# Model modules


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """A bias-free linear layer with an fp32 master weight, cast to the activations' dtype (bf16)."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        if zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.type_as(x))


class Rotary(nn.Module):
    """Rotary position embedding, applied in fp32 (bf16 tables lose precision at long positions).

    Half-truncated (an idea of @YouJiacheng): a quarter of the head dims get frequencies from 1 down to
    1/1024, another quarter frequency 0, so half of each head rotates and half carries no position.
    """

    def __init__(self, head_dim: int, max_seq_len: int):
        super().__init__()
        quarter = head_dim // 4
        frequencies = torch.cat([(1 / 1024) ** torch.linspace(0, 1, quarter), torch.zeros(quarter)])
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), frequencies)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, time, heads, head_dim)
        cos, sin = self.cos[None, :x.size(1), None, :], self.sin[None, :x.size(1), None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


def sliding_window_block_mask(documents: torch.Tensor, window_blocks: torch.Tensor,
                              window_in_mask_mod: bool = True) -> BlockMask:
    """FlexAttention mask: causal, within one document, and at most window_blocks blocks back.

    documents[i] is the document index of token i. A (query block, key block) pair is FULL when every token
    pair in it is allowed (key block strictly earlier, both blocks inside one and the same document, inside
    the window): FlexAttention then skips mask_mod there. A pair that may hold some allowed token pairs is
    PARTIAL and evaluated token by token. The window itself is enforced at block granularity.
    """
    num_blocks = len(documents) // ATTENTION_BLOCK
    block_documents = documents.view(num_blocks, ATTENTION_BLOCK)
    first_doc, last_doc = block_documents[:, 0], block_documents[:, -1]
    block = torch.arange(num_blocks, device=documents.device)
    query_block, key_block = block[:, None], block[None, :]
    in_window = (query_block >= key_block) & (query_block - key_block < window_blocks)
    documents_overlap = (first_doc[:, None] <= last_doc[None, :]) & (first_doc[None, :] <= last_doc[:, None])
    single_document = first_doc == last_doc
    same_single_document = (single_document[:, None] & single_document[None, :]
                            & (first_doc[:, None] == first_doc[None, :]))
    full = in_window & (query_block > key_block) & same_single_document
    partial = in_window & documents_overlap & ~full

    def counts_and_sorted_indices(blocks: torch.Tensor):
        counts = blocks.sum(dim=-1, dtype=torch.int32)
        # Stable descending sort puts each row's selected key blocks first, in increasing order.
        indices = blocks.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)
        return counts[None, None].contiguous(), indices[None, None].contiguous()

    def causal_same_document(batch, head, query_index, key_index):
        return (query_index >= key_index) & (documents[query_index] == documents[key_index])

    def causal_same_document_in_window(batch, head, query_index, key_index):
        # Eager FlexAttention evaluates mask_mod everywhere, so there the token rule must be whole.
        return (causal_same_document(batch, head, query_index, key_index)
                & (query_index // ATTENTION_BLOCK - key_index // ATTENTION_BLOCK < window_blocks))

    return BlockMask.from_kv_blocks(*counts_and_sorted_indices(partial), *counts_and_sorted_indices(full),
                                    BLOCK_SIZE=ATTENTION_BLOCK,
                                    mask_mod=causal_same_document_in_window if window_in_mask_mod
                                    else causal_same_document)


def compiled_sliding_window_block_mask(documents: torch.Tensor, window_blocks: torch.Tensor) -> BlockMask:
    """sliding_window_block_mask for compiled FlexAttention, which evaluates mask_mod only inside the listed
    PARTIAL blocks, and those lie inside the window: so mask_mod leaves the window out, as the record's does.
    With the window term (a captured tensor) the compiled backward takes a path the record never ran."""
    return sliding_window_block_mask(documents, window_blocks, window_in_mask_mod=False)


def dense_sliding_window_mask(documents: torch.Tensor, window_blocks: torch.Tensor) -> torch.Tensor:
    """The same rule as sliding_window_block_mask, token by token: (time, time) bools for SDPA (CPU path)."""
    token = torch.arange(len(documents), device=documents.device)
    query, key = token[:, None], token[None, :]
    return ((query >= key) & (documents[query] == documents[key])
            & (query // ATTENTION_BLOCK - key // ATTENTION_BLOCK < window_blocks))


class CausalSelfAttention(nn.Module):
    def __init__(self, model_dim: int, num_heads: int, num_kv_heads: int, max_seq_len: int):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = model_dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.q = CastedLinear(model_dim, model_dim)
        self.k = CastedLinear(model_dim, kv_dim)
        self.v = CastedLinear(model_dim, kv_dim)
        self.value_lambdas = nn.Parameter(torch.tensor([0.5, 0.5]))  # mix of v and the value embedding
        self.rotary = Rotary(self.head_dim, max_seq_len)
        self.proj = CastedLinear(model_dim, model_dim, zero_init=True)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q(x), self.k(x), self.v(x)

    def forward(self, x: torch.Tensor, value_embedding: torch.Tensor | None, mask) -> torch.Tensor:
        time_len = x.size(1)
        q, k, v = self.project_qkv(x)
        q = q.view(1, time_len, self.num_heads, self.head_dim)
        k = k.view(1, time_len, self.num_kv_heads, self.head_dim)
        v = self.value_lambdas[0] * v.view(1, time_len, self.num_kv_heads, self.head_dim)
        if value_embedding is not None:
            v = v + self.value_lambdas[1] * value_embedding.view_as(v)
        q, k = self.rotary(norm(q)), self.rotary(norm(k))  # QK-norm before rotary
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        grouped = self.num_kv_heads != self.num_heads
        if isinstance(mask, BlockMask):
            y = flex_attention(q, k, v, block_mask=mask, enable_gqa=grouped)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=grouped)
        return self.proj(y.transpose(1, 2).reshape(1, time_len, -1))


class MergedQKVAttention(CausalSelfAttention):
    """q, k and v from one product with their weights stacked in one matrix (merged_qkv, a later record's
    merged QKV): one larger product instead of three, forward and backward. Muon still orthogonalizes q, k
    and v apart (Muon.row_splits), and checkpoints hold them apart (checkpoint_layout), so the math and the
    files are the unmerged model's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # draws q, k and v as the unmerged model does: same seed, same weights
        self.qkv_rows = (self.q.out_features, self.k.out_features, self.v.out_features)
        merged = torch.cat([self.q.weight, self.k.weight, self.v.weight]).detach()
        del self.q, self.k, self.v
        with torch.random.fork_rng(devices=[]):  # its own random init is replaced: leave the seed's stream alone
            self.qkv = CastedLinear(merged.size(1), merged.size(0))
        self.qkv.weight = nn.Parameter(merged)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.qkv(x).split(self.qkv_rows, dim=-1)


class MLP(nn.Module):
    def __init__(self, model_dim: int, hidden_dim: int):
        super().__init__()
        self.fc = CastedLinear(model_dim, hidden_dim)
        self.proj = CastedLinear(hidden_dim, model_dim, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, model_dim: int, num_heads: int, num_kv_heads: int, mlp_dim: int, max_seq_len: int,
                 has_attention: bool, attention: type = CausalSelfAttention):
        super().__init__()
        self.attn = attention(model_dim, num_heads, num_kv_heads, max_seq_len) if has_attention else None
        self.mlp = MLP(model_dim, mlp_dim)
        self.x0_lambdas = nn.Parameter(torch.tensor([1.0, 0.0]))  # x = l0 * x + l1 * x0

    def forward(self, x, x0, value_embedding, mask):
        x = self.x0_lambdas[0] * x + self.x0_lambdas[1] * x0
        if self.attn is not None:
            x = x + self.attn(norm(x), value_embedding, mask)
        return x + self.mlp(norm(x))


# -----------------------------------------------------------------------------
# The LM head and its loss: the plain path, and the speed switches fp8_head and fused_loss


def softcapped_logits(logits: torch.Tensor, softcap: float) -> torch.Tensor:
    """cap * tanh(logits / cap) in the logits' dtype, then fp32 for the cross-entropy."""
    return (softcap * torch.tanh(logits / softcap)).float()


def softcapped_cross_entropy(x: torch.Tensor, lm_head: CastedLinear, targets: torch.Tensor,
                             softcap: float) -> torch.Tensor:
    """The plain path: the whole (tokens x vocab) logits, soft-capped, then the mean cross-entropy over the
    targets that are not IGNORED_TARGET."""
    return F.cross_entropy(softcapped_logits(lm_head(x), softcap), targets)


# FP8 scales of the record of 2025-01-13 (@YouJiacheng's FP8 head): x, W and the gradient are multiplied by them
# before their cast to FP8 (e4m3 for x and W, e5m2 for the gradient) and the products divided by them. The
# record's gradient is that of a mean over FP8_GRAD_TOKENS tokens (its micro-batch); a mean over n tokens has
# gradients n / FP8_GRAD_TOKENS times smaller, so it gets a scale that much larger (fp8_grad_scale).
FP8_INPUT_SCALE, FP8_WEIGHT_SCALE, FP8_GRAD_SCALE, FP8_GRAD_TOKENS = 2.0, 32.0, 2.0**29, 65536


def fp8_grad_scale(grad_tokens: int) -> float:
    return FP8_GRAD_SCALE * grad_tokens / FP8_GRAD_TOKENS


def to_fp8(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """x * scale in an FP8 dtype, saturated at its largest finite value (PyTorch 2.11 casts beyond it to NaN)."""
    largest = torch.finfo(dtype).max
    return (x * scale).clamp(-largest, largest).to(dtype)


def scaled_mm(a: torch.Tensor, b: torch.Tensor, a_scale: float, b_scale: float, out_dtype: torch.dtype,
              fast_accum: bool = False) -> torch.Tensor:
    """a @ b / (a_scale * b_scale) for FP8 operands from to_fp8; a row-major, b column-major, sizes % 16 == 0."""
    return torch._scaled_mm(a, b, scale_a=a.new_tensor(1 / a_scale, dtype=torch.float32),
                            scale_b=a.new_tensor(1 / b_scale, dtype=torch.float32), out_dtype=out_dtype,
                            use_fast_accum=fast_accum)


class CastedProducts:
    """The head's three products (logits = x W^T, grad_x = g W, grad_W = g^T x) as CastedLinear computes them:
    in the activations' dtype, the fp32 master weight cast once. For chunked_softcapped_cross_entropy, which
    computes the head's gradients itself."""

    @staticmethod
    def weight_operand(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return weight.to(dtype)

    @staticmethod
    def input_operand(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def output(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return x @ weight.T

    @staticmethod
    def grads(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype, grad_tokens: int):
        """(grad_x in dtype, grad_W in fp32) from grad, the gradient of a mean over grad_tokens tokens."""
        grad = grad.to(dtype)
        return grad @ weight, (grad.T @ x).float()


class FP8Products:
    """The same three products in FP8 through torch._scaled_mm, as the record of 2025-01-13: x and W in e4m3,
    the gradient in e5m2 (more range, less precision); fast accumulation only for the logits."""

    @staticmethod
    def weight_operand(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return to_fp8(weight, FP8_WEIGHT_SCALE, torch.float8_e4m3fn)

    @staticmethod
    def input_operand(x: torch.Tensor) -> torch.Tensor:
        return to_fp8(x, FP8_INPUT_SCALE, torch.float8_e4m3fn)

    @staticmethod
    def output(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return scaled_mm(x, weight.T, FP8_INPUT_SCALE, FP8_WEIGHT_SCALE, dtype, fast_accum=True)

    @staticmethod
    def grads(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype, grad_tokens: int):
        grad_scale = fp8_grad_scale(grad_tokens)
        grad = to_fp8(grad, grad_scale, torch.float8_e5m2)
        grad_x = scaled_mm(grad, weight.T.contiguous().T, grad_scale, FP8_WEIGHT_SCALE, dtype)
        # grad_W^T = x^T g: the record found it faster than g^T x for (vocab, dim) = (50304, 768)
        grad_w = scaled_mm(x.T.contiguous(), grad.T.contiguous().T, FP8_INPUT_SCALE, grad_scale, torch.float32)
        return grad_x, grad_w.T


class FP8Linear(torch.autograd.Function):
    """x @ W^T with FP8Products, forward and backward; the backward keeps only the FP8 copies of x and W."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, grad_tokens: int) -> torch.Tensor:
        x8, w8 = FP8Products.input_operand(x), FP8Products.weight_operand(weight, x.dtype)
        ctx.save_for_backward(x8, w8)
        ctx.dtype, ctx.grad_tokens = x.dtype, grad_tokens
        return FP8Products.output(x8, w8, x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x8, w8 = ctx.saved_tensors
        grad_x, grad_w = FP8Products.grads(grad.contiguous(), x8, w8, ctx.dtype, ctx.grad_tokens)
        return grad_x, grad_w, None


class FP8CastedLinear(CastedLinear):
    """fp8_head: the LM head with its three products in FP8 while training; without gradients (validation,
    samples) it is the plain bf16 head, as in the record. The same weight as CastedLinear: checkpoints load
    either way. grad_tokens: the tokens the loss reaching it averages over (a rank's tokens per step)."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False,
                 grad_tokens: int = FP8_GRAD_TOKENS):
        super().__init__(in_features, out_features, zero_init)
        self.grad_tokens = grad_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        return FP8Linear.apply(x.flatten(0, -2), self.weight, self.grad_tokens).view(*x.shape[:-1], -1)


def chunked_loss_and_grads(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                           chunk_tokens: int, products, with_grads: bool):
    """softcapped_cross_entropy's loss over chunks of chunk_tokens tokens, and (with_grads) its gradients with
    respect to x and the fp32 weight; (loss, grad_x, grad_w). Only one chunk's logits exist at a time.

    d loss / d logit = (softmax - onehot(target)) * (1 - tanh^2) / tokens, tanh the soft cap's; rows of
    IGNORED_TARGET count for nothing. The soft cap is computed in fp32 (the plain path: in the logits' dtype)."""
    counted = targets != IGNORED_TARGET
    tokens = counted.sum()
    w = products.weight_operand(weight, x.dtype)
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    grad_x, grad_w = [], torch.zeros_like(weight, dtype=torch.float32) if with_grads else None
    vocab = torch.arange(weight.size(0), device=x.device)
    for start in range(0, len(x), chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        x_chunk, chunk_targets, chunk_counted = products.input_operand(x[rows]), targets[rows], counted[rows]
        tanh = torch.tanh(products.output(x_chunk, w, x.dtype).float() / softcap)
        logits = softcap * tanh
        log_normalizer = torch.logsumexp(logits, dim=-1)
        target_logits = logits.gather(-1, chunk_targets.clamp(min=0)[:, None])[:, 0]  # IGNORED_TARGET < 0
        loss = loss + torch.where(chunk_counted, log_normalizer - target_logits, 0.0).sum()
        if with_grads:
            grad = ((torch.exp(logits - log_normalizer[:, None]) - (vocab == chunk_targets[:, None]).float())
                    * (1 - tanh.square()) * (chunk_counted / tokens)[:, None])
            chunk_grad_x, chunk_grad_w = products.grads(grad, x_chunk, w, x.dtype, len(x))
            grad_x.append(chunk_grad_x)
            grad_w = grad_w + chunk_grad_w
    return loss / tokens, torch.cat(grad_x) if with_grads else None, grad_w


class ChunkedSoftcappedCrossEntropy(torch.autograd.Function):
    """chunked_loss_and_grads as an autograd function: the gradients are computed in the forward, chunk by
    chunk, from the logits then at hand, and the backward only scales them by the loss's incoming gradient (as
    Liger Kernel's fused linear cross-entropy does). So the head costs its three products, as on the plain
    path; recomputing each chunk's logits in the backward instead would add a fourth (about a tenth of the
    model's matrix FLOPs). What is kept from forward to backward is grad_x and the fp32 grad_W."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                chunk_tokens: int, products) -> torch.Tensor:
        loss, grad_x, grad_w = chunked_loss_and_grads(x, weight, targets, softcap, chunk_tokens, products, True)
        ctx.save_for_backward(grad_x, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None, None


def chunked_softcapped_cross_entropy(x: torch.Tensor, lm_head: CastedLinear, targets: torch.Tensor,
                                     softcap: float, chunk_tokens: int, products=CastedProducts) -> torch.Tensor:
    """fused_loss: softcapped_cross_entropy (same math to fp32 rounding) without the whole (tokens x vocab)
    logits. products: CastedProducts, or FP8Products with fp8_head (while training; without gradients the
    head's products are bf16, as FP8CastedLinear's)."""
    if torch.is_grad_enabled():
        return ChunkedSoftcappedCrossEntropy.apply(x, lm_head.weight, targets, softcap, chunk_tokens, products)
    return chunked_loss_and_grads(x, lm_head.weight, targets, softcap, chunk_tokens, CastedProducts, False)[0]


# -----------------------------------------------------------------------------
# The GPT


class GPT(nn.Module):
    """U-Net-shaped GPT: the first half's outputs are added back, weighted, into the second half in reverse.

    Three value-embedding tables feed v in the first three and the last three layers ("012 ... 012").
    Activations run in activation_dtype (bfloat16 on the GPU); the cross-entropy is always float32.
    """

    def __init__(self, vocab_size: int, num_layers: int, model_dim: int, num_heads: int, num_kv_heads: int,
                 mlp_dim: int, max_seq_len: int, logit_softcap: float, attention_free_layers: tuple[int, ...],
                 num_value_embeddings: int = 3, mask_function=sliding_window_block_mask,
                 activation_dtype: torch.dtype = torch.bfloat16, attention: type = CausalSelfAttention,
                 head: type = CastedLinear, head_loss=softcapped_cross_entropy):
        super().__init__()
        self.num_layers, self.logit_softcap, self.mask_function = num_layers, logit_softcap, mask_function
        self.head_loss = head_loss  # (x, lm_head, targets, softcap) -> mean loss
        self.activation_dtype = activation_dtype
        self.num_encoder_layers = num_layers // 2
        kv_dim = num_kv_heads * (model_dim // num_heads)
        self.embed = nn.Embedding(vocab_size, model_dim)
        self.value_embeds = nn.ModuleList(nn.Embedding(vocab_size, kv_dim) for _ in range(num_value_embeddings))
        self.blocks = nn.ModuleList(
            Block(model_dim, num_heads, num_kv_heads, mlp_dim, max_seq_len, has_attention=i not in attention_free_layers,
                  attention=attention)
            for i in range(num_layers))
        self.skip_weights = nn.Parameter(torch.ones(num_layers - self.num_encoder_layers))
        self.lm_head = head(model_dim, vocab_size, zero_init=True)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None, window_blocks: torch.Tensor):
        """inputs: one flat token sequence (documents separated by EOT). Returns the mean loss, or the
        logits of every position when targets is None."""
        assert inputs.ndim == 1 and len(inputs) % ATTENTION_BLOCK == 0
        documents = (inputs == EOT_TOKEN).cumsum(0)
        mask = self.mask_function(documents, window_blocks)
        x = x0 = norm(self.embed(inputs)[None].to(self.activation_dtype))
        tables = [table(inputs).to(self.activation_dtype) for table in self.value_embeds]
        value_embeddings = tables + [None] * (self.num_layers - 2 * len(tables)) + tables
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= self.num_encoder_layers:  # the decoder takes the encoder's outputs in reverse order
                x = x + self.skip_weights[i - self.num_encoder_layers] * skips.pop()
            x = block(x, x0, value_embeddings[i], mask)
            if i < self.num_encoder_layers:
                skips.append(x)
        x = norm(x)[0]
        if targets is None:
            return softcapped_logits(self.lm_head(x), self.logit_softcap)
        return self.head_loss(x, self.lm_head, targets, self.logit_softcap)


# -----------------------------------------------------------------------------
# Data loader: shards of GPT-2 tokens (header of 256 int32, then uint16 tokens)

SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_BYTES = 20240520, 1, 256 * 4
IGNORED_TARGET = -100  # F.cross_entropy's default ignore_index


def read_shard_header(path: str) -> int:
    """Checks a shard's header and size against each other; returns its number of tokens."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a regular file; shard patterns must match only token shards")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = np.fromfile(f, dtype="<i4", count=256)
    except OSError as error:
        raise InputError(f"{path}: cannot read it: {error.strerror or error}") from None
    if size < SHARD_HEADER_BYTES:
        raise InputError(f"{path}: {size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte shard header")
    if header[0] != SHARD_MAGIC:
        raise InputError(f"{path}: magic number {header[0]}, expected {SHARD_MAGIC}: not a token shard")
    if header[1] != SHARD_VERSION:
        raise InputError(f"{path}: shard version {header[1]}, this loader reads version {SHARD_VERSION}")
    num_tokens = int(header[2])
    expected_size = SHARD_HEADER_BYTES + 2 * num_tokens
    if size != expected_size:
        raise InputError(f"{path}: header says {num_tokens} tokens ({expected_size} bytes) but the file has "
                         f"{size} bytes: truncated or corrupt, download it again")
    return num_tokens


def check_token_ids(path: str, token_ids: np.ndarray, vocab_size: int):
    """An id outside the embedding would crash the run (a device-side assert): one vectorised max per shard."""
    if len(token_ids) and token_ids.max() >= vocab_size:
        position = int(np.argmax(token_ids >= vocab_size))
        raise InputError(f"{path}: token id {token_ids[position]} at position {position} is outside the vocabulary "
                         f"(vocab_size={vocab_size}): the shard is corrupt or from another tokenizer")


def load_shard(path: str, vocab_size: int | None = None, pin_memory: bool = False) -> torch.Tensor:
    """The whole shard's tokens (pinned for asynchronous copies to the GPU). With vocab_size, every token id
    is checked first."""
    num_tokens = read_shard_header(path)
    tokens = torch.empty(num_tokens, dtype=torch.uint16, pin_memory=pin_memory)
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(SHARD_HEADER_BYTES)
            assert f.readinto(tokens.numpy()) == 2 * num_tokens, f"{path}: short read"
    except OSError as error:
        raise InputError(f"{path}: cannot read it: {error.strerror or error}") from None
    if vocab_size is not None:
        check_token_ids(path, tokens.numpy(), vocab_size)
    return tokens


def training_files_read(files: list[str], batch_size: int, first_step: int, num_iterations: int) -> list[str]:
    """The training shards that steps first_step + 1 .. num_iterations read (training_batches' walk)."""
    read, batches_before = [], 0
    for path in files:
        count = batch_count(read_shard_header(path), batch_size)
        if count and batches_before + count > first_step and batches_before < num_iterations:
            read.append(path)
        batches_before += count
    return read


class ShardCheck:
    """Checks the token ids of every training shard the run reads in a background thread, while the model is built
    and the first step compiles (the record's nine shards: 1.8 GB, a few seconds of numpy, which leaves the GIL
    free), so that a bad shard stops the run before its first timed step, not when it is reached. Rank r checks
    every world_size-th file; result() is a collective: every rank stops with the same error, the first file's."""

    def __init__(self, files: list[str], vocab_size: int, rank: int, world_size: int):
        self.world_size, self.error = world_size, None  # (index in files, message)
        mine = list(enumerate(files))[rank::world_size]
        self.thread = threading.Thread(target=self._check, args=(mine, vocab_size), daemon=True)
        self.thread.start()

    def _check(self, files: list[tuple[int, str]], vocab_size: int):
        for index, path in files:
            try:
                num_tokens = read_shard_header(path)
                check_token_ids(path, np.memmap(path, dtype="<u2", mode="r", offset=SHARD_HEADER_BYTES,
                                                shape=(num_tokens,)) if num_tokens else np.empty(0), vocab_size)
            except InputError as error:
                self.error = (index, str(error))
            except Exception as error:  # an I/O error while reading: the file is unusable all the same
                self.error = (index, f"{path}: cannot read it: {error}")
            if self.error is not None:
                return

    def result(self):
        self.thread.join()
        found = [None] * self.world_size
        dist.all_gather_object(found, self.error)
        errors = sorted(error for error in found if error is not None)
        if errors:
            raise InputError(errors[0][1])


def batch_count(num_tokens: int, batch_tokens: int, last_target_optional: bool = False) -> int:
    """Whole batches of batch_tokens a shard of num_tokens holds. Training needs one token more than a batch (the
    last target); validation may end exactly at the shard's end, with that last target ignored."""
    return (num_tokens if last_target_optional else max(num_tokens - 1, 0)) // batch_tokens


def micro_batches(tokens: torch.Tensor, start: int, num_tokens: int, sequence_length: int, device) -> list:
    """(inputs, targets) on the device for each sequence_length piece of tokens[start:start + num_tokens]."""
    pieces = []
    for offset in range(start, start + num_tokens, sequence_length):
        window = tokens[offset:offset + sequence_length + 1]
        inputs = window[:sequence_length].to(device=device, dtype=torch.int32, non_blocking=True)
        targets = window[1:].to(device=device, dtype=torch.int64, non_blocking=True)
        if len(targets) < sequence_length:  # the window ends at the shard's end: no next token to predict
            targets = F.pad(targets, (0, 1), value=IGNORED_TARGET)
        pieces.append((inputs, targets))
    return pieces


def training_batches(files: list[str], batch_size: int, sequence_length: int, rank: int, world_size: int,
                     device: torch.device, vocab_size: int, first_step: int = 0):
    """Yields, step after step, this rank's micro-batches of the step's global batch.

    A step's batch_size + 1 tokens are contiguous in one shard; where fewer remain, the rest of the shard is
    skipped (as the record does). Rank r takes the r-th of world_size equal contiguous slices and cuts it into
    micro-batches of sequence_length tokens, so every step trains on the same tokens on 1, 2, 4 or 8 GPUs.
    The first first_step batches are skipped without reading their shards (resuming a run)."""
    rank_tokens = batch_size // world_size
    batches_to_skip = first_step
    for path in files:
        count = batch_count(read_shard_header(path), batch_size)
        if batches_to_skip >= count:
            batches_to_skip -= count
            continue
        tokens = load_shard(path, vocab_size, pin_memory=device.type == "cuda")
        for start in range(batches_to_skip * batch_size, count * batch_size, batch_size):
            yield micro_batches(tokens, start + rank * rank_tokens, rank_tokens, sequence_length, device)
        batches_to_skip = 0


def validation_batches(files: list[str], val_tokens: int, sequence_length: int, rank: int, world_size: int,
                       device: torch.device, vocab_size: int) -> list:
    """This rank's micro-batches of the first val_tokens validation tokens, loaded onto the device once.
    Each global micro-batch is world_size * sequence_length contiguous tokens, rank r's the r-th piece."""
    global_micro_batch = world_size * sequence_length
    needed = val_tokens // global_micro_batch
    batches = []
    for path in files:
        count = min(batch_count(read_shard_header(path), global_micro_batch, last_target_optional=True),
                    needed - len(batches))
        tokens = load_shard(path, vocab_size)
        for start in range(0, count * global_micro_batch, global_micro_batch):
            batches += micro_batches(tokens, start + rank * sequence_length, sequence_length, sequence_length, device)
        if len(batches) == needed:
            return batches
    raise AssertionError("check_run_inputs let through too few validation tokens")


def shard_files(pattern: str, role: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        where = "" if os.path.isabs(pattern) else f" (relative to the working directory {os.getcwd()})"
        raise InputError(f"no {role} shard matches {pattern!r}{where}; get FineWeb with "
                         f"`python data/cached_fineweb10B.py 9` or point --{role}_files at your own shards")
    return files


# -----------------------------------------------------------------------------
# Hyperparameters: edit the defaults inline for a record attempt, or override any as --name=value

# The range a field must lie in: (test, what is expected). NaN fails every test.
RANGES = {
    "positive": (lambda value: math.isfinite(value) and value > 0, "a finite number above 0"),
    "non_negative": (lambda value: math.isfinite(value) and value >= 0, "a finite number, 0 or more"),
    "fraction": (lambda value: 0 <= value <= 1, "a fraction between 0 and 1"),
}


def setting(default, meaning: str, valid: str | None = None):
    """A Hyperparameters field: its default, its meaning (--help prints it) and its range (a RANGES key)."""
    return field(default=default, metadata=dict(meaning=meaning, valid=valid))


@dataclass(frozen=True)
class Hyperparameters:
    # data
    train_files: str = setting("data/fineweb10B/fineweb_train_*.bin", "training shards, a glob")
    val_files: str = setting("data/fineweb10B/fineweb_val_*.bin", "validation shards, a glob")
    val_tokens: int = setting(10485760, "validation tokens, from the start of the validation shards", "positive")
    # batch
    batch_size: int = setting(8 * 64 * 1024, "tokens per optimizer step, all ranks together", "positive")
    sequence_length: int = setting(64 * 1024, "tokens per micro-batch and rank, a multiple of 128; each rank "
                                   "accumulates batch_size / (ranks x sequence_length) micro-batches", "positive")
    # schedule
    num_iterations: int = setting(1390, "optimizer steps", "positive")
    cooldown_frac: float = setting(0.4, "final fraction of the steps over which the learning rates decay linearly "
                                   "to zero", "fraction")
    momentum_warmup_steps: int = setting(300, "steps over which Muon's momentum rises from muon_momentum_start to "
                                         "muon_momentum, whatever num_iterations is", "non_negative")
    window_start_tokens: int = setting(128, "attention window at step 0, in tokens; grows linearly and is floored "
                                       "to whole 128-token blocks", "positive")
    window_end_tokens: int = setting(1856, "attention window the growth reaches at the last step (1856: 14 blocks, "
                                     "only at the very end)", "positive")
    # model
    vocab_size: int = setting(50304, "embedding rows: GPT-2's 50257 tokens padded to a multiple of 128", "positive")
    num_layers: int = setting(12, "transformer blocks; even, at least 6 (U-Net halves, value embeddings at both "
                              "ends)", "positive")
    model_dim: int = setting(768, "width of the residual stream", "positive")
    num_heads: int = setting(6, "attention heads; head dim = model_dim / num_heads, a multiple of 4", "positive")
    num_kv_heads: int = setting(6, "key/value heads; fewer than num_heads for grouped-query attention", "positive")
    mlp_dim: int = setting(4 * 768, "hidden width of the MLPs", "positive")
    attention_free_layers: str = setting("7", "comma-separated indices of MLP-only blocks")
    logit_softcap: float = setting(15.0, "logits become cap * tanh(logits / cap)", "positive")
    bf16_embeddings: bool = setting(True, "store the embedding tables in bfloat16")
    compute_dtype: str = setting("auto", "activations' dtype: auto (bfloat16 on a GPU; float32 on a CPU, where "
                                 "bf16 products without bf16 units are ~10x slower), bfloat16 or float32")
    # optimizers
    muon_lr: float = setting(0.05, "Muon's learning rate (hidden matrices)", "non_negative")
    muon_momentum: float = setting(0.95, "Muon's momentum after the warm-up", "fraction")
    muon_momentum_start: float = setting(0.85, "Muon's momentum at step 0", "fraction")
    newton_schulz_steps: int = setting(5, "Newton-Schulz iterations per Muon update", "positive")
    embed_lr: float = setting(0.6, "Adam's learning rate for the token and value embeddings", "non_negative")
    head_lr: float = setting(0.008, "Adam's learning rate for the LM head", "non_negative")
    scalar_lr: float = setting(0.04, "Adam's learning rate for the scalars and vectors", "non_negative")
    adam_eps: float = setting(1e-8, "Adam's epsilon (PyTorch's default, as the record)", "positive")
    # evaluation, logging, checkpoints
    val_loss_every: int = setting(125, "validate every this many steps, and at the last; 0: only at the last",
                                  "non_negative")
    timing_warmup_steps: int = setting(10, "steps run before the clock starts (compilation, warm-up)", "non_negative")
    run_id: str = setting("", "the run's name: logs/<run_id>.txt, checkpoints in logs/<run_id>/; empty: a uuid")
    save_checkpoint: bool = setting(False, "write a checkpoint after the last step")
    checkpoint_every: int = setting(0, "write a checkpoint every this many steps; 0: never (record attempts)",
                                    "non_negative")
    keep_checkpoints: int = setting(2, "how many of the run's newest checkpoints to keep", "positive")
    checkpoint_failure_stops: bool = setting(False, "stop the run when a periodic checkpoint cannot be written "
                                             "(a full disk); false: report it in one line and train on")
    resume: str = setting("", "continue from a checkpoint file, or a run's folder (its newest complete checkpoint); "
                          "auto: the newest complete checkpoint of --run_id's own folder if there is one, else from "
                          "step 0 (for torchrun --max-restarts)")
    force_resume: bool = setting(False, "resume even where hyperparameters that change the math differ")
    sample_at_end: bool = setting(False, "continue sample_prompts with the trained model, into console and log")
    sample_prompts: str = setting("The meaning of life is|Once upon a time|The capital of France is",
                                  "prompts for sample_at_end, separated by |")
    sample_tokens: int = setting(32, "tokens sampled per prompt", "positive")
    # system
    compile: str = setting("auto", "torch.compile the model and Newton-Schulz: auto (on GPU), true or false")
    coordinate_descent_tuning: bool = setting(False, "Inductor's tuning: a few seconds of training for many "
                                              "minutes of compilation")
    peak_tflops: float = setting(0.0, "the card's dense bf16 peak for MFU, TFLOP/s; 0: from PEAK_TFLOPS by card "
                                 "name", "non_negative")
    collective_timeout_s: int = setting(300, "seconds a collective waits for a dead or stuck rank before the run "
                                        "stops with an error", "positive")
    seed: int = setting(0, "seed of the initial weights and of the samples", "non_negative")
    # speed switches: each off by default (the record's path) until the GPU comparison decides; DESIGN.md
    fused_loss: bool = setting(False, "LM head, soft cap and cross-entropy over chunks of tokens, never holding the "
                               "whole fp32 logits (same math to fp32 rounding, less memory)")
    fused_loss_chunk_tokens: int = setting(8192, "tokens per chunk of fused_loss", "positive")
    fp8_head: bool = setting(False, "the LM head's three products in FP8 (e4m3 forward, e5m2 gradients, the "
                             "record of 2025-01-13's scales); changes the numerics; needs compute capability 8.9+")
    merged_qkv: bool = setting(False, "q, k and v from one stacked matrix, one product instead of three; Muon "
                               "still orthogonalizes them apart and checkpoints hold them apart (same math)")
    batched_muon: bool = setting(False, "Newton-Schulz on all same-shape matrices a rank owns in one batched "
                                 "product per iteration, instead of one matrix after another (same math to bf16 "
                                 "rounding)")


# Fields that leave the trained weights unchanged (or change them by rounding only: fused_loss, merged_qkv,
# batched_muon): a resumed run may change them. (records/compare.py groups repeated runs by a narrower set,
# FIELDS_IGNORED_FOR_GROUPING: data, validation and compilation still split.)
BOOKKEEPING_FIELDS = ("val_loss_every", "timing_warmup_steps", "run_id", "save_checkpoint", "checkpoint_every",
                      "keep_checkpoints", "resume", "force_resume", "sample_at_end", "sample_prompts",
                      "sample_tokens", "compile", "coordinate_descent_tuning", "peak_tflops",
                      "collective_timeout_s", "train_files", "val_files", "checkpoint_failure_stops", "fused_loss",
                      "fused_loss_chunk_tokens", "merged_qkv", "batched_muon")


def parse_hyperparameters(argv: list[str]) -> Hyperparameters:
    """Hyperparameters with --name=value overrides, each parsed as its default's type."""
    defaults = Hyperparameters()
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        for setting_field in dataclasses.fields(defaults):
            print(f"  --{setting_field.name}={getattr(defaults, setting_field.name)!r}\n"
                  f"      {setting_field.metadata['meaning']}")
        sys.exit(0)
    overrides = {}
    for arg in argv:
        name, has_value, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not has_value:
            raise SystemExit(f"error: argument {arg!r}: overrides are written --name=value")
        if not hasattr(defaults, name):
            raise SystemExit(f"error: unknown hyperparameter {name!r} (python train_gpt.py --help lists them)")
        kind = type(getattr(defaults, name))
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise SystemExit(f"error: --{name}={text}: expected true or false")
            overrides[name] = text.lower() in ("true", "1", "yes")
        else:
            try:
                overrides[name] = kind(text)
            except ValueError:
                raise SystemExit(f"error: --{name}={text}: expected a value of type {kind.__name__}") from None
    return dataclasses.replace(defaults, **overrides)


def attention_free_layers(args: Hyperparameters) -> tuple[int, ...]:
    return tuple(int(index) for index in args.attention_free_layers.split(",") if index.strip())


# Integers the libraries hold in fewer bits than Python: (largest value, where it goes). Every other integer goes
# into an int64 somewhere (seeds, counts, tensor sizes).
INTEGER_LIMITS = {
    "collective_timeout_s": (10**9, "31 years: the process group adds it to a clock of int64 nanoseconds"),
    "window_start_tokens": (2**31 - 1, "the window lives in an int32 tensor"),
    "window_end_tokens": (2**31 - 1, "the window lives in an int32 tensor"),
}


def check_hyperparameters(args: Hyperparameters, world_size: int):
    """Each value in its range and the values consistent with each other; raises InputError naming the field."""
    for setting_field in dataclasses.fields(args):
        value, valid = getattr(args, setting_field.name), setting_field.metadata["valid"]
        if valid is not None and not RANGES[valid][0](value):
            raise InputError(f"{setting_field.name}={value!r}: expected {RANGES[valid][1]}")
        if type(value) is int:
            limit, where = INTEGER_LIMITS.get(setting_field.name, (2**63 - 1, "the libraries hold it in an int64"))
            if value > limit:
                raise InputError(f"{setting_field.name}={value}: too large, at most {limit} ({where})")
    if args.sequence_length % ATTENTION_BLOCK:
        raise InputError(f"sequence_length={args.sequence_length} is not a multiple of {ATTENTION_BLOCK}, "
                         "the attention block size")
    global_micro_batch = world_size * args.sequence_length
    if args.batch_size % global_micro_batch:
        raise InputError(f"batch_size={args.batch_size} is not a whole number of micro-batches of {world_size} "
                         f"ranks x sequence_length={args.sequence_length} tokens; use a multiple of "
                         f"{global_micro_batch}")
    if args.val_tokens % global_micro_batch:
        raise InputError(f"val_tokens={args.val_tokens} is not a multiple of {global_micro_batch} "
                         f"({world_size} ranks x sequence_length={args.sequence_length})")
    if args.model_dim % args.num_heads or args.num_heads % args.num_kv_heads or (args.model_dim // args.num_heads) % 4:
        raise InputError(f"model_dim={args.model_dim}, num_heads={args.num_heads}, num_kv_heads={args.num_kv_heads}: "
                         "heads must divide model_dim into a head dim divisible by 4, kv heads must divide heads")
    if args.num_layers % 2 or args.num_layers < 6:
        raise InputError(f"num_layers={args.num_layers}: the U-Net and the value embeddings need an even number >= 6")
    try:
        layer_indices = attention_free_layers(args)
    except ValueError:
        raise InputError(f"attention_free_layers={args.attention_free_layers!r}: expected comma-separated "
                         "layer indices, e.g. \"7\"") from None
    for index in layer_indices:
        if not 0 <= index < args.num_layers:
            raise InputError(f"attention_free_layers={args.attention_free_layers!r}: no layer {index}")
    for name in ("window_start_tokens", "window_end_tokens"):
        if getattr(args, name) < ATTENTION_BLOCK:
            raise InputError(f"{name}={getattr(args, name)}: a window needs at least one {ATTENTION_BLOCK}-token block")
    if args.window_end_tokens < args.window_start_tokens:
        raise InputError(f"window_end_tokens={args.window_end_tokens} is below window_start_tokens="
                         f"{args.window_start_tokens}: the attention window would shrink as training goes on; the "
                         "window grows from the start to the end value")
    for name, choices in (("compile", ("auto", "true", "false")), ("compute_dtype", ("auto", "bfloat16", "float32"))):
        if getattr(args, name) not in choices:
            raise InputError(f"{name}={getattr(args, name)!r}: expected one of {', '.join(choices)}")
    if args.vocab_size <= EOT_TOKEN:
        raise InputError(f"vocab_size={args.vocab_size} must exceed the GPT-2 EOT token id {EOT_TOKEN}")
    if args.vocab_size > 65536:
        raise InputError(f"vocab_size={args.vocab_size}: shards hold uint16 token ids, so at most 65536")
    if args.fp8_head and (args.model_dim % 16 or args.vocab_size % 16):
        raise InputError(f"fp8_head=true: FP8 products need model_dim={args.model_dim} and vocab_size="
                         f"{args.vocab_size} divisible by 16; change them or turn fp8_head off")
    if args.fp8_head and args.fused_loss and args.fused_loss_chunk_tokens % 16:
        raise InputError(f"fused_loss_chunk_tokens={args.fused_loss_chunk_tokens}: with fp8_head each chunk's "
                         "FP8 products need a multiple of 16 tokens")
    if args.sample_at_end and not args.sample_prompts.strip():
        raise InputError("sample_at_end=true with no sample_prompts")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.run_id or "x"):
        raise InputError(f"run_id={args.run_id!r}: use letters, digits, '.', '_' and '-' (it names files in logs/)")
    if args.resume == "auto" and not args.run_id:
        raise InputError("resume=auto needs a fixed --run_id: a restarted run finds its checkpoints in logs/<run_id>/")
    if args.resume == "auto" and not args.checkpoint_every:
        raise InputError("resume=auto with checkpoint_every=0: a restart would find no checkpoint and train from step "
                         "0 again; set --checkpoint_every (e.g. 100)")


def check_run_inputs(args: Hyperparameters, world_size: int) -> tuple[list[str], list[str]]:
    """Every check that can fail on bad input, before any GPU time is spent; returns (train, val) files."""
    check_hyperparameters(args, world_size)
    train_files, val_files = shard_files(args.train_files, "train"), shard_files(args.val_files, "val")
    train_tokens = [read_shard_header(path) for path in train_files]
    steps_available = sum(batch_count(tokens, args.batch_size) for tokens in train_tokens)
    if steps_available < args.num_iterations:
        shards_needed = math.ceil(args.num_iterations * len(train_files) / max(steps_available, 1))
        remedy = (f"about {shards_needed} such shards are needed (FineWeb: python data/cached_fineweb10B.py "
                  f"{shards_needed})" if steps_available else "every shard is shorter than one batch (batch_size + 1 "
                  "tokens): lower batch_size or use longer shards")
        raise InputError(f"train needs {args.num_iterations} steps of {args.batch_size:,} tokens (each step's batch "
                         f"from one shard) but the {len(train_files)} shard(s) matching {args.train_files!r} hold "
                         f"{steps_available}; {remedy}")
    global_micro_batch = world_size * args.sequence_length
    val_micro_batches = sum(batch_count(read_shard_header(path), global_micro_batch, last_target_optional=True)
                            for path in val_files)
    if val_micro_batches < args.val_tokens // global_micro_batch:
        raise InputError(f"val needs {args.val_tokens:,} tokens ({args.val_tokens // global_micro_batch} micro-batches"
                         f" of {global_micro_batch:,}) but the {len(val_files)} shard(s) matching "
                         f"{args.val_files!r} hold {val_micro_batches} micro-batches; lower val_tokens or use a "
                         "larger validation set")
    val_identities = {(os.stat(path).st_dev, os.stat(path).st_ino) for path in val_files}  # links count as the same
    shared = [path for path in train_files if (os.stat(path).st_dev, os.stat(path).st_ino) in val_identities]
    if shared:
        raise InputError(f"{shared[0]} ({len(shared)} shard(s) in all) matches both train_files={args.train_files!r} "
                         f"and val_files={args.val_files!r}: training on validation shards breaks the speedrun's first "
                         "rule; narrow train_files (FineWeb: fineweb_train_*.bin)")
    unused = parameters_without_gradient(args)
    if unused:
        raise InputError(f"num_layers={args.num_layers}, attention_free_layers={args.attention_free_layers!r}: "
                         f"{', '.join(unused)} would never get a gradient (no layer that has attention uses it), and "
                         "DDP stops on unused parameters; keep attention in a layer that uses each (value embedding i "
                         "feeds layers i and num_layers - 3 + i)")
    check_samples_fit(args)
    if args.resume and args.resume != "auto":
        try:
            os.stat(args.resume)
        except FileNotFoundError:  # find_checkpoint says so, with the remedy
            pass
        except OSError as error:  # a name too long for the file system, a folder that cannot be searched
            raise InputError(f"--resume={args.resume[:60]!r}...: {error.strerror or error}") from None
    return train_files, val_files


# -----------------------------------------------------------------------------
# Schedules, as functions of the step (the record's formulas)


def learning_rate_multiplier(step: int, args: Hyperparameters) -> float:
    """1 until the cooldown starts, then linearly down to 0 at the last step."""
    steps_left_frac = 1 - step / args.num_iterations
    return min(1.0, steps_left_frac / args.cooldown_frac) if args.cooldown_frac > 0 else 1.0


def window_blocks_at(step: int, args: Hyperparameters) -> int:
    """The window grows linearly from window_start_tokens to window_end_tokens and is floored to whole blocks
    (@fernbear.bsky.social's growing window, block-wise by @YouJiacheng): 1 block at step 0 and 14 only at
    the last steps with the defaults."""
    progress = step / args.num_iterations
    return int(((1 - progress) * args.window_start_tokens + progress * args.window_end_tokens) // ATTENTION_BLOCK)


def muon_momentum_at(step: int, args: Hyperparameters) -> float:
    """Linear warm-up over a fixed number of steps, whatever num_iterations is (the record hard-codes 300)."""
    progress = min(step / args.momentum_warmup_steps, 1.0) if args.momentum_warmup_steps > 0 else 1.0
    return (1 - progress) * args.muon_momentum_start + progress * args.muon_momentum


# -----------------------------------------------------------------------------
# Text samples at the end of a run, so a person sees what was learned


@torch.no_grad()
def continue_prompt(model: GPT, prompt_tokens: list[int], num_tokens: int, window_blocks: torch.Tensor,
                    generator: torch.Generator, top_k: int = 50) -> list[int]:
    """Samples num_tokens after [EOT] + prompt (top-k), recomputing the whole short sequence each token."""
    tokens = [EOT_TOKEN] + prompt_tokens
    device = window_blocks.device
    for _ in range(num_tokens):
        padded_len = -(-len(tokens) // ATTENTION_BLOCK) * ATTENTION_BLOCK  # causal: the padding is never seen
        inputs = torch.tensor(tokens + [0] * (padded_len - len(tokens)), dtype=torch.int32, device=device)
        logits = model(inputs, None, window_blocks)[len(tokens) - 1]
        top_logits, top_tokens = logits.topk(top_k)
        choice = torch.multinomial(top_logits.softmax(-1), 1, generator=generator)
        tokens.append(int(top_tokens[choice]))
    return tokens[1 + len(prompt_tokens):]


def check_samples_fit(args: Hyperparameters):
    """Each prompt and its sampled tokens must fit in the model's context (sequence_length: the rotary table's
    length); checked before training, since sampling comes after it."""
    if not args.sample_at_end:
        return
    try:
        from data.tokenizer import gpt2_encoding
        encoding = gpt2_encoding()
    except Exception:  # log_samples says so at the end: the samples are skipped, nothing fails
        return
    for prompt in args.sample_prompts.split("|"):
        prompt_tokens = len(encoding.encode_ordinary(prompt))
        if prompt_tokens + args.sample_tokens > args.sequence_length:
            raise InputError(f"sample_prompts: {prompt[:40]!r} is {prompt_tokens} tokens, which with sample_tokens="
                             f"{args.sample_tokens} exceeds the model's context, sequence_length="
                             f"{args.sequence_length}; shorten the prompt or lower sample_tokens")


def log_samples(run: "Run", model: GPT, window_blocks: torch.Tensor):
    try:  # the tokenizer lives in data/ beside this file (on sys.path as the script's directory)
        from data.tokenizer import gpt2_encoding
        encoding = gpt2_encoding()
    except Exception as error:  # a finished run is not failed for want of a tokenizer
        run.log(f"samples skipped: no GPT-2 tokenizer ({error})", console=True)
        return
    generator = torch.Generator(device=window_blocks.device).manual_seed(run.args.seed)
    for prompt in run.args.sample_prompts.split("|"):
        continuation = continue_prompt(model, encoding.encode_ordinary(prompt), run.args.sample_tokens,
                                       window_blocks, generator)
        run.log("sample: " + json.dumps(prompt + encoding.decode(continuation), ensure_ascii=False), console=True)


# -----------------------------------------------------------------------------
# Setup: distributed, the run's record, its log


@dataclass(frozen=True)
class Run:
    """One process's view of the run, fixed at setup: who it is, what it reads, where it writes."""
    args: Hyperparameters
    rank: int
    world_size: int
    device: torch.device
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    micro_batches_per_step: int  # on each rank
    run_id: str
    log_path: Path
    logfile: object  # rank 0's open log; None on the other ranks
    code: str  # this file's source, logged first and saved with checkpoints
    resume_from: str  # the checkpoint file or run folder to start from: --resume or auto_resume's choice; "": step 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def checkpoint_dir(self) -> Path:
        return self.log_path.parent / self.run_id

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:06d}.pt"

    def log(self, text: str, console: bool = False):
        """Rank 0 writes a line to the log (flushed, so a crash loses nothing), then, if asked, to the console. A log
        that cannot be written stops the run with one line; a console that is gone (a closed terminal or ssh
        session, a closed pipe) loses its copy, not the run."""
        if self.rank == 0:
            try:
                self.logfile.write(text + "\n")
                self.logfile.flush()
            except OSError as error:  # a full disk, a file-size limit (ulimit -f)
                raise LogWriteError(f"{self.log_path}: cannot write the log: {error.strerror or error}; free space "
                                    "or raise the file-size limit (ulimit -f)") from None
            if console:
                try:
                    print(text, flush=True)
                except OSError:  # EIO from a hung-up terminal, EPIPE from a closed pipe: the log has every line
                    sys.stdout = open(os.devnull, "w")


class LogWriteError(InputError):
    """The log itself cannot be written: said on the console only."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_environment() -> tuple[int, int, torch.device]:
    """Rank, world size and device. A plain `python train_gpt.py` becomes a one-rank group, so the code
    path is the same as under torchrun (also multi-node: device from LOCAL_RANK, data slice from RANK)."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        torch.empty(1, device=device, requires_grad=True).backward()  # as the record: "prevents a bug on some systems"
    else:
        device = torch.device("cpu")
    return rank, world_size, device


LOGS = Path("logs")


def check_run_outputs(args: Hyperparameters):
    """The log folder is writable, and a named run has neither a log nor checkpoints yet (nothing is overwritten),
    unless it resumes itself (--resume=auto): then each restart writes a log of its own (see auto_resume)."""
    try:
        LOGS.mkdir(exist_ok=True)
        with open(LOGS / f".write-test-{os.getpid()}", "w"):
            pass
        os.remove(LOGS / f".write-test-{os.getpid()}")
    except OSError as error:
        raise InputError(f"cannot write logs into {LOGS.resolve()}: {error.strerror or error}") from None
    longest_name = os.pathconf(LOGS, "PC_NAME_MAX") - len(".txt")
    if len(args.run_id) > longest_name:
        raise InputError(f"run_id={args.run_id[:40]!r}... is {len(args.run_id)} characters; the file system's names in "
                         f"{LOGS.resolve()} allow {longest_name} with the log's .txt")
    if args.checkpoint_every or args.save_checkpoint:
        check_checkpoint_space(args)
    if args.run_id and args.resume != "auto":
        if (LOGS / f"{args.run_id}.txt").exists():
            raise InputError(f"{LOGS / args.run_id}.txt exists; logs are never overwritten, choose another --run_id")
        if list((LOGS / args.run_id).glob("step_*.pt")):
            raise InputError(f"{LOGS / args.run_id}/ already holds checkpoints; choose another --run_id")


def check_checkpoint_space(args: Hyperparameters):
    """The checkpoint folder can be created and the disk holds the checkpoints the run keeps at once (the newest
    keep_checkpoints and the one being written), so that no checkpoint fails for want of space known at the start."""
    folder = LOGS / args.run_id
    if args.run_id and folder.exists():
        if not folder.is_dir():
            raise InputError(f"{folder} is a file, where the run's checkpoints would go; choose another --run_id")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{folder}: cannot write the run's checkpoints into it (permissions); choose another "
                             "--run_id")
    periodic = (args.num_iterations - 1) // args.checkpoint_every if args.checkpoint_every else 0
    written = max(periodic + args.save_checkpoint, 1)  # a stop signal writes one when checkpoint_every > 0
    checkpoint = model_state_bytes(args)[0]
    needed = checkpoint * min(written, args.keep_checkpoints + 1)
    free = shutil.disk_usage(LOGS).free
    if needed > free:
        raise InputError(f"checkpoints need about {needed / 2**20:,.0f} MiB in {LOGS.resolve()} "
                         f"({min(written, args.keep_checkpoints + 1)} of {checkpoint / 2**20:,.0f} MiB at once), but "
                         f"only {free / 2**20:,.0f} MiB are free; free space, lower keep_checkpoints, or turn "
                         "checkpoints off (checkpoint_every=0, save_checkpoint=false)")
def auto_resume(run_id: str, num_iterations: int) -> tuple[str, str, list[str], str]:
    """--resume=auto, decided on rank 0 before the log opens: (the new log's name, the checkpoint to resume from or
    "" for step 0, lines for the log, and "" or why the run has nothing left to train). Each restart writes a log
    of its own, logs/<run_id>.resume<n>.txt; a run whose last log ends with done:, or whose newest checkpoint
    holds the last step, is not trained again."""
    names = [f"{run_id}.txt"]
    while (LOGS / names[-1]).exists():
        names.append(f"{run_id}.resume{len(names)}.txt")
    if len(names) > 1 and any(line.startswith("done: ") for line in (LOGS / names[-2]).read_text().splitlines()):
        return names[-1], "", [], f"{LOGS / names[-2]} has its done: line"
    folder, notes = LOGS / run_id, []
    for partial in sorted(folder.glob(".step_*.pt.partial")):  # a killed save's; its writer is gone
        partial.unlink()
        notes.append(f"resume=auto: removed {partial}, left by an interrupted save")
    try:
        path, checkpoint = find_checkpoint(str(folder), notes.append)
    except InputError:  # no folder yet, or nothing complete in it (each skipped file is noted)
        notes.append(f"resume=auto: no complete checkpoint in {folder}/; training starts at step 0")
        return names[-1], "", notes, ""
    if checkpoint["step"] >= num_iterations:
        return names[-1], "", notes, f"{path} holds its last step, {checkpoint['step']}"
    return names[-1], str(path), notes, ""


def check_restarts():
    """torchrun --max-restarts shares, by default, one store between the groups it starts, and a restarted group
    can read the keys of the group it replaced, then hang connecting to dead ranks (pytorch/pytorch#135712; seen
    here with gloo on torch 2.13). Without the sharing, each group gets a fresh store."""
    shared_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared_store and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        raise InputError("torchrun --max-restarts with its shared store: a restarted group can hang connecting to the "
                         "ranks it replaced; launch it as TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun "
                         "--rdzv_backend=c10d (or --standalone) ...")


def check_device(args: Hyperparameters, device: torch.device):
    """What the hyperparameters need of the card: FP8 matrix units for fp8_head (compute capability 8.9+)."""
    if args.fp8_head and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        major, minor = torch.cuda.get_device_capability(device)
        raise InputError(f"fp8_head=true needs FP8 matrix units (compute capability 8.9 or higher: Ada, Hopper, "
                         f"Blackwell); {torch.cuda.get_device_name(device)} has {major}.{minor}: run with "
                         "--fp8_head=false")


def environment_report(device: torch.device, world_size: int) -> str:
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        smi = "nvidia-smi: not available\n"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (f"Running Python {sys.version}\n"
            f"Running PyTorch {torch.__version__} compiled for CUDA {torch.version.cuda}\n{smi}{'=' * 100}\n"
            f"device: {card} x{world_size}")


def exit_on_input_error(error: InputError, rank: int):
    """Every rank finds the same bad input; rank 0 says it once. No traceback: the message says what to do.
    The other ranks wait a moment first: torchrun stops every rank as soon as one exits."""
    if rank != 0:
        time.sleep(3)
    raise SystemExit(f"error: {error}" if rank == 0 else 1)


def setup(args: Hyperparameters) -> Run:
    """Checks the inputs, joins the process group and opens the log; nothing here trains."""
    rank, world_size, device = distributed_environment()
    try:
        train_files, val_files = check_run_inputs(args, world_size)
        check_model_fits(args, device)
        check_device(args, device)
        check_run_outputs(args)
        check_restarts()
    except InputError as error:
        exit_on_input_error(error, rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None,
                            timeout=timedelta(seconds=args.collective_timeout_s))
    if args.resume != "auto":
        run_id = args.run_id or str(uuid.uuid4())
        plan = [run_id, f"{run_id}.txt", args.resume, [], ""]
    else:
        plan = [args.run_id, *auto_resume(args.run_id, args.num_iterations)] if rank == 0 else [None] * 5
    dist.broadcast_object_list(plan, src=0)  # every rank follows rank 0's choices: its uuid, its checkpoint
    run_id, log_name, resume_from, notes, finished = plan
    if finished:
        if rank == 0:
            print(f"resume=auto: run {run_id} has finished ({finished}); nothing to train, no new log", flush=True)
        dist.barrier()
        dist.destroy_process_group()
        raise SystemExit(0)
    log_path, logfile, problem = LOGS / log_name, None, [None]
    if rank == 0:
        try:
            logfile = open(log_path, "x")  # "x" (O_EXCL): fails rather than overwrite
        except FileExistsError:
            problem = [f"{log_path} was created by another run a moment ago (after this one checked); logs are "
                       "never overwritten, choose another --run_id"]
        except OSError as error:
            problem = [f"cannot create the log {log_path}: {error.strerror or error}"]
    dist.broadcast_object_list(problem, src=0)  # every rank stops with rank 0
    if problem[0] is not None:
        exit_on_input_error(InputError(problem[0]), rank)
    run = Run(args=args, rank=rank, world_size=world_size, device=device, train_files=tuple(train_files),
              val_files=tuple(val_files), micro_batches_per_step=args.batch_size // (world_size * args.sequence_length),
              run_id=run_id, log_path=log_path, logfile=logfile, code=Path(__file__).read_text(),
              resume_from=resume_from)
    try:
        run.log(run.code)
        run.log("=" * 100)
        run.log(environment_report(device, world_size), console=True)
        run.log("hyperparameters: " + json.dumps(dataclasses.asdict(args)), console=True)
        run.log(f"log: {log_path}, {run.micro_batches_per_step} micro-batch(es) of {args.sequence_length} tokens per "
                "rank per step", console=True)
        for note in notes:
            run.log(note, console=True)
    except LogWriteError as error:
        exit_on_input_error(error, rank)
    return run


def teardown(run: Run):
    """Leaves the process group and closes the log (open until then, so that a failure here is logged). Every rank
    waits for the others first: gloo's worker threads need the GIL to release the last collectives' tensors while
    teardown holds it, and without the barrier a CPU run sometimes hung at exit."""
    dist.barrier()
    dist.destroy_process_group()
    if run.logfile is not None:
        with suppress(OSError):  # its last lines were flushed, or LogWriteError said why not
            run.logfile.close()


def abandon(run: Run, exit_status: int):
    """Leaves at once after a failure: a peer may be gone, and waiting for it in a teardown could hang."""
    if run.logfile is not None:
        with suppress(OSError):
            run.logfile.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_status)


# -----------------------------------------------------------------------------
# The model and its optimizers


def compiles(args: Hyperparameters, device: torch.device) -> bool:
    return args.compile == "true" or (args.compile == "auto" and device.type == "cuda")


def attention_mask_function(args: Hyperparameters, device: torch.device):
    """FlexAttention's block mask on the GPU (FlexAttention has no CPU backward), the dense mask for SDPA on
    the CPU."""
    if device.type != "cuda":
        return dense_sliding_window_mask
    return compiled_sliding_window_block_mask if compiles(args, device) else sliding_window_block_mask


def build_model(args: Hyperparameters, device: torch.device, world_size: int = 1) -> GPT:
    activation_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32,
                        "auto": torch.bfloat16 if device.type == "cuda" else torch.float32}[args.compute_dtype]
    # The loss reaching the head is a mean over a rank's tokens of the step (micro-batch means / their count).
    head = (functools.partial(FP8CastedLinear, grad_tokens=args.batch_size // world_size) if args.fp8_head
            else CastedLinear)
    head_loss = (functools.partial(chunked_softcapped_cross_entropy, chunk_tokens=args.fused_loss_chunk_tokens,
                                   products=FP8Products if args.fp8_head else CastedProducts)
                 if args.fused_loss else softcapped_cross_entropy)
    model = GPT(vocab_size=args.vocab_size, num_layers=args.num_layers, model_dim=args.model_dim,
                num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, mlp_dim=args.mlp_dim,
                max_seq_len=args.sequence_length, logit_softcap=args.logit_softcap,
                attention_free_layers=attention_free_layers(args), mask_function=attention_mask_function(args, device),
                activation_dtype=activation_dtype, head=head, head_loss=head_loss,
                attention=MergedQKVAttention if args.merged_qkv else CausalSelfAttention)
    if args.bf16_embeddings:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.bfloat16()
    return model.to(device)


def parameters_without_gradient(args: Hyperparameters) -> list[str]:
    """The parameters no loss reaches with these settings (a value embedding that only attention-free layers would
    use), found by one forward and backward of a small copy of the model on the CPU: the same layers and names, with
    one 4-dim head and 128 words. DDP stops a run with unused parameters with a traceback about unfinished
    reductions."""
    small = dataclasses.replace(args, vocab_size=ATTENTION_BLOCK, model_dim=4, num_heads=1, num_kv_heads=1, mlp_dim=4,
                                sequence_length=ATTENTION_BLOCK, bf16_embeddings=False, compute_dtype="float32")
    with torch.random.fork_rng(devices=[]):  # leaves the seed of the real model's weights alone
        model = build_model(small, torch.device("cpu"))
    tokens = torch.arange(ATTENTION_BLOCK + 1) % ATTENTION_BLOCK
    model(tokens[:-1].int(), tokens[1:], torch.tensor(1)).backward()
    return [name for name, param in model.named_parameters() if param.grad is None]


def model_state_bytes(args: Hyperparameters) -> tuple[int, int]:
    """(bytes of a checkpoint, bytes training holds on each rank before activations): weights, gradients, Adam's two
    moments, Muon's momentum; counted on the meta device, which allocates nothing."""
    try:
        with torch.device("meta"):
            model = build_model(args, torch.device("meta"))
    except (RuntimeError, ValueError, OverflowError, MemoryError) as error:
        raise InputError(f"model_dim={args.model_dim}, mlp_dim={args.mlp_dim}, num_layers={args.num_layers}: no such "
                         f"model can be built ({str(error).splitlines()[0][:200]})") from None
    hidden = {id(param) for param in model.blocks.parameters() if param.ndim >= 2}  # Muon's: one state, else Adam's two
    weights = sum(param.numel() * param.element_size() for param in model.parameters())
    states = sum(param.numel() * param.element_size() * (1 if id(param) in hidden else 2)
                 for param in model.parameters())
    return weights + states, 2 * weights + states


def check_model_fits(args: Hyperparameters, device: torch.device):
    """A model whose weights and optimizer states alone exceed the device's memory is refused before it is built."""
    if device.type == "cuda":
        memory, where = torch.cuda.get_device_properties(device).total_memory, torch.cuda.get_device_name(device)
    else:
        memory, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    ranks_sharing = 1 if device.type == "cuda" else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    needed = model_state_bytes(args)[1] * ranks_sharing
    if needed > memory:
        raise InputError(f"model_dim={args.model_dim}, mlp_dim={args.mlp_dim}, num_layers={args.num_layers}, "
                         f"vocab_size={args.vocab_size}: weights, gradients and optimizer states alone need "
                         f"{needed / 2**30:,.1f} GiB, more than the {memory / 2**30:,.1f} GiB of {where}")


def build_optimizers(model: GPT, args: Hyperparameters, rank: int, world_size: int) -> tuple[torch.optim.Adam, Muon]:
    """Muon for the 2-D weights inside the blocks; Adam for embeddings, head and scalars. No weight decay and
    no gradient clipping, as in the record."""
    hidden_matrices = [p for p in model.blocks.parameters() if p.ndim >= 2]
    embeddings = [model.embed.weight, *model.value_embeds.parameters()]
    scalars = [p for p in model.parameters() if p.ndim < 2]
    head = [model.lm_head.weight]
    groups = [hidden_matrices, embeddings, scalars, head]
    grouped_ids = [id(p) for g in groups for p in g]
    assert sorted(grouped_ids) == sorted(id(p) for p in model.parameters()), "each parameter in exactly one group"
    device = model.lm_head.weight.device
    adam = torch.optim.Adam([dict(params=embeddings, lr=args.embed_lr), dict(params=head, lr=args.head_lr),
                             dict(params=scalars, lr=args.scalar_lr)],
                            betas=(0.8, 0.95), eps=args.adam_eps, fused=device.type == "cuda")
    orthogonalize = newton_schulz_orthogonalize
    if compiles(args, device):  # compiled on its own, apart from the model
        orthogonalize = torch.compile(newton_schulz_orthogonalize)
    row_splits = {module.qkv.weight: module.qkv_rows for module in model.modules()
                  if isinstance(module, MergedQKVAttention)}
    muon = (BatchedMuon if args.batched_muon else Muon)(
        hidden_matrices, lr=args.muon_lr, momentum=args.muon_momentum, ns_steps=args.newton_schulz_steps,
        rank=rank, world_size=world_size, orthogonalize=orthogonalize, row_splits=row_splits)
    for optimizer in (adam, muon):
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return adam, muon


# -----------------------------------------------------------------------------
# Throughput: model FLOPs per token and utilisation of the card's peak


def training_flops_per_token(num_layers: int, model_dim: int, num_heads: int, num_kv_heads: int, mlp_dim: int,
                             vocab_size: int, num_attention_layers: int, attended_keys: float) -> float:
    """Training FLOPs (forward + backward = 3x forward) per token: the matrix products of the blocks and the
    LM head, plus attention's two products (q k^T and p v) with attended_keys keys per query.

    A product (m x k) @ (k x n) counts 2mkn FLOPs, so a weight matrix used once per token costs 2 x its size
    per token forward. With d = model_dim, kv_dim = num_kv_heads * (d // num_heads):
        matrix params P = num_layers * 2 * d * mlp_dim                          (MLP fc and proj)
                        + num_attention_layers * (2 * d * d + 2 * d * kv_dim)   (q, proj; k, v)
                        + d * vocab_size                                        (LM head)
        attention A     = num_attention_layers * 2 * 2 * num_heads * head_dim * attended_keys
        training        = 3 * (2 * P + A)
    Embedding lookups are not products (0 FLOPs); norms, rotary, soft cap, softmax, cross-entropy, ReLU^2,
    other elementwise work and the optimizers are left out.
    """
    head_dim = model_dim // num_heads
    kv_dim = num_kv_heads * head_dim
    matrix_params = (num_layers * 2 * model_dim * mlp_dim
                     + num_attention_layers * (2 * model_dim * model_dim + 2 * model_dim * kv_dim)
                     + model_dim * vocab_size)
    attention = num_attention_layers * 2 * 2 * num_heads * head_dim * attended_keys
    return 3 * (2 * matrix_params + attention)


def mean_attended_keys(sequence_length: int, window_blocks: int, block_size: int = ATTENTION_BLOCK) -> float:
    """Mean number of keys a query attends under the causal window at block granularity (key k for query q iff
    k <= q and q // block_size - k // block_size < window_blocks). Documents are ignored: an upper bound.

    Query q at offset r of block b attends r + 1 keys of its own block and min(b, window_blocks - 1) whole
    blocks before it, so a block of s queries sums to s(s+1)/2 + s * block_size * min(b, window_blocks - 1).
    """
    total = 0
    for block in range(-(-sequence_length // block_size)):
        queries = min(block_size, sequence_length - block * block_size)
        total += queries * (queries + 1) // 2 + queries * block_size * min(block, window_blocks - 1)
    return total / sequence_length


@functools.cache
def step_flops(args: Hyperparameters, window_blocks: int) -> float:
    """Model FLOPs of one training step (batch_size tokens) at this window."""
    per_token = training_flops_per_token(
        args.num_layers, args.model_dim, args.num_heads, args.num_kv_heads, args.mlp_dim, args.vocab_size,
        args.num_layers - len(attention_free_layers(args)),
        mean_attended_keys(args.sequence_length, window_blocks))
    return args.batch_size * per_token


# Dense bf16 peaks from the datasheets, TFLOP/s per card (the usual MFU convention); the first match by name.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0),
               ("B200", 2250.0))


def peak_tflops_per_card(run: Run) -> float | None:
    if run.args.peak_tflops > 0:
        return run.args.peak_tflops
    if run.on_gpu:
        card = torch.cuda.get_device_name(run.device)
        return next((tflops for name, tflops in PEAK_TFLOPS if name in card), None)
    return None


# -----------------------------------------------------------------------------
# Training: the state that changes, and the loop's phases (evaluate, one step, checkpoint, finish)


@dataclass
class PendingLoss:
    """A step's loss and stop votes on their way to the host; read one step later, so no step waits for them."""
    step: int
    values: torch.Tensor  # on the host: [mean loss over the ranks, number of ranks asked to stop]
    ready: object  # a CUDA event, or None on the CPU
    train_time_ms: float
    step_avg_ms: float


@dataclass
class Training:
    """What changes as the run goes: weights, optimizer states, the data stream, the clock."""
    model: GPT  # holds the parameters; ddp_model wraps it (compiled) for forward and backward
    ddp_model: DDP
    adam: torch.optim.Adam
    muon: Muon
    window_blocks: torch.Tensor  # a device tensor updated in place, so a growing window never recompiles
    val_batches: list
    batches: object  # iterator over the steps' micro-batches
    step: int = 0  # steps done
    first_step: int = 0  # where this process started: 0, or the step a resumed checkpoint holds
    training_time_ms: float = 0.0
    timed_steps: int = 0
    timed_flops: float = 0.0
    clock_start: float | None = None  # time.perf_counter() while the clock runs
    pending: PendingLoss | None = None
    stop_reason: str | None = None  # why the run cannot go on (a non-finite loss)
    stop_requested: bool = False  # a rank received SIGINT, SIGTERM or SIGHUP: stop after this step, resumable
    last_checkpoint_step: int | None = None
    last_val_loss: float | None = None
    shard_check: ShardCheck | None = None  # until its result is in, before the first timed step
    finished: bool = False  # the result is logged: what fails after it does not undo it


def synchronize(run: Run):
    if run.on_gpu:
        torch.cuda.synchronize(run.device)


def train_time_ms(tr: Training) -> float:
    running = 0.0 if tr.clock_start is None else 1000 * (time.perf_counter() - tr.clock_start)
    return tr.training_time_ms + running


class clock_paused:
    """Validation, checkpoints and samples are outside the training time: the clock stops around them."""

    def __init__(self, run: Run, tr: Training):
        self.run, self.tr = run, tr

    def __enter__(self):
        synchronize(self.run)
        self.was_running = self.tr.clock_start is not None
        self.tr.training_time_ms = train_time_ms(self.tr)
        self.tr.clock_start = None

    def __exit__(self, *exception):
        if self.was_running:
            synchronize(self.run)
            self.tr.clock_start = time.perf_counter()


class StopSignals:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal or ssh session). The first asks every rank to finish
    the current step and stop, with a checkpoint when checkpointing is on; another one, a second or more later,
    exits at once. (torchrun passes a signal it receives on to its workers, which then see it twice within a
    moment: that counts once.)"""

    def __init__(self, run: Run):
        self.run, self.received, self.first_at, self.current_step = run, None, 0.0, lambda: 0

    def install(self, current_step):
        self.current_step = current_step
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, self.handle)

    def handle(self, number, frame):
        name = signal.Signals(number).name
        if self.received is None:
            self.received, self.first_at = signal.Signals(number), time.monotonic()
        elif time.monotonic() - self.first_at > 1.0:
            self.run.log(f"stopping: received a second {name} during step {self.current_step() + 1}: exited at "
                         "once, without a checkpoint", console=True)
            os._exit(128 + number)


def build_training(run: Run) -> Training:
    """The model (compiled, in DDP), both optimizers, the validation and training data; from a checkpoint when
    resuming."""
    args = run.args
    torch.manual_seed(args.seed)
    model = build_model(args, run.device, run.world_size)
    adam, muon = build_optimizers(model, args, run.rank, run.world_size)
    resumed = resume_from_checkpoint(run, model, adam, muon) if run.resume_from else {}
    first_step = resumed.get("step", 0)
    files_read = training_files_read(list(run.train_files), args.batch_size, first_step, args.num_iterations)
    shard_check = ShardCheck(files_read, args.vocab_size, run.rank, run.world_size)
    inductor_config.coordinate_descent_tuning = args.coordinate_descent_tuning
    compiled = torch.compile(model, dynamic=False) if compiles(args, run.device) else model
    # Our only buffers (rotary tables) are identical on every rank, so DDP need not broadcast them each
    # forward; torch 2.13 deprecates that flag's name but keeps its meaning.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated")
    ddp_model = DDP(compiled, device_ids=[run.device.index] if run.on_gpu else None,
                    broadcast_buffers=False, gradient_as_bucket_view=True)  # DDP also broadcasts rank 0's weights
    tr = Training(model=model, ddp_model=ddp_model, adam=adam, muon=muon,
                  window_blocks=torch.tensor(window_blocks_at(first_step, args), dtype=torch.int32, device=run.device),
                  val_batches=validation_batches(list(run.val_files), args.val_tokens, args.sequence_length, run.rank,
                                                 run.world_size, run.device, args.vocab_size),
                  batches=training_batches(list(run.train_files), args.batch_size, args.sequence_length, run.rank,
                                           run.world_size, run.device, args.vocab_size, first_step),
                  step=first_step, first_step=first_step, training_time_ms=resumed.get("training_time_ms", 0.0),
                  timed_steps=resumed.get("timed_steps", 0), timed_flops=resumed.get("timed_flops", 0.0),
                  last_checkpoint_step=first_step if run.resume_from else None, shard_check=shard_check)
    peak = peak_tflops_per_card(run)
    run.log(f"model FLOPs per token (6 x matrix parameters + attention within the window, formula in "
            f"training_flops_per_token): {step_flops(args, window_blocks_at(0, args)) / args.batch_size / 1e6:.0f} "
            f"MFLOP at the first window, {step_flops(args, window_blocks_at(args.num_iterations, args)) / args.batch_size / 1e6:.0f}"
            f" at the last; peak {'-' if peak is None else f'{peak} TFLOP/s'} per card", console=True)
    run.log(f"timing: the clock starts after {args.timing_warmup_steps} step(s) (compilation and warm-up) and stops "
            "for validation and checkpoints; until it starts, step lines show train_time:0ms", console=True)
    for warning in setting_warnings(args, first_step):
        run.log(f"warning: {warning}", console=True)
    return tr


def setting_warnings(args: Hyperparameters, first_step: int) -> list[str]:
    """Settings that run but may not do what was meant: one line each, in the console and the log."""
    found = []
    steps = args.num_iterations - first_step
    if args.timing_warmup_steps >= steps:
        found.append(f"timing_warmup_steps={args.timing_warmup_steps} covers all {steps} step(s) this run trains: "
                         "no step is timed and the train time will read 0.0 s; lower timing_warmup_steps")
    if args.checkpoint_every >= args.num_iterations and not args.save_checkpoint:
        found.append(f"checkpoint_every={args.checkpoint_every} is not below num_iterations={args.num_iterations}: "
                         "no periodic checkpoint will be written (save_checkpoint=true writes one at the end)")
    if max(args.muon_lr, args.embed_lr, args.head_lr, args.scalar_lr) == 0:
        found.append("every learning rate is 0: the weights never change and the model will not learn")
    if args.muon_momentum_start > args.muon_momentum and args.momentum_warmup_steps > 0:
        found.append(f"muon_momentum_start={args.muon_momentum_start} is above muon_momentum={args.muon_momentum}: "
                     "Muon's momentum falls during its warm-up")
    if args.val_loss_every > args.num_iterations:
        found.append(f"val_loss_every={args.val_loss_every} is beyond num_iterations={args.num_iterations}: the "
                     "validation loss is measured only at the last step")
    defaults = Hyperparameters()
    for name, (in_effect, needs) in SETTINGS_IN_EFFECT_ONLY_WITH.items():
        if getattr(args, name) != getattr(defaults, name) and not in_effect(args):
            found.append(f"{name}={getattr(args, name)!r} has no effect without {needs}")
    return found


# Settings that do something only together with another: (is the other set, what it is).
SETTINGS_IN_EFFECT_ONLY_WITH = {
    "sample_prompts": (lambda args: args.sample_at_end, "sample_at_end=true"),
    "sample_tokens": (lambda args: args.sample_at_end, "sample_at_end=true"),
    "keep_checkpoints": (lambda args: args.checkpoint_every > 0, "checkpoint_every > 0"),
    "checkpoint_failure_stops": (lambda args: args.checkpoint_every > 0, "checkpoint_every > 0"),
    "force_resume": (lambda args: bool(args.resume), "resume"),
}


def evaluate(run: Run, tr: Training) -> float:
    """Mean loss over the validation tokens, all ranks together."""
    total = torch.zeros((), device=run.device)
    with torch.no_grad():
        for inputs, targets in tr.val_batches:
            total += tr.ddp_model(inputs, targets, tr.window_blocks)
    dist.all_reduce(total)
    return total.item() / (len(tr.val_batches) * run.world_size)


# A val loss within this of ln(vocab_size), the zero-initialized head's loss (every token equally likely), means
# nothing was learned: one step of the tiny CPU model already gains 0.06; a diverged run sits there or above it.
NOT_LEARNED_MARGIN = 0.05


def not_learned(val_loss: float, args: Hyperparameters) -> bool:
    return val_loss > math.log(args.vocab_size) - NOT_LEARNED_MARGIN


def validate(run: Run, tr: Training):
    args = run.args
    with clock_paused(run, tr):
        report_pending_loss(run, tr)
        val_loss = tr.last_val_loss = evaluate(run, tr)
        step_avg = tr.training_time_ms / tr.timed_steps if tr.timed_steps else 0.0
        run.log(f"step:{tr.step}/{args.num_iterations} val_loss:{val_loss:.4f} train_time:{tr.training_time_ms:.0f}ms "
                f"step_avg:{step_avg:.2f}ms", console=True)
        if tr.timed_steps:
            seconds = tr.training_time_ms / 1000
            peak = peak_tflops_per_card(run)
            mfu = "-" if peak is None else f"{100 * tr.timed_flops / seconds / (peak * 1e12 * run.world_size):.1f}%"
            run.log(f"throughput: step:{tr.step}/{args.num_iterations} tokens_per_s:"
                    f"{tr.timed_steps * args.batch_size / seconds:.0f} mfu:{mfu}", console=True)
        if not math.isfinite(val_loss):
            tr.stop_reason = tr.stop_reason or f"val loss is {val_loss} at step {tr.step}"
        elif tr.first_step < tr.step < args.num_iterations and not_learned(val_loss, args):  # finish() judges the last
            run.log(f"warning: val loss {val_loss:.4f} at step {tr.step} is no better than the untrained model's "
                    f"ln(vocab_size) = {math.log(args.vocab_size):.4f}: the model is not learning (a learning rate far "
                    "too large, or 0?)", console=True)


def train_step(run: Run, tr: Training, stop_requested: bool):
    """One optimizer step: this rank's micro-batches with gradient accumulation (DDP all-reduces once, at the
    last), the schedules, both optimizers. The loss and the stop vote are all-reduced and start their way to the
    host, so every rank learns the same thing at the same step; the previous step's, which arrived while this
    one ran, is reported."""
    args = run.args
    step_loss = torch.zeros((), device=run.device)
    micro_batches = next(tr.batches)
    for index, (inputs, targets) in enumerate(micro_batches):
        with nullcontext() if index == len(micro_batches) - 1 else tr.ddp_model.no_sync():
            loss = tr.ddp_model(inputs, targets, tr.window_blocks) / len(micro_batches)
            loss.backward()
        step_loss += loss.detach()
    lr_multiplier = learning_rate_multiplier(tr.step, args)
    for optimizer in (tr.adam, tr.muon):
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier
    for group in tr.muon.param_groups:
        group["momentum"] = muon_momentum_at(tr.step, args)
    tr.adam.step()
    tr.muon.step()
    tr.model.zero_grad(set_to_none=True)

    loss_and_votes = torch.stack([step_loss / run.world_size, torch.full_like(step_loss, float(stop_requested))])
    dist.all_reduce(loss_and_votes)
    host_values = loss_and_votes.to("cpu", non_blocking=True)
    ready = torch.cuda.Event() if run.on_gpu else None
    if ready is not None:
        ready.record()
    if tr.clock_start is not None:
        tr.timed_steps += 1
        tr.timed_flops += step_flops(args, window_blocks_at(tr.step, args))
    tr.step += 1
    elapsed = train_time_ms(tr)
    pending = PendingLoss(tr.step, host_values, ready, elapsed, elapsed / tr.timed_steps if tr.timed_steps else 0.0)
    report_pending_loss(run, tr)  # the previous step's, which arrived while this one ran
    tr.pending = pending


def report_pending_loss(run: Run, tr: Training):
    """Logs the step line of the step whose loss is on its way, and stops the run on a non-finite loss or a
    stop vote."""
    pending, tr.pending = tr.pending, None
    if pending is None:
        return
    if pending.ready is not None:
        pending.ready.synchronize()
    loss, stop_votes = pending.values.tolist()
    run.log(f"step:{pending.step}/{run.args.num_iterations} train_loss:{loss:.4f} "
            f"train_time:{pending.train_time_ms:.0f}ms step_avg:{pending.step_avg_ms:.2f}ms", console=True)
    if tr.stop_reason is None and not math.isfinite(loss):
        tr.stop_reason = f"train loss is {loss} at step {pending.step}"
    tr.stop_requested = tr.stop_requested or stop_votes > 0


def train(run: Run, tr: Training, signals: StopSignals):
    """Validation when due, then one step, until the last step or a reason to stop. A stop asked for once the last
    step is trained (its vote arrives a step late) leaves nothing to resume: the run validates and finishes."""
    args = run.args
    while tr.stop_reason is None and (not tr.stop_requested or tr.step == args.num_iterations):
        if tr.shard_check is not None and tr.step - tr.first_step == min(1, args.timing_warmup_steps):
            tr.shard_check, shard_check = None, tr.shard_check  # after the first step, which compiles
            shard_check.result()
        if tr.step - tr.first_step == args.timing_warmup_steps and tr.clock_start is None:
            synchronize(run)
            tr.clock_start = time.perf_counter()
        tr.window_blocks.fill_(window_blocks_at(tr.step, args))
        last_step = tr.step == args.num_iterations
        if last_step or (args.val_loss_every > 0 and tr.step % args.val_loss_every == 0):
            validate(run, tr)
        if last_step or tr.stop_reason is not None or tr.stop_requested:
            break
        train_step(run, tr, stop_requested=signals.received is not None)
        if args.checkpoint_every > 0 and tr.step % args.checkpoint_every == 0 and tr.step < args.num_iterations:
            if save_checkpoint(run, tr) is None and args.checkpoint_failure_stops:
                tr.stop_reason = (f"the checkpoint of step {tr.step} could not be written "
                                  "(checkpoint_failure_stops=true)")
    report_pending_loss(run, tr)


# -----------------------------------------------------------------------------
# Checkpoints: the complete training state in one file, written by rank 0, loadable onto any number of ranks

CHECKPOINT_FORMAT = "train_gpt.py checkpoint 1"


def merged_qkv_names(model: GPT) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Name of each merged_qkv weight -> (the names of q, k and v in the unmerged model, their row counts)."""
    return {f"{name}.qkv.weight": (tuple(f"{name}.{part}.weight" for part in "qkv"), module.qkv_rows)
            for name, module in model.named_modules() if isinstance(module, MergedQKVAttention)}


def checkpoint_layout(model: GPT, tensors: dict) -> dict:
    """Weights or Muon momenta by name as checkpoints hold them: q, k and v apart, so that a checkpoint loads
    whether merged_qkv is on or off."""
    tensors = dict(tensors)
    for merged, (names, rows) in merged_qkv_names(model).items():
        tensors.update(zip(names, tensors.pop(merged).split(rows)))
    return tensors


def model_layout(model: GPT, tensors: dict) -> dict:
    """The inverse of checkpoint_layout: a checkpoint's tensors by this model's names (q, k and v stacked
    where merged_qkv is on). Names it does not hold stay as they are, for load_state_dict to name."""
    tensors = dict(tensors)
    for merged, (names, _) in merged_qkv_names(model).items():
        if all(name in tensors for name in names):
            tensors[merged] = torch.cat([tensors.pop(name) for name in names])
    return tensors


def save_checkpoint(run: Run, tr: Training) -> Path | None:
    """Writes logs/<run_id>/step_<step>.pt: weights, both optimizers' states (Muon's momentum gathered from the
    ranks that own it), the step (which fixes the data position: one shard batch per step), the clock, the RNG,
    hyperparameters, code and the log's path. Written under a temporary name and renamed when complete; the newest
    keep_checkpoints are kept. Every rank takes part; the time is outside the training time. A checkpoint that
    cannot be written (a full disk) is said in one line, its partial file removed; then every rank gets None."""
    with clock_paused(run, tr):
        report_pending_loss(run, tr)
        started = time.perf_counter()
        names = {id(param): name for name, param in tr.model.named_parameters()}
        momentum = {}
        for param, owner in tr.muon.owned_parameters():
            buffer = tr.muon.state[param]["momentum_buffer"] if owner == run.rank else torch.empty_like(param)
            dist.broadcast(buffer, src=owner)
            if run.rank == 0:
                momentum[names[id(param)]] = buffer.cpu()
        path, failure = run.checkpoint_path(tr.step), None
        if run.rank == 0:
            state = dict(format=CHECKPOINT_FORMAT, run_id=run.run_id, step=tr.step, world_size=run.world_size,
                         log=str(run.log_path), code=run.code, hyperparameters=dataclasses.asdict(run.args),
                         model=checkpoint_layout(tr.model, {name: value.cpu()
                                                            for name, value in tr.model.state_dict().items()}),
                         adam_state=tr.adam.state_dict()["state"], muon_momentum=checkpoint_layout(tr.model, momentum),
                         training_time_ms=tr.training_time_ms, timed_steps=tr.timed_steps,
                         timed_flops=tr.timed_flops, rng_cpu=torch.get_rng_state(),
                         rng_cuda=torch.cuda.get_rng_state(run.device) if run.on_gpu else None)
            partial = path.with_name(f".{path.name}.partial")  # never picked up by --resume
            try:
                run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                with open(partial, "wb") as f:
                    torch.save(state, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(partial, path)
            except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
                with suppress(OSError):
                    partial.unlink(missing_ok=True)
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
                free = shutil.disk_usage(run.log_path.parent).free / 2**20
                failure = (f"warning: checkpoint of step {tr.step} not written to {path}: {reason[:200]} ({free:,.0f} "
                           f"MiB free); its partial file was removed")
                run.log(failure, console=True)
            else:
                for old in sorted(run.checkpoint_dir.glob("step_*.pt"))[:-run.args.keep_checkpoints]:
                    old.unlink()
                run.log(f"checkpoint: step {tr.step} saved to {path} ({path.stat().st_size / 2**20:.0f} MiB in "
                        f"{time.perf_counter() - started:.1f} s, outside the training time)", console=True)
        outcome = [failure]
        dist.broadcast_object_list(outcome, src=0)  # every rank learns whether it was written
        if outcome[0] is not None:
            return None
        tr.last_checkpoint_step = tr.step
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated or foreign file fails in many ways; all mean "unusable"
        raise InputError(f"{path}: not a complete checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a checkpoint of this trainer (format {CHECKPOINT_FORMAT!r})")
    return checkpoint


def find_checkpoint(resume: str, warn) -> tuple[Path, dict]:
    """--resume names a checkpoint file, or a run's folder: then its newest checkpoint that loads (partial
    files of an interrupted save have another name and are never considered)."""
    path = Path(resume)
    if path.is_dir():
        for candidate in sorted(path.glob("step_*.pt"), reverse=True):
            try:
                return candidate, load_checkpoint(candidate)
            except InputError as error:
                warn(f"warning: skipping {error}")
        raise InputError(f"--resume={resume}: no complete checkpoint (step_*.pt) in this folder")
    if not path.is_file():
        raise InputError(f"--resume={resume}: no such checkpoint file or run folder")
    return path, load_checkpoint(path)


def code_difference(saved: str, current: str) -> str | None:
    """How the code that wrote a checkpoint differs from this file's, for the resume warning; None if equal."""
    if saved == current:
        return None
    # The two header lines ("--- ", "+++ ") go; the rest is hunk lines ("@@") and changed lines ("-", "+").
    diff = list(difflib.unified_diff(saved.splitlines(), current.splitlines(), lineterm="", n=0))[2:]
    differences = [line for line in diff if line[:1] in "+-"]
    if not differences:  # splitlines() sees no difference
        return "only line endings or the final newline differ"
    return f"{len(differences)} line(s) differ, the first: {differences[0][:150]!r}"


def resume_from_checkpoint(run: Run, model: GPT, adam: torch.optim.Adam, muon: Muon) -> dict:
    """Loads the checkpoint into model and optimizers after checking that it continues this run's math;
    returns the progress it holds (step, clock)."""
    path, checkpoint = find_checkpoint(run.resume_from, lambda text: run.log(text, console=True))
    args, saved = run.args, checkpoint["hyperparameters"]
    changed = [f"{name} {saved.get(name)!r} -> {value!r}" for name, value in dataclasses.asdict(args).items()
               if name not in BOOKKEEPING_FIELDS and saved.get(name) != value]
    if changed and not args.force_resume:
        raise InputError(f"{path}: these hyperparameters differ from the checkpoint's and change the math: "
                         f"{'; '.join(changed)}; keep the checkpoint's values or pass --force_resume=true")
    if changed:
        run.log(f"warning: resuming with changed hyperparameters (forced): {'; '.join(changed)}", console=True)
    if checkpoint["step"] >= args.num_iterations:
        raise InputError(f"{path}: holds step {checkpoint['step']}, but this run ends at num_iterations="
                         f"{args.num_iterations}")
    try:
        model.load_state_dict(model_layout(model, checkpoint["model"]))
    except RuntimeError as error:
        raise InputError(f"{path}: holds a model of another shape: {str(error).splitlines()[1].strip()}") from None
    adam.load_state_dict(dict(state=checkpoint["adam_state"], param_groups=adam.state_dict()["param_groups"]))
    names = {id(param): name for name, param in model.named_parameters()}
    momentum = model_layout(model, checkpoint["muon_momentum"])
    for param, owner in muon.owned_parameters():  # owners follow this run's number of ranks
        if owner == run.rank:
            muon.state[param]["momentum_buffer"] = momentum[names[id(param)]].to(run.device)
    torch.set_rng_state(checkpoint["rng_cpu"].clone())
    if run.on_gpu and checkpoint["rng_cuda"] is not None:
        torch.cuda.set_rng_state(checkpoint["rng_cuda"].clone(), run.device)
    difference = code_difference(checkpoint["code"], run.code)
    if difference is not None:
        run.log(f"warning: {path} was written by other code: {difference}", console=True)
    # Named after the log that wrote the checkpoint (logs/<name>.txt), which records/compare.py joins to this one:
    # the run id, or a --resume=auto restart's log. (Older checkpoints lack "log"; their log is <run id>.txt.)
    previous_log = Path(checkpoint.get("log", f"{checkpoint['run_id']}.txt")).stem
    run.log(f"resumed: run {previous_log} at step {checkpoint['step']} from {path} (written on "
            f"{checkpoint['world_size']} rank(s), now {run.world_size})", console=True)
    return dict(step=checkpoint["step"], training_time_ms=checkpoint["training_time_ms"],
                timed_steps=checkpoint["timed_steps"], timed_flops=checkpoint["timed_flops"])


# -----------------------------------------------------------------------------
# The run: setup, training, finish


def finish(run: Run, tr: Training, signals: StopSignals) -> int:
    """The run's last words: why it stopped (with how to resume), or that it learned nothing, or its figures, and
    only then its checkpoint and samples. Returns the exit status."""
    args = run.args
    if tr.stop_reason is not None:
        run.log(f"stopping: {tr.stop_reason}", console=True)
        return 1
    received = signals.received.name if signals.received is not None else "a stop signal on another rank"
    if tr.stop_requested and tr.step < args.num_iterations:  # so the checkpoint has steps left to resume
        if args.checkpoint_every > 0:
            path = save_checkpoint(run, tr) if tr.last_checkpoint_step != tr.step else run.checkpoint_path(tr.step)
            if path is None:
                remedy = "its checkpoint could not be written, so it cannot be resumed from this step"
            elif args.resume == "auto":
                remedy = "resume with the same command (--resume=auto)"
            else:
                remedy = f"resume with --resume={path}"
        else:
            remedy = "no checkpoint (checkpoint_every=0), so it cannot be resumed"
        run.log(f"stopping: received {received} at step {tr.step}; {remedy}; log: {run.log_path}", console=True)
        return 128 + signals.received if signals.received is not None else 1
    if tr.stop_requested:  # the vote arrived when every step was trained: nothing is left to resume
        run.log(f"received {received} after the last step: the run finishes", console=True)
    if run.on_gpu:
        memory = (f"peak memory allocated: {torch.cuda.max_memory_allocated(run.device) // 2**20} MiB "
                  f"reserved: {torch.cuda.max_memory_reserved(run.device) // 2**20} MiB")
    else:
        memory = f"peak memory (max RSS of rank 0): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB"
    run.log(memory, console=True)
    if not_learned(tr.last_val_loss, args):
        run.log(f"stopping: the model did not learn: val loss {tr.last_val_loss:.4f} at step {tr.step} is no better "
                f"than the untrained model's ln(vocab_size) = {math.log(args.vocab_size):.4f}; a learning rate far too "
                "large (or 0) is the usual cause", console=True)
        return 1
    # The result first: a checkpoint or samples that fail after it do not lose it.
    step_avg = tr.training_time_ms / tr.timed_steps if tr.timed_steps else 0.0
    run.log(f"done: val_loss {tr.last_val_loss:.4f} at step {tr.step}, train_time {tr.training_time_ms / 1000:.1f} s, "
            f"step_avg {step_avg:.2f} ms; log: {run.log_path}", console=True)
    tr.finished = True
    exit_status = 0
    if args.save_checkpoint and tr.last_checkpoint_step != tr.step and save_checkpoint(run, tr) is None:
        exit_status = 1  # the run's result stands (compare.py counts it); the file asked for is missing
    if args.sample_at_end and run.rank == 0:
        log_samples(run, tr.model, tr.window_blocks)
    return exit_status


def collective_failed(error: Exception) -> bool:
    """NCCL reports a failed or timed-out collective as a DistError; gloo as a RuntimeError from its transport."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo" in str(error))


def main(argv: list[str]) -> int:
    args = parse_hyperparameters(argv)
    try:
        run = setup(args)
    except KeyboardInterrupt:
        raise SystemExit("interrupted during setup; nothing was trained") from None
    signals, tr = StopSignals(run), None

    def at_step() -> str:
        return f"at step {tr.step}" if tr is not None else "before the first step"

    try:
        tr = build_training(run)
        signals.install(lambda: tr.step)
        train(run, tr, signals)
        exit_status = finish(run, tr, signals)
        teardown(run)
        return exit_status
    except InputError as error:  # found after setup: a bad checkpoint, a token id outside the vocabulary
        if not isinstance(error, LogWriteError):
            run.log(f"stopping: {error} ({at_step()})")
        if run.rank == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        abandon(run, 1)
    except KeyboardInterrupt:  # before the signal handlers were installed
        run.log(f"stopping: interrupted {at_step()}; log: {run.log_path}", console=True)
        abandon(run, 130)
    except Exception as error:
        if tr is not None and tr.finished:  # the done: line stands; records/compare.py keeps counting the run
            message = f"warning: after the run finished: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            run.log(message)
            print(message, file=sys.stderr, flush=True)
            if not collective_failed(error):
                traceback.print_exc()
        elif collective_failed(error):  # another rank died or stopped responding; it reports its own error
            message = (f"stopping: rank {run.rank} lost its peers {at_step()} (another rank died or stopped "
                       f"responding): {str(error).splitlines()[0][:300]}")
            run.log(message)
            print(message, file=sys.stderr, flush=True)
        else:  # a real bug: into the log for records/compare.py, then its traceback, once
            run.log(f"stopping: {type(error).__name__}: {error} {at_step()}")
            traceback.print_exc()
        abandon(run, 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""NanoGPT speedrun trainer: a GPT-2-small-sized model trained on FineWeb to 3.28 validation loss.

One file, read top to bottom: Muon, the model's modules, the GPT, the data loader, the hyperparameters,
setup, and the training loop. The design is the public speedrun's as of January 2025 (see SPEC.md).

    torchrun --standalone --nproc_per_node=8 train_gpt.py             # a record attempt
    torchrun --standalone --nproc_per_node=1 train_gpt.py --num_iterations=100
    python train_gpt.py --help                                        # every hyperparameter

Every field of `Hyperparameters` can be overridden as --name=value. On a machine without CUDA the same
script trains on the CPU (gloo, SDPA attention with a dense mask, no compilation unless asked).
"""

import os

# Set before CUDA starts: fewer fragmentation stalls with the large, changing activation sizes.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import dataclasses
import glob
import itertools
import json
import math
import resource
import socket
import subprocess
import sys
import time
import uuid
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
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

# -----------------------------------------------------------------------------
# Muon: momentum orthogonalized by Newton-Schulz (Keller Jordan's optimizer for hidden matrices)


def newton_schulz_orthogonalize(grad: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately replaces grad's singular values by values near 1 (roughly U V^T of its SVD).

    A quintic iteration whose coefficients maximise the slope at zero; it does not converge to exactly 1
    but leaves singular values in a band around it, which trains as well and costs only 5 steps in bf16.
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
    """

    def __init__(self, params, lr: float, momentum: float, nesterov: bool = True, ns_steps: int = 5,
                 rank: int = 0, world_size: int = 1, orthogonalize=newton_schulz_orthogonalize):
        params = list(params)
        sizes = sorted({p.numel() for p in params}, reverse=True)
        groups = [dict(params=[p for p in params if p.numel() == size]) for size in sizes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))
        self.rank, self.world_size, self.orthogonalize = rank, world_size, orthogonalize
        # One flat bf16 receive buffer per group, kept outside param_groups so state_dict stays small.
        self.gather_buffers = [torch.empty(world_size * size, dtype=torch.bfloat16, device=params[0].device)
                               for size in sizes]

    def _orthogonalized_momentum(self, param: torch.Tensor, group: dict) -> torch.Tensor:
        grad, momentum = param.grad, group["momentum"]
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buffer = state["momentum_buffer"]
        buffer.lerp_(grad, 1 - momentum)  # EMA of gradients
        update = grad.lerp_(buffer, momentum) if group["nesterov"] else buffer
        return self.orthogonalize(update, group["ns_steps"]).flatten()

    @torch.no_grad()
    def step(self):
        for group, gathered in zip(self.param_groups, self.gather_buffers):
            params, rows = group["params"], gathered.view(self.world_size, -1)
            in_flight = None  # (handle, chunk) whose updates are still arriving

            def apply_updates(handle, chunk):
                handle.wait()
                for param, update in zip(chunk, rows):  # a last, short chunk ignores the spare rows
                    shape_scale = max(1.0, param.size(-2) / param.size(-1)) ** 0.5
                    param.add_(update.view_as(param), alpha=-group["lr"] * shape_scale)

            for start in range(0, len(params), self.world_size):
                chunk = params[start:start + self.world_size]
                # A rank without a parameter in the last chunk sends its own row back unchanged.
                mine = self._orthogonalized_momentum(chunk[self.rank], group) if self.rank < len(chunk) \
                    else rows[self.rank]
                if in_flight is not None:  # the previous chunk's updates are read before the buffer is reused
                    apply_updates(*in_flight)
                in_flight = (all_gather_flat(gathered, mine, async_op=True), chunk)
            apply_updates(*in_flight)


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


def sliding_window_block_mask(documents: torch.Tensor, window_blocks: torch.Tensor) -> BlockMask:
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

    def causal_same_document_in_window(batch, head, query_index, key_index):
        # The window term changes nothing where the block lists are used (compiled), but eager FlexAttention
        # evaluates mask_mod everywhere, so the token rule must be whole.
        return ((query_index >= key_index) & (documents[query_index] == documents[key_index])
                & (query_index // ATTENTION_BLOCK - key_index // ATTENTION_BLOCK < window_blocks))

    return BlockMask.from_kv_blocks(*counts_and_sorted_indices(partial), *counts_and_sorted_indices(full),
                                    BLOCK_SIZE=ATTENTION_BLOCK, mask_mod=causal_same_document_in_window)


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

    def forward(self, x: torch.Tensor, value_embedding: torch.Tensor | None, mask) -> torch.Tensor:
        time_len = x.size(1)
        q = self.q(x).view(1, time_len, self.num_heads, self.head_dim)
        k = self.k(x).view(1, time_len, self.num_kv_heads, self.head_dim)
        v = self.value_lambdas[0] * self.v(x).view(1, time_len, self.num_kv_heads, self.head_dim)
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


class MLP(nn.Module):
    def __init__(self, model_dim: int, hidden_dim: int):
        super().__init__()
        self.fc = CastedLinear(model_dim, hidden_dim)
        self.proj = CastedLinear(hidden_dim, model_dim, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, model_dim: int, num_heads: int, num_kv_heads: int, mlp_dim: int, max_seq_len: int,
                 has_attention: bool):
        super().__init__()
        self.attn = CausalSelfAttention(model_dim, num_heads, num_kv_heads, max_seq_len) if has_attention else None
        self.mlp = MLP(model_dim, mlp_dim)
        self.x0_lambdas = nn.Parameter(torch.tensor([1.0, 0.0]))  # x = l0 * x + l1 * x0

    def forward(self, x, x0, value_embedding, mask):
        x = self.x0_lambdas[0] * x + self.x0_lambdas[1] * x0
        if self.attn is not None:
            x = x + self.attn(norm(x), value_embedding, mask)
        return x + self.mlp(norm(x))


# -----------------------------------------------------------------------------
# The GPT


class GPT(nn.Module):
    """U-Net-shaped GPT: the first half's outputs are added back, weighted, into the second half in reverse.

    Three value-embedding tables feed v in the first three and the last three layers ("012 ... 012").
    """

    def __init__(self, vocab_size: int, num_layers: int, model_dim: int, num_heads: int, num_kv_heads: int,
                 mlp_dim: int, max_seq_len: int, logit_softcap: float, attention_free_layers: tuple[int, ...],
                 num_value_embeddings: int = 3, use_flex_attention: bool = True):
        super().__init__()
        self.num_layers, self.logit_softcap, self.use_flex_attention = num_layers, logit_softcap, use_flex_attention
        self.num_encoder_layers = num_layers // 2
        kv_dim = num_kv_heads * (model_dim // num_heads)
        self.embed = nn.Embedding(vocab_size, model_dim)
        self.value_embeds = nn.ModuleList(nn.Embedding(vocab_size, kv_dim) for _ in range(num_value_embeddings))
        self.blocks = nn.ModuleList(
            Block(model_dim, num_heads, num_kv_heads, mlp_dim, max_seq_len, has_attention=i not in attention_free_layers)
            for i in range(num_layers))
        self.skip_weights = nn.Parameter(torch.ones(num_layers - self.num_encoder_layers))
        self.lm_head = CastedLinear(model_dim, vocab_size, zero_init=True)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None, window_blocks: torch.Tensor):
        """inputs: one flat token sequence (documents separated by EOT). Returns the mean loss, or the
        logits of every position when targets is None."""
        assert inputs.ndim == 1 and len(inputs) % ATTENTION_BLOCK == 0
        documents = (inputs == EOT_TOKEN).cumsum(0)
        mask = (sliding_window_block_mask if self.use_flex_attention else dense_sliding_window_mask)(
            documents, window_blocks)
        x = x0 = norm(self.embed(inputs)[None].bfloat16())
        tables = [table(inputs).bfloat16() for table in self.value_embeds]
        value_embeddings = tables + [None] * (self.num_layers - 2 * len(tables)) + tables
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= self.num_encoder_layers:  # decoder layer 6 + j takes encoder layer 5 - j's output
                x = x + self.skip_weights[i - self.num_encoder_layers] * skips.pop()
            x = block(x, x0, value_embeddings[i], mask)
            if i < self.num_encoder_layers:
                skips.append(x)
        logits = self.lm_head(norm(x))
        logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)  # soft cap, in bf16
        logits = logits.float()  # the cross-entropy in fp32
        if targets is None:
            return logits[0]
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets)


# -----------------------------------------------------------------------------
# Data loader: shards of GPT-2 tokens (header of 256 int32, then uint16 tokens)

SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_BYTES = 20240520, 1, 256 * 4


def read_shard_header(path: str) -> int:
    """Checks a shard's header and size against each other; returns its number of tokens."""
    size = os.path.getsize(path)
    if size < SHARD_HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte shard header")
    header = np.fromfile(path, dtype="<i4", count=256)
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"{path}: magic number {header[0]}, expected {SHARD_MAGIC}: not a token shard")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"{path}: shard version {header[1]}, this loader reads version {SHARD_VERSION}")
    num_tokens = int(header[2])
    expected_size = SHARD_HEADER_BYTES + 2 * num_tokens
    if size != expected_size:
        raise ValueError(f"{path}: header says {num_tokens} tokens ({expected_size} bytes) but the file has "
                         f"{size} bytes: truncated or corrupt, download it again")
    return num_tokens


def load_shard(path: str) -> torch.Tensor:
    """The whole shard's tokens, in pinned memory when CUDA is there (so copies to the GPU are asynchronous)."""
    num_tokens = read_shard_header(path)
    tokens = torch.empty(num_tokens, dtype=torch.uint16, pin_memory=torch.cuda.is_available())
    with open(path, "rb", buffering=0) as f:
        f.seek(SHARD_HEADER_BYTES)
        assert f.readinto(tokens.numpy()) == 2 * num_tokens, f"{path}: short read"
    return tokens


IGNORED_TARGET = -100  # F.cross_entropy's default ignore_index


def micro_batches_in_shard(num_tokens: int, global_micro_batch: int) -> int:
    return num_tokens // global_micro_batch


def distributed_batches(files: list[str], sequence_length: int, rank: int, world_size: int, device):
    """Yields this rank's (inputs, targets) of each micro-batch: rank r takes the r-th sequence_length
    slice of every world_size * sequence_length window, shard after shard. Tokens left at a shard's end
    (less than a whole window) are skipped. Where a window ends exactly at the shard's end, its last token
    has no next token to predict: that target is ignored, so a 2,097,152-token validation shard gives
    2,097,152 tokens of validation."""
    global_micro_batch = world_size * sequence_length
    for path in files:
        tokens = load_shard(path)
        for start in range(0, micro_batches_in_shard(len(tokens), global_micro_batch) * global_micro_batch,
                           global_micro_batch):
            local = tokens[start + rank * sequence_length:][:sequence_length + 1]
            inputs = local[:sequence_length].to(device=device, dtype=torch.int32, non_blocking=True)
            targets = local[1:].to(device=device, dtype=torch.int64, non_blocking=True)
            if len(targets) < sequence_length:
                targets = F.pad(targets, (0, 1), value=IGNORED_TARGET)
            yield inputs, targets


def shard_files(pattern: str, role: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"no {role} shard matches {pattern!r}; get FineWeb with `python data/cached_fineweb10B.py 9` "
                         f"or point --{role}_files at your own shards")
    return files


# -----------------------------------------------------------------------------
# Hyperparameters: edit the defaults inline for a record attempt, or override any as --name=value


@dataclass
class Hyperparameters:
    # data
    train_files: str = "data/fineweb10B/fineweb_train_*.bin"
    val_files: str = "data/fineweb10B/fineweb_val_*.bin"
    val_tokens: int = 10485760  # validation tokens, split among the ranks
    # batch: each rank runs batch_size / (world_size * sequence_length) micro-batches of sequence_length tokens
    batch_size: int = 8 * 64 * 1024  # tokens per optimizer step, all ranks together
    sequence_length: int = 64 * 1024  # tokens per micro-batch and rank; a multiple of 128
    # schedule (every part scales with num_iterations)
    num_iterations: int = 1390
    cooldown_frac: float = 0.4  # the last 40% of steps decay the learning rates linearly to zero
    momentum_warmup_frac: float = 300 / 1390  # Muon momentum 0.85 -> 0.95 over the first 300 of 1390 steps
    window_blocks_start: int = 1  # attention window in 128-token blocks, grown linearly over the run
    window_blocks_end: int = 14
    # model
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 128
    num_layers: int = 12
    model_dim: int = 768
    num_heads: int = 6
    num_kv_heads: int = 6  # fewer than num_heads for grouped-query attention
    mlp_dim: int = 4 * 768
    attention_free_layers: str = "7"  # comma-separated indices of MLP-only blocks
    logit_softcap: float = 15.0
    bf16_embeddings: bool = True
    # optimizers
    muon_lr: float = 0.05
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    newton_schulz_steps: int = 5
    embed_lr: float = 0.6
    head_lr: float = 0.008
    scalar_lr: float = 0.04
    # evaluation, logging, output
    val_loss_every: int = 125  # also at the last step; 0: only there
    timing_warmup_steps: int = 10  # the clock restarts after these steps (compilation, warm-up)
    run_id: str = ""  # empty: a fresh uuid; logs/<run_id>.txt is never overwritten
    save_checkpoint: bool = False
    sample_at_end: bool = False  # continue sample_prompts with the trained model, into console and log
    sample_prompts: str = "The meaning of life is|Once upon a time|The capital of France is"
    sample_tokens: int = 32
    # system
    compile: str = "auto"  # auto: torch.compile on CUDA, eager on CPU; or true / false
    coordinate_descent_tuning: bool = False  # a few seconds of training for many minutes of compilation
    seed: int = 0


def parse_hyperparameters(argv: list[str]) -> Hyperparameters:
    """Hyperparameters with --name=value overrides, each parsed as its default's type."""
    defaults = Hyperparameters()
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        for field in dataclasses.fields(defaults):
            print(f"  --{field.name}={getattr(defaults, field.name)!r}")
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


def check_run_inputs(args: Hyperparameters, world_size: int) -> tuple[list[str], list[str]]:
    """Every check that can fail on bad input, before any GPU time is spent; returns (train, val) files."""
    if args.sequence_length % ATTENTION_BLOCK:
        raise ValueError(f"sequence_length={args.sequence_length} is not a multiple of {ATTENTION_BLOCK}, "
                         "the attention block size")
    if args.batch_size % world_size:
        raise ValueError(f"batch_size={args.batch_size} does not divide among {world_size} ranks")
    global_micro_batch = world_size * args.sequence_length
    if args.batch_size % global_micro_batch:
        raise ValueError(f"batch_size={args.batch_size} is not a whole number of micro-batches of "
                         f"{world_size} ranks x sequence_length={args.sequence_length} tokens")
    if args.val_tokens <= 0 or args.val_tokens % global_micro_batch:
        raise ValueError(f"val_tokens={args.val_tokens} is not a positive multiple of {global_micro_batch} "
                         f"({world_size} ranks x sequence_length={args.sequence_length})")
    if args.model_dim % args.num_heads or args.num_heads % args.num_kv_heads or (args.model_dim // args.num_heads) % 4:
        raise ValueError(f"model_dim={args.model_dim}, num_heads={args.num_heads}, num_kv_heads={args.num_kv_heads}: "
                         "heads must divide model_dim into a head dim divisible by 4, kv heads must divide heads")
    if args.num_layers % 2 or args.num_layers < 6:
        raise ValueError(f"num_layers={args.num_layers}: the U-Net and the value embeddings need an even number >= 6")
    try:
        layer_indices = attention_free_layers(args)
    except ValueError:
        raise ValueError(f"attention_free_layers={args.attention_free_layers!r}: expected comma-separated "
                         "layer indices, e.g. \"7\"") from None
    for index in layer_indices:
        if not 0 <= index < args.num_layers:
            raise ValueError(f"attention_free_layers={args.attention_free_layers!r}: no layer {index}")
    if args.num_iterations < 1 or not 0 <= args.cooldown_frac <= 1:
        raise ValueError(f"num_iterations={args.num_iterations}, cooldown_frac={args.cooldown_frac}: "
                         "expected at least 1 step and a fraction between 0 and 1")
    if args.compile not in ("auto", "true", "false"):
        raise ValueError(f"compile={args.compile!r}: expected auto, true or false")
    if args.vocab_size <= EOT_TOKEN:
        raise ValueError(f"vocab_size={args.vocab_size} must exceed the GPT-2 EOT token id {EOT_TOKEN}")

    def check_enough_tokens(files, micro_batches_needed, role):
        micro_batches = sum(micro_batches_in_shard(read_shard_header(f), global_micro_batch) for f in files)
        if micro_batches < micro_batches_needed:
            tokens_needed = micro_batches_needed * global_micro_batch
            shard_tokens = sum(read_shard_header(f) for f in files) / len(files)
            shards_needed = math.ceil(tokens_needed / shard_tokens * 1.01)  # ends of shards are skipped
            remedy = (f"about {shards_needed} shards are needed (FineWeb: python data/cached_fineweb10B.py "
                      f"{shards_needed})" if role == "train" else "lower val_tokens or use a larger validation set")
            raise ValueError(f"{role} needs {tokens_needed:,} tokens ({micro_batches_needed} micro-batches of "
                             f"{global_micro_batch:,}) but the {len(files)} shard(s) matching "
                             f"{getattr(args, role + '_files')!r} hold {micro_batches} micro-batches; {remedy}")

    train_files, val_files = shard_files(args.train_files, "train"), shard_files(args.val_files, "val")
    check_enough_tokens(train_files, args.num_iterations * args.batch_size // global_micro_batch, "train")
    check_enough_tokens(val_files, args.val_tokens // global_micro_batch, "val")
    return train_files, val_files


def attention_free_layers(args: Hyperparameters) -> tuple[int, ...]:
    return tuple(int(index) for index in args.attention_free_layers.split(",") if index.strip())


# -----------------------------------------------------------------------------
# Schedules, as functions of the step


def learning_rate_multiplier(step: int, args: Hyperparameters) -> float:
    """1 until the cooldown starts, then linearly down to 0 at the last step."""
    steps_left_frac = 1 - step / args.num_iterations
    return min(1.0, steps_left_frac / args.cooldown_frac) if args.cooldown_frac > 0 else 1.0


def window_blocks_at(step: int, args: Hyperparameters) -> int:
    progress = step / args.num_iterations
    return int(args.window_blocks_start + (args.window_blocks_end - args.window_blocks_start) * progress + 0.5)


def muon_momentum_at(step: int, args: Hyperparameters) -> float:
    warmup_steps = args.momentum_warmup_frac * args.num_iterations
    progress = min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
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


def log_samples(model: GPT, args: Hyperparameters, window_blocks: torch.Tensor, print0):
    try:  # the tokenizer lives beside the data scripts; training itself never needs it
        sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
        from tokenizer import gpt2_encoding
        encoding = gpt2_encoding()
    except Exception as error:  # a finished run is not failed for want of a tokenizer
        print0(f"samples skipped: no GPT-2 tokenizer ({error})", console=True)
        return
    generator = torch.Generator(device=window_blocks.device).manual_seed(args.seed)
    for prompt in args.sample_prompts.split("|"):
        continuation = continue_prompt(model, encoding.encode_ordinary(prompt), args.sample_tokens,
                                       window_blocks, generator)
        print0("sample: " + json.dumps(prompt + encoding.decode(continuation), ensure_ascii=False), console=True)


# -----------------------------------------------------------------------------
# Setup: distributed, device, logging


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device. A plain `python train_gpt.py` becomes a one-rank group, so the code
    path is the same as under torchrun (also multi-node: device from LOCAL_RANK, data slice from RANK)."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world_size, device


def environment_report(device: torch.device, world_size: int) -> str:
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        smi = "nvidia-smi: not available\n"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (f"Running Python {sys.version}\n"
            f"Running PyTorch {torch.__version__} compiled for CUDA {torch.version.cuda}\n{smi}{'=' * 100}\n"
            f"device: {card} x{world_size}")


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(args: Hyperparameters, device: torch.device) -> GPT:
    model = GPT(vocab_size=args.vocab_size, num_layers=args.num_layers, model_dim=args.model_dim,
                num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, mlp_dim=args.mlp_dim,
                max_seq_len=args.sequence_length, logit_softcap=args.logit_softcap,
                attention_free_layers=attention_free_layers(args), use_flex_attention=device.type == "cuda")
    if args.bf16_embeddings:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.bfloat16()
    return model.to(device)


def build_optimizers(model: GPT, args: Hyperparameters, rank: int, world_size: int):
    """Muon for the 2-D weights inside the blocks; Adam for embeddings, head and scalars."""
    hidden_matrices = [p for p in model.blocks.parameters() if p.ndim >= 2]
    embeddings = [model.embed.weight, *model.value_embeds.parameters()]
    scalars = [p for p in model.parameters() if p.ndim < 2]
    head = [model.lm_head.weight]
    groups = [hidden_matrices, embeddings, scalars, head]
    assert sum(len(g) for g in groups) == len(list(model.parameters())) == len({id(p) for g in groups for p in g}), \
        "every parameter must belong to exactly one optimizer group"
    adam = torch.optim.Adam([dict(params=embeddings, lr=args.embed_lr), dict(params=head, lr=args.head_lr),
                             dict(params=scalars, lr=args.scalar_lr)],
                            betas=(0.8, 0.95), eps=1e-10, fused=model.lm_head.weight.is_cuda)
    orthogonalize = newton_schulz_orthogonalize
    if model.lm_head.weight.is_cuda:  # compiled on its own, apart from the model
        orthogonalize = torch.compile(newton_schulz_orthogonalize)
    muon = Muon(hidden_matrices, lr=args.muon_lr, momentum=args.muon_momentum, ns_steps=args.newton_schulz_steps,
                rank=rank, world_size=world_size, orthogonalize=orthogonalize)
    for optimizer in (adam, muon):
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return adam, muon


# -----------------------------------------------------------------------------
# Training loop


def main(argv: list[str]):
    args = parse_hyperparameters(argv)
    rank, world_size, device = setup_distributed()
    try:
        train_files, val_files = check_run_inputs(args, world_size)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    run_id = args.run_id or str(uuid.uuid4())
    log_path = Path("logs") / f"{run_id}.txt"
    if rank == 0 and log_path.exists():
        raise SystemExit(f"error: {log_path} exists; logs are never overwritten, choose another --run_id")
    on_cuda = device.type == "cuda"
    dist.init_process_group(backend="nccl" if on_cuda else "gloo", device_id=device if on_cuda else None)
    shared_run_id = [run_id]
    dist.broadcast_object_list(shared_run_id, src=0)  # every rank names checkpoints after rank 0's id
    run_id = shared_run_id[0]
    grad_accum_steps = args.batch_size // (world_size * args.sequence_length)

    logfile = None
    if rank == 0:
        log_path.parent.mkdir(exist_ok=True)
        logfile = open(log_path, "x")  # "x": fails rather than overwrite

    def print0(text: str, console: bool = False):
        if rank == 0:
            if console:
                print(text, flush=True)
            logfile.write(text + "\n")
            logfile.flush()

    code = Path(__file__).read_text()  # logged first, and saved with a checkpoint
    print0(code)
    print0("=" * 100)
    print0(environment_report(device, world_size), console=True)
    print0("hyperparameters: " + json.dumps(dataclasses.asdict(args)), console=True)
    print0(f"log: {log_path}, {grad_accum_steps} micro-batch(es) of {args.sequence_length} tokens per rank per step",
           console=True)

    torch.manual_seed(args.seed)
    raw_model = build_model(args, device)
    use_compile = args.compile == "true" or (args.compile == "auto" and on_cuda)
    inductor_config.coordinate_descent_tuning = args.coordinate_descent_tuning
    model = torch.compile(raw_model, dynamic=False) if use_compile else raw_model
    # Our only buffers (rotary tables) are identical on every rank, so DDP need not broadcast them each
    # forward; torch 2.13 deprecates that flag's name but keeps its meaning.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated")
    model = DDP(model, device_ids=[device.index] if on_cuda else None,
                broadcast_buffers=False, gradient_as_bucket_view=True)  # DDP also broadcasts rank 0's weights
    adam, muon = build_optimizers(raw_model, args, rank, world_size)
    optimizers = [adam, muon]
    # The window lives in a device tensor updated in place, so a growing window never recompiles.
    window_blocks = torch.tensor(window_blocks_at(0, args), dtype=torch.int32, device=device)
    train_batches = distributed_batches(train_files, args.sequence_length, rank, world_size, device)
    val_micro_batches = args.val_tokens // (world_size * args.sequence_length)

    # Step s's loss reaches the host while step s + 1 runs and is checked then, so no step waits for it.
    pending_loss = None  # (step, host tensor, CUDA event or None)
    stop_reason = None  # set when a loss is not finite

    def non_finite_train_loss(step: int, loss: torch.Tensor, ready) -> str | None:
        if ready is not None:
            ready.synchronize()
        return None if math.isfinite(loss.item()) else f"train loss is {loss.item()} at step {step}"

    training_time_ms = 0.0
    synchronize(device)
    t0 = time.perf_counter()
    for step in range(args.num_iterations + 1):
        last_step = step == args.num_iterations
        if step == args.timing_warmup_steps:  # the first steps compile and warm up: not timed
            synchronize(device)
            training_time_ms, t0 = 0.0, time.perf_counter()
        timed_steps = step - args.timing_warmup_steps
        window_blocks.fill_(window_blocks_at(step, args))

        if last_step or (args.val_loss_every > 0 and step % args.val_loss_every == 0):
            synchronize(device)
            training_time_ms += 1000 * (time.perf_counter() - t0)
            val_loss_sum = torch.zeros((), device=device)
            val_batches = distributed_batches(val_files, args.sequence_length, rank, world_size, device)
            with torch.no_grad():
                for inputs, targets in itertools.islice(val_batches, val_micro_batches):
                    val_loss_sum += model(inputs, targets, window_blocks)
            dist.all_reduce(val_loss_sum, op=dist.ReduceOp.AVG)
            val_loss = val_loss_sum.item() / val_micro_batches
            step_avg = training_time_ms / timed_steps if timed_steps > 0 else float("nan")
            print0(f"step:{step}/{args.num_iterations} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms "
                   f"step_avg:{step_avg:.2f}ms", console=True)
            if not math.isfinite(val_loss):
                stop_reason = f"val loss is {val_loss} at step {step}"
                break
            synchronize(device)
            t0 = time.perf_counter()
        if last_step:
            break

        # --------------- one optimizer step ---------------
        step_loss = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            inputs, targets = next(train_batches)
            last_micro_step = micro_step == grad_accum_steps - 1
            with nullcontext() if last_micro_step else model.no_sync():  # all-reduce once, at the end
                loss = model(inputs, targets, window_blocks) / grad_accum_steps
                loss.backward()
            step_loss += loss.detach()
        lr_multiplier = learning_rate_multiplier(step, args)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_multiplier
        for group in muon.param_groups:
            group["momentum"] = muon_momentum_at(step, args)
        for optimizer in optimizers:
            optimizer.step()
        model.zero_grad(set_to_none=True)

        dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)  # every rank then stops at the same step
        host_loss = step_loss.to("cpu", non_blocking=True)
        ready = torch.cuda.Event() if on_cuda else None
        if ready is not None:
            ready.record()
        if pending_loss is not None:
            stop_reason = non_finite_train_loss(*pending_loss)
            if stop_reason:
                break
        pending_loss = (step + 1, host_loss, ready)

        approx_time_ms = training_time_ms + 1000 * (time.perf_counter() - t0)
        step_avg = approx_time_ms / (timed_steps + 1) if timed_steps + 1 > 0 else float("nan")
        print0(f"step:{step + 1}/{args.num_iterations} train_time:{approx_time_ms:.0f}ms step_avg:{step_avg:.2f}ms",
               console=True)
    if stop_reason is None and pending_loss is not None:
        stop_reason = non_finite_train_loss(*pending_loss)
    if stop_reason is not None:
        print0(f"stopping: {stop_reason}", console=True)
    elif on_cuda:
        print0(f"peak memory allocated: {torch.cuda.max_memory_allocated(device) // 2**20} MiB "
               f"reserved: {torch.cuda.max_memory_reserved(device) // 2**20} MiB", console=True)
    else:
        print0(f"peak memory (max RSS of rank 0): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB",
               console=True)
    if args.save_checkpoint and stop_reason is None:
        checkpoint_dir = Path("logs") / run_id
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = checkpoint_dir / f"state_step{args.num_iterations:06d}_rank{rank}.pt"
        # Muon's momentum is sharded across ranks, so every rank saves its optimizer states; rank 0 adds the
        # model and the code.
        state = dict(step=args.num_iterations, optimizers=[opt.state_dict() for opt in optimizers])
        if rank == 0:
            state.update(model=raw_model.state_dict(), code=code,
                         hyperparameters=dataclasses.asdict(args))
        with open(path, "xb") as f:
            torch.save(state, f)
        print0(f"checkpoint saved to {checkpoint_dir}/state_step{args.num_iterations:06d}_rank*.pt", console=True)
    if args.sample_at_end and rank == 0 and stop_reason is None:
        log_samples(raw_model, args, window_blocks, print0)
    # gloo's worker threads release the last collectives' tensors, which takes the GIL; teardown joins them
    # while holding it. Waiting in a barrier (GIL released) lets them finish first: without it, a CPU run
    # sometimes hung at exit.
    dist.barrier()
    del model
    dist.destroy_process_group()
    return 0 if stop_reason is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

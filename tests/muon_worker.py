"""One rank of the distributed Muon test (tests/test_train_gpt.py runs it as a subprocess).

    python tests/muon_worker.py RANK WORLD_SIZE STORE_FILE OUTPUT_FILE

Every rank builds the same seeded parameters and gradients, and for each variant of Muon (VARIANTS: the loop,
batched_muon, and both with some parameters stacked into one with row_splits, as merged_qkv does) takes three
steps with the momentum set in the group before each (0.6, 0.8, 0.95: rising, as the warm-up sets it) and saves
the parameters after each, stacked ones split back into SHAPES' matrices.
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train_gpt  # noqa: E402

# Two sizes with several parameters each (transposed shapes of equal numel, an odd count per size, so the
# last chunk is short on 2 ranks), and a size with a single parameter.
SHAPES = [(64, 256), (256, 64), (128, 128), (64, 256), (32, 512),  # numel 16384, 5 parameters
          (32, 48), (48, 32), (24, 64),                              # numel 1536, 3 parameters
          (16, 16)]                                                  # numel 256, 1 parameter
# The stacked variants stack these matrices of SHAPES row-wise into one parameter each: two wide blocks, and a
# tall block on a wide one (the stack itself tall), so each block needs its own orientation and shape scale.
STACKS = ((0, 3), (1, 7))
LR = 0.05
MOMENTA = (0.6, 0.8, 0.95)
VARIANTS = ("loop", "batched", "loop_stacked", "batched_stacked")


def make_params():
    generator = torch.Generator().manual_seed(1234)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def make_grads(step: int):
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def stacked(matrices: list) -> list:
    """matrices in the stacked variants' layout: each of STACKS concatenated, then the rest in order."""
    alone = [i for i in range(len(SHAPES)) if not any(i in stack for stack in STACKS)]
    return [torch.cat([matrices[i] for i in stack]) for stack in STACKS] + [matrices[i] for i in alone]


def unstacked(tensors: list) -> list:
    """The inverse of stacked: SHAPES' matrices in order."""
    alone = [i for i in range(len(SHAPES)) if not any(i in stack for stack in STACKS)]
    matrices = [None] * len(SHAPES)
    for stack, tensor in zip(STACKS, tensors):
        for i, block in zip(stack, tensor.split([SHAPES[i][0] for i in stack])):
            matrices[i] = block
    for i, tensor in zip(alone, tensors[len(STACKS):]):
        matrices[i] = tensor
    return matrices


def run_variant(variant: str, rank: int, world_size: int) -> dict:
    layout = stacked if variant.endswith("stacked") else list
    params = [torch.nn.Parameter(p) for p in layout(make_params())]
    row_splits = ({param: tuple(SHAPES[i][0] for i in stack) for param, stack in zip(params, STACKS)}
                  if variant.endswith("stacked") else None)
    optimizer = train_gpt.BatchedMuon if variant.startswith("batched") else train_gpt.Muon
    muon = optimizer(params, lr=LR, momentum=0.95, nesterov=True, ns_steps=5, rank=rank, world_size=world_size,
                     row_splits=row_splits)
    snapshots = []
    for step, momentum in enumerate(MOMENTA):
        for param, grad in zip(params, layout(make_grads(step))):
            param.grad = grad
        for group in muon.param_groups:  # as the training loop's momentum warm-up does
            group["momentum"] = momentum
        muon.step()
        snapshots.append([p.detach().clone() for p in (unstacked(params) if variant.endswith("stacked") else params)])
    return dict(snapshots=snapshots, groups=[[tuple(p.shape) for p in g["params"]] for g in muon.param_groups],
                owned=[id(p) in {id(q) for q in muon.state} for p in params])


def main():
    rank, world_size, store, output = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    torch.save({variant: run_variant(variant, rank, world_size) for variant in VARIANTS}, output)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

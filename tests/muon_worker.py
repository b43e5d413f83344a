"""One rank of the distributed Muon test (tests/test_train_gpt.py runs it as a subprocess).

    python tests/muon_worker.py RANK WORLD_SIZE STORE_FILE OUTPUT_FILE

Every rank builds the same seeded parameters and gradients, takes three Muon steps with the momentum set
in the group before each (0.6, 0.8, 0.95: rising, as the warm-up sets it) and saves the parameters after each.
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
LR = 0.05
MOMENTA = (0.6, 0.8, 0.95)


def make_params():
    generator = torch.Generator().manual_seed(1234)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def make_grads(step: int):
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def main():
    rank, world_size, store, output = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    params = [torch.nn.Parameter(p) for p in make_params()]
    muon = train_gpt.Muon(params, lr=LR, momentum=0.95, nesterov=True, ns_steps=5, rank=rank,
                          world_size=world_size)
    snapshots = []
    for step, momentum in enumerate(MOMENTA):
        for param, grad in zip(params, make_grads(step)):
            param.grad = grad
        for group in muon.param_groups:  # as the training loop's momentum warm-up does
            group["momentum"] = momentum
        muon.step()
        snapshots.append([p.detach().clone() for p in params])
    torch.save(dict(snapshots=snapshots, groups=[[tuple(p.shape) for p in g["params"]] for g in muon.param_groups],
                    owned=[id(p) in {id(q) for q in muon.state} for p in params]), output)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

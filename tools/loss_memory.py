"""Peak memory of one forward and backward of the LM head's loss on the CPU: the plain path (the whole
tokens x vocab logits) against fused_loss (chunks), each case in a fresh process (peak RSS only grows).

    python tools/loss_memory.py --tokens 4096 8192 --chunk_tokens 1024
"""
import argparse
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # train_gpt.py lives in the repository root


def measure(tokens: int, dim: int, vocab: int, chunk_tokens: int, fused: bool) -> int:
    """One case, in this process: its peak RSS in MiB."""
    import torch
    import train_gpt
    torch.manual_seed(0)
    x = torch.randn(tokens, dim, requires_grad=True)
    head = train_gpt.CastedLinear(dim, vocab)
    targets = torch.randint(0, vocab, (tokens,))
    if fused:
        loss = train_gpt.chunked_softcapped_cross_entropy(x, head, targets, 15.0, chunk_tokens)
    else:
        loss = train_gpt.softcapped_cross_entropy(x, head, targets, 15.0)
    loss.backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="loss_memory.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192], help="default %(default)s")
    parser.add_argument("--dim", type=int, default=768, help="default %(default)s")
    parser.add_argument("--vocab", type=int, default=50304, help="default %(default)s")
    parser.add_argument("--chunk_tokens", type=int, default=1024,
                        help="fused_loss_chunk_tokens; default %(default)s")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # tokens, plain|fused: run one case here
    options = parser.parse_args(argv)
    if options.case:
        print(measure(int(options.case[0]), options.dim, options.vocab, options.chunk_tokens, options.case[1] == "fused"))
        return 0
    print(f"{'tokens':>8} {'plain MiB':>10} {'fused MiB':>10}   (fp32, dim {options.dim}, vocab {options.vocab}, "
          f"chunks of {options.chunk_tokens})")
    for tokens in options.tokens:
        peaks = [subprocess.run([sys.executable, __file__, *argv, "--case", str(tokens), kind], check=True,
                                capture_output=True, text=True).stdout.strip() for kind in ("plain", "fused")]
        print(f"{tokens:>8} {peaks[0]:>10} {peaks[1]:>10}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

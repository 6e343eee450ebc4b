"""Multi-head attention as a stack of heads vs one fused layer (Lectures 07 and 08).

What it measures: one forward pass (no gradients, eval mode) of
``utils.attention.MultiHeadAttentionWrapper`` (one ``CausalAttention`` per head: 5 matmul calls
per head, run one head after another) against ``utils.attention.MultiHeadAttention`` (one fused
Q/K/V projection, all heads in one batched matmul, plus an output projection: 4 calls). The fused
layer does the wrapper's arithmetic plus its output projection (2 B T d^2 more FLOPs), so any speed
difference comes from the number and size of the calls, not from doing less work. To compare the
attention itself, the script also times the fused layer with its output projection replaced by
the identity ("fused, no out_proj"), which then does exactly the wrapper's FLOPs. Before timing it
checks that the wrapper equals the fused layer without the projection when both hold the same Q/K/V weights.

How it measures: after a few warm-up rounds, the variants run alternately for ``--repeats`` rounds
(their order rotates each round), so all see the same machine load; the table reports the median
milliseconds per forward pass and the ratio wrapper / fused of the medians (above 1 means the fused
layer is faster). Timings depend on the CPU or GPU, the thread count and other load on the machine:
run it twice and compare; the lecture text quotes no numbers from it.

Run from the repository root:

    python benchmarks/mha_wrapper_vs_fused.py                          # GPT-2 width, 12 heads
    python benchmarks/mha_wrapper_vs_fused.py --d-model 256 --heads 32 --threads 1
    python benchmarks/mha_wrapper_vs_fused.py --device cuda            # kernel launches add up on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.attention import MultiHeadAttention, MultiHeadAttentionWrapper  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=768, help="model width (default: 768, GPT-2 small)")
    parser.add_argument("--heads", type=int, nargs="+", default=[12], help="head counts to time (default: 12)")
    parser.add_argument("--context", type=int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--batch", type=int, default=2, help="sequences per batch (default: 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=123)
    return parser.parse_args(argv)


def build(d: int, T: int, heads: int, device: torch.device) -> dict[str, nn.Module]:
    """The three variants, with the same Q/K/V weights."""
    wrapper = MultiHeadAttentionWrapper(d, d, T, heads)
    fused = MultiHeadAttention(d, d, T, heads)
    h = d // heads
    with torch.no_grad():  # fused qkv rows = [W_q; W_k; W_v], each the heads' rows in order
        for i, name in enumerate(("W_query", "W_key", "W_value")):
            for j, head in enumerate(wrapper.heads):
                fused.qkv.weight[i * d + j * h:i * d + (j + 1) * h] = getattr(head, name).weight
    bare = MultiHeadAttention(d, d, T, heads)
    bare.load_state_dict(fused.state_dict())
    bare.out_proj = nn.Identity()
    return {name: m.to(device).eval() for name, m in
            (("wrapper", wrapper), ("fused", fused), ("fused, no out_proj", bare))}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(d: int, heads: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(args.seed)
    layers = build(d, args.context, heads, device)
    x = torch.randn(args.batch, args.context, d, device=device)
    with torch.no_grad():
        torch.testing.assert_close(layers["wrapper"](x), layers["fused, no out_proj"](x), atol=1e-4, rtol=1e-4)
        for _ in range(args.warmup):
            for layer in layers.values():
                layer(x)
        times: dict[str, list[float]] = {name: [] for name in layers}
        names = list(layers)
        for r in range(args.repeats):  # interleaved; the order rotates each round
            for name in names[r % len(names):] + names[:r % len(names)]:
                sync(device)
                start = time.perf_counter()
                layers[name](x)
                sync(device)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for h in args.heads:
        if args.d_model % h:
            raise SystemExit(f"--d-model {args.d_model} must be divisible by every --heads value (got {h}).")
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, fp32; d_model {args.d_model}, "
          f"batch {args.batch} x {args.context} tokens; forward only; median of {args.repeats} interleaved rounds")
    header = (f"{'heads':>5} {'head width':>10} {'wrapper ms':>11} {'fused ms':>9} {'no out_proj ms':>15}"
              f" {'wrapper/fused':>14} {'wrapper/no out_proj':>20}")
    print(header)
    print("-" * len(header))
    for h in args.heads:
        m = bench(args.d_model, h, args, device)
        print(f"{h:>5} {args.d_model // h:>10} {m['wrapper']:>11.2f} {m['fused']:>9.2f} {m['fused, no out_proj']:>15.2f}"
              f" {m['wrapper'] / m['fused']:>14.2f} {m['wrapper'] / m['fused, no out_proj']:>20.2f}", flush=True)


if __name__ == "__main__":
    main()

"""Explicit attention core vs PyTorch's fused SDPA, inside our MultiHeadAttention (Lecture 08).

What it measures: one training step (forward + backward) of
``utils.attention.MultiHeadAttention`` with ``use_sdpa=False`` (scores, mask, softmax and
weighted sum written out, as in the notebook) against the same layer with ``use_sdpa=True``
(``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)``). Both layers hold
the same weights and see the same input, so the Q/K/V and output projections cost the same in
both; the difference is the attention core. Before timing, the script checks that outputs and
input gradients agree (fp32, 1e-5).

How it measures: after a few warm-up steps, the two variants are run alternately for
``--repeats`` rounds (one step of each per round, taking turns to go first), so both see the
same machine load; the table reports the median milliseconds per step, the ratio explicit / sdpa
of the medians (above 1 means SDPA is faster), and the quartiles of the per-round ratios (the
two steps of a round ran under the same load; a wide range means the machine was busy).
Timings depend on the CPU, the thread count and other load on the machine: run it twice and
compare.

Run from the repository root (CPU; 10 to 30 s on 2 cores with the defaults):

    python benchmarks/attention_core.py
    python benchmarks/attention_core.py --contexts 256 1024 2048 --repeats 10 --threads 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.attention import MultiHeadAttention  # noqa: E402

TOKENS_PER_STEP = 1024  # default batch = TOKENS_PER_STEP // context (4 at 256, 1 at 1024), at least 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024],
                        help="sequence lengths to time (default: 256 1024)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size for every context (default: 1024 // context, at least 1: 4 at 256, 1 at 1024)")
    parser.add_argument("--d-model", type=int, default=384, help="model width (default: 384)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (default: 8)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per variant (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave PyTorch's choice)")
    parser.add_argument("--seed", type=int, default=123)
    return parser.parse_args(argv)


def step(layer: MultiHeadAttention, x: torch.Tensor, grad: torch.Tensor) -> None:
    """One forward + backward pass; gradients are cleared so memory does not grow."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    layer(x).backward(grad)


def time_one(layer: MultiHeadAttention, x: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    step(layer, x, grad)
    return (time.perf_counter() - start) * 1e3  # ms


def check_same(explicit: MultiHeadAttention, sdpa: MultiHeadAttention, x: torch.Tensor,
               grad: torch.Tensor) -> None:
    """Both variants must compute the same function before their speed is compared."""
    outs, grads = [], []
    for layer in (explicit, sdpa):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out = layer(x)
        out.backward(grad)
        outs.append(out.detach())
        grads.append(x.grad.clone())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)


def bench_context(T: int, args: argparse.Namespace) -> dict:
    B = args.batch or max(1, TOKENS_PER_STEP // T)
    torch.manual_seed(args.seed)
    explicit = MultiHeadAttention(args.d_model, args.d_model, T, args.heads, use_sdpa=False)
    sdpa = MultiHeadAttention(args.d_model, args.d_model, T, args.heads, use_sdpa=True)
    sdpa.load_state_dict(explicit.state_dict())  # same weights
    x = torch.randn(B, T, args.d_model, requires_grad=True)
    grad = torch.randn(B, T, args.d_model)
    check_same(explicit, sdpa, x, grad)
    for _ in range(args.warmup):
        step(explicit, x, grad)
        step(sdpa, x, grad)
    times = {"explicit": [], "sdpa": []}
    for r in range(args.repeats):  # interleaved; alternate who goes first in each round
        order = (("explicit", explicit), ("sdpa", sdpa)) if r % 2 == 0 else (("sdpa", sdpa), ("explicit", explicit))
        for name, layer in order:
            times[name].append(time_one(layer, x, grad))
    med = {name: statistics.median(t) for name, t in times.items()}
    paired = [e / s for e, s in zip(times["explicit"], times["sdpa"])]  # same round, same load
    q1, _, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else (paired[0],) * 3
    return {"T": T, "B": B, **med, "ratio": med["explicit"] / med["sdpa"], "q1": q1, "q3": q3}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.d_model % args.heads:
        raise SystemExit(f"--d-model {args.d_model} must be divisible by --heads {args.heads}.")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32; "
          f"d_model {args.d_model}, {args.heads} heads of {args.d_model // args.heads}; "
          f"forward + backward of MultiHeadAttention; median of {args.repeats} interleaved rounds "
          f"after {args.warmup} warm-up rounds")
    print("outputs and input gradients of the two variants agree within 1e-5 (checked per context)\n")
    header = (f"{'context':>7} {'batch':>5} {'explicit ms':>12} {'sdpa ms':>9} {'explicit/sdpa':>14}"
              f" {'per-round ratio, quartiles':>27}")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for T in args.contexts:
        r = bench_context(T, args)
        print(f"{r['T']:>7} {r['B']:>5} {r['explicit']:>12.1f} {r['sdpa']:>9.1f} {r['ratio']:>14.2f}"
              f" {r['q1']:>19.2f} to {r['q3']:.2f}", flush=True)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

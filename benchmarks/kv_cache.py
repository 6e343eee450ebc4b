"""Generation with and without the KV cache, and the cache's size for MHA, GQA and MQA (Lectures 09-11).

What it measures: greedy generation of ``--new-tokens`` tokens (default 512) from a short prompt
with a small GPT-2-like model (``utils.gpt.GPTModel``, random weights: speed does not depend on
what the weights say), once with ``utils.generation.generate(..., use_cache=False)`` (every step
runs the model on the whole sequence so far) and once with ``use_cache=True`` (the prompt is
prefilled once, then each step runs the model on one token and attends over the cached keys and
values). The context is long enough for prompt + new tokens, so the cache is never rebuilt. The script
checks that both variants produce the same tokens in every round.

How it measures: after a short warm-up, the two variants run alternately for ``--repeats`` rounds
(taking turns to go first), so both see the same machine load. The table reports the median
tokens per second of each, the ratio cached / uncached of the medians, and the range of the
per-round ratios (both runs of a round ran under the same load; a wide range means a busy
machine). Timings depend on the CPU, the thread count and other load: run it twice and compare.

The second table needs no timing: bytes of cache per token and at the full context for the same
width with one K/V head per query head (MHA), groups of query heads sharing one (GQA) and one
shared K/V head (MQA), from ``utils.kv_cache.kv_cache_bytes``, checked against the bytes the
cache object really allocates.

Run from the repository root (CPU; about a minute on 2 cores with the defaults):

    python benchmarks/kv_cache.py
    python benchmarks/kv_cache.py --quick                 # 128 new tokens, 2 rounds: a smoke test
    python benchmarks/kv_cache.py --d-model 768 --layers 12 --heads 12 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.generation import generate  # noqa: E402
from utils.gpt import GPTConfig, GPTModel  # noqa: E402
from utils.kv_cache import KVCache, format_bytes, kv_cache_bytes  # noqa: E402

WARMUP_TOKENS = 32  # untimed generation with each variant before the timed rounds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=512, help="tokens generated per run (default: 512)")
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens (default: 16)")
    parser.add_argument("--d-model", type=int, default=256, help="model width (default: 256)")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (default: 4)")
    parser.add_argument("--heads", type=int, default=8, help="query heads (default: 8)")
    parser.add_argument("--kv-groups", type=int, default=None,
                        help="K/V heads of the timed model (default: one per query head, MHA)")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size (default: 8192)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per variant (default: 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave PyTorch's choice)")
    parser.add_argument("--quick", action="store_true", help="128 new tokens and 2 rounds (a smoke test)")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    if args.quick:
        args.new_tokens, args.repeats = 128, 2
    return args


def timed_generate(model: GPTModel, prompt: torch.Tensor, n: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = generate(model, prompt, n, use_cache=use_cache)
    return time.perf_counter() - start, out


def speed_table(model: GPTModel, prompt: torch.Tensor, args: argparse.Namespace) -> None:
    n = args.new_tokens
    for use_cache in (False, True):  # warm-up: a short generation with each variant
        timed_generate(model, prompt, min(n, WARMUP_TOKENS), use_cache)
    seconds, outputs = {"no cache": [], "cache": []}, []
    for r in range(args.repeats):  # interleaved; alternate who goes first in each round
        order = (False, True) if r % 2 == 0 else (True, False)
        for use_cache in order:
            elapsed, out = timed_generate(model, prompt, n, use_cache)
            seconds["cache" if use_cache else "no cache"].append(elapsed)
            outputs.append(out)
    if not all(torch.equal(out, outputs[0]) for out in outputs):
        raise SystemExit("cached and uncached generation disagree: the timings compare different results")
    print(f"cached and uncached generation gave the same {n} tokens in every round (checked)\n")
    tps = {name: n / statistics.median(s) for name, s in seconds.items()}
    paired = sorted(p / c for p, c in zip(seconds["no cache"], seconds["cache"]))  # same round, same load
    header = f"{'variant':>9} {'median s':>9} {'tokens/s':>9}"
    print(header)
    print("-" * len(header))
    for name, s in seconds.items():
        print(f"{name:>9} {statistics.median(s):>9.2f} {tps[name]:>9.1f}")
    print(f"\ncache / no cache: {tps['cache'] / tps['no cache']:.1f}x tokens per second "
          f"(per-round ratios {paired[0]:.1f}x to {paired[-1]:.1f}x over {len(paired)} rounds)")


def bytes_table(cfg: GPTConfig) -> None:
    H, ctx = cfg.n_heads, cfg.context_length
    print(f"\nKV cache of this width (d_model {cfg.d_model}, {cfg.n_layers} layers, {H} query heads of "
          f"{cfg.d_model // H}), fp32, batch 1")
    header = f"{'attention':>9} {'K/V heads':>9} {'bytes/token':>12} {f'at {ctx} tokens':>15} {'vs MHA':>7}"
    print(header)
    print("-" * len(header))
    mha = kv_cache_bytes(cfg, 1, dtype=torch.float32)
    for groups in [g for g in range(H, 0, -1) if H % g == 0]:
        kind = "MHA" if groups == H else "MQA" if groups == 1 else "GQA"
        c = replace(cfg, n_kv_groups=groups)
        per_token = kv_cache_bytes(c, 1, dtype=torch.float32)
        with torch.device("meta"):  # shapes only: what the cache object would allocate
            allocated = KVCache.for_model(GPTModel(c)).nbytes()
        assert allocated == kv_cache_bytes(c, ctx, dtype=torch.float32), (allocated, kind)
        print(f"{kind:>9} {groups:>9} {per_token:>12,} {format_bytes(allocated, binary=True):>15} "
              f"{mha / per_token:>6.0f}x")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.d_model % args.heads:
        raise SystemExit(f"--d-model {args.d_model} must be divisible by --heads {args.heads}.")
    cfg = GPTConfig(vocab_size=args.vocab, context_length=args.prompt + args.new_tokens, d_model=args.d_model,
                    n_heads=args.heads, n_layers=args.layers, dropout=0.0, n_kv_groups=args.kv_groups)
    torch.manual_seed(args.seed)
    model = GPTModel(cfg).eval()
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(args.seed))
    n_params = sum(p.numel() for p in model.parameters())
    kind = type(model.blocks[0].attn).__name__
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32; GPT with {n_params / 1e6:.1f}M "
          f"parameters (d_model {args.d_model}, {args.layers} layers, {args.heads} heads, {kind}, vocab "
          f"{args.vocab}); greedy, prompt {args.prompt} + {args.new_tokens} new tokens, batch 1; median of "
          f"{args.repeats} interleaved rounds after a {WARMUP_TOKENS}-token warm-up")
    start = time.perf_counter()
    speed_table(model, prompt, args)
    bytes_table(cfg)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

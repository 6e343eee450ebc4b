"""One decode step of MHA vs DeepSeek MLA, naive and absorbed, and their cache bytes (Lectures 13 and 17).

What it measures: the time of one single-token decode step of one attention layer (batch 1,
fp32, CPU) after a context of T tokens has been cached, for T in ``--contexts`` (default 512,
2048, 8192), for four variants of the same width (d_model 1024, 8 heads of 128 by default):

- ``MHA``: ``utils.attention.MultiHeadAttention`` with its K/V cache (``LayerKVCache``): per
  token and layer 2 * H * d_h numbers (keys and values of every head).
- ``naive``: ``utils.mla_rope.DeepSeekMLA`` (decoupled RoPE, DeepSeek-V2/V3), ``absorb=False``,
  with its latent cache ``[c_KV ; k_R]`` (d_c + d_h^R per token). The naive path **re-expands**
  K_h = c_KV W_UK,h and V_h = c_KV W_UV,h for every cached token at every step: about
  2 * T * d_c * H * (d_h + d_v) FLOPs per step, growing with T.
- ``naive-kv``: the same layer and weights, but caching the expanded per-head keys and values
  plus the shared RoPE key (H * (d_h + d_v) + d_h^R numbers per token; the cache is built here,
  with the layer's own projections): the naive path as one would run it to avoid re-expansion,
  costing more cache than MHA.
- ``absorbed``: the same layer with ``absorb=True``: each head's query is folded into latent
  space (q_C,h W_UK,h^T) and scored against the cached c_KV directly; W_UV,h is applied after
  attention. The cache holds only ``[c_KV ; k_R]``.
  It scores the heads' folded queries as the rows of one matrix against the shared latent
  (``utils.mla.scores_against_shared``): broadcasting the latent over a head axis instead makes
  ``torch.matmul`` copy it H times at every step, which made the absorbed path slower than
  ``naive-kv`` at long context before that change.

Why absorbed can lose at short context, and what wins at long context. Every step first reads the
layer's weights (MHA 4.2M numbers, this MLA 5.3M by default), a fixed cost that dominates at
short context and is larger for MLA. Per step and per cached
token, the absorbed path does H * (d_c + d_h^R) multiply-adds for the scores and H * d_c for the
weighted sum, against H * (d_h + d_h^R) and H * d_v for ``naive-kv`` and MHA: with d_c = 512 and
d_h = 128 that is about 3-4 times the attention FLOPs, plus a fixed cost per step (folding the
query through W_UK, applying W_UV after attention). While T is small, the cache fits in the CPU's
caches and those extra FLOPs and the fixed cost can make absorbed slower than ``naive-kv`` or MHA.
A decode step at batch 1 is a matrix-vector product, limited by memory traffic once the cache
no longer fits: absorbed reads T x (d_c + d_h^R) numbers per step (576 by default), MHA
T x 2 x H x d_h (2048) and ``naive-kv`` T x (2 H d_h + d_h^R) (2112), so at long context absorbed
reads 3.5-3.7 times fewer bytes, and every cached row is used by all H heads. Against ``naive``
(re-expansion) absorbed wins at every context: re-expanding costs T x d_c x H x (d_h + d_v)
multiply-adds per step (about 1.1 GMAC at T = 1024 by default).

How it measures: for each context the caches are prefilled with T random tokens (not timed: each
token's cache rows are written directly, what a prefill pass appends; the prefill queries'
attention does not change the cache and is skipped). Before timing, the script checks that the
naive, naive-kv and absorbed decode steps give the same output (1e-4), and, at contexts up to
``--check-max`` (default 2048; the uncached pass forms a (T+1) x (T+1) score matrix per head),
that each layer's cached step equals the last row of its uncached forward on all T + 1 tokens.
Then, after ``--warmup`` untimed rounds, the four variants run in turn (the order rotates every
round, so all share the machine's load) for ``--repeats`` rounds; a sample is the mean of
``--steps`` decode steps, each from the same T cached tokens (the cache position is reset to T).
The tables report median milliseconds per step, ratios of the medians, and the quartiles of the
per-round ratios (the variants of a round ran under the same load; a wide range means a busy
machine). Cache bytes come from the cache objects' ``nbytes()``, checked against
``utils.kv_cache.kv_cache_bytes``. Timings depend on the CPU, the thread count and other load:
run it twice and compare.

Run from the repository root (CPU; about a minute on 2 cores with the defaults):

    python benchmarks/mla_decode.py
    python benchmarks/mla_decode.py --quick                  # contexts 256 1024, 4 rounds: a smoke test
    python benchmarks/mla_decode.py --contexts 1024 4096 16384 --latent 256 --threads 4
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
from utils.attention import MultiHeadAttention  # noqa: E402
from utils.kv_cache import (AttentionShape, LatentShape, LayerKVCache, format_bytes,  # noqa: E402
                            kv_cache_bytes)
from utils.mla_rope import DeepSeekMLA, DeepSeekMLAConfig  # noqa: E402

VARIANTS = ("MHA", "naive", "naive-kv", "absorbed")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 8192],
                        help="cached tokens before the timed step (default: 512 2048 8192)")
    parser.add_argument("--d-model", type=int, default=1024, help="model width (default: 1024)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads (default: 8)")
    parser.add_argument("--head-dim", type=int, default=128,
                        help="d_h of every head, keys and values, MHA and MLA (default: 128)")
    parser.add_argument("--latent", type=int, default=512, help="MLA latent width d_c (default: 512)")
    parser.add_argument("--rope-dim", type=int, default=64, help="MLA decoupled RoPE key width d_h^R (default: 64)")
    parser.add_argument("--q-rank", type=int, default=None,
                        help="MLA query compression rank d_c' (default: none, W_Q directly, as MHA)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per context (default: 15)")
    parser.add_argument("--steps", type=int, default=3, help="decode steps averaged per sample (default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: 2)")
    parser.add_argument("--check-max", type=int, default=2048,
                        help="largest context at which cached steps are checked against uncached passes (default: 2048)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave PyTorch's choice)")
    parser.add_argument("--quick", action="store_true", help="contexts 256 1024 and 4 rounds (a smoke test)")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    if args.quick:
        args.contexts, args.repeats, args.warmup = [256, 1024], 4, 1
    return args


class ExpandedMLACache:
    """The naive MLA path's expanded cache: per-head keys k_C (B, H, capacity, d_h), values (B, H, capacity, d_v)
    and the shared RoPE key k_R (B, capacity, d_h^R)."""

    def __init__(self, layer: DeepSeekMLA, batch_size: int, capacity: int):
        cfg = layer.cfg
        self.kv = LayerKVCache(batch_size, cfg.n_heads, capacity, cfg.qk_nope_head_dim)  # d_v == d_h here
        self.kr = torch.zeros(batch_size, capacity, cfg.qk_rope_head_dim)
        self.layer = layer

    @property
    def position(self) -> int:
        return self.kv.position

    @position.setter
    def position(self, value: int) -> None:
        self.kv.position = value

    def append(self, x: torch.Tensor, start: int):
        """Expand the new tokens' latents once, store k_C, v, k_R; return all stored."""
        layer = self.layer
        c_kv, k_r = layer.latents(x, start)                                  # (B, T, d_c), (B, T, d_h^R)
        k_c, v = layer._heads(layer.W_UK(c_kv)), layer._heads(layer.W_UV(c_kv))  # (B, H, T, d_h) each
        end = start + x.shape[1]
        self.kr[:, start:end] = k_r
        k_c, v = self.kv.append(k_c, v)
        return k_c, v, self.kr[:, :end]

    def nbytes(self) -> int:
        return self.kv.nbytes() + self.kr.numel() * self.kr.element_size()


def naive_kv_step(layer: DeepSeekMLA, x: torch.Tensor, cache: ExpandedMLACache) -> torch.Tensor:
    """DeepSeekMLA.forward_naive, but with the expanded keys and values read from the cache."""
    start = cache.position
    q_c, q_r = layer.queries(x, start)
    k_c, v, k_r = cache.append(x, start)
    scores = (q_c @ k_c.transpose(-2, -1) + q_r @ k_r.unsqueeze(1).transpose(-2, -1)) * layer.scale
    weights = layer._attend(scores, start)
    return layer.out_proj((weights @ v).transpose(1, 2).flatten(2))


class Bench:
    """The layers (built once, context_length max(contexts) + 1) and, per context, their prefilled caches."""

    def __init__(self, args: argparse.Namespace):
        d, H, d_h = args.d_model, args.heads, args.head_dim
        ctx = max(args.contexts) + 1
        torch.manual_seed(args.seed)
        self.mha = MultiHeadAttention(d, H * d_h, ctx, H).eval()
        cfg = DeepSeekMLAConfig(d_model=d, n_heads=H, kv_lora_rank=args.latent, qk_nope_head_dim=d_h,
                                qk_rope_head_dim=args.rope_dim, v_head_dim=d_h, q_lora_rank=args.q_rank,
                                context_length=ctx)
        self.naive = DeepSeekMLA(cfg).eval()
        self.absorbed = DeepSeekMLA(replace(cfg, absorb=True)).eval()
        self.absorbed.load_state_dict(self.naive.state_dict())  # same weights, the other path
        self.args = args

    def prefill(self, T: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Caches of capacity T + 1 holding the same T random tokens, and the new token (1, 1, d)."""
        g = torch.Generator().manual_seed(self.args.seed + T)
        prefix = torch.randn(1, T, self.args.d_model, generator=g)
        x_new = torch.randn(1, 1, self.args.d_model, generator=g)
        mha, naive = self.mha, self.naive
        caches = {"MHA": mha.new_cache(1, T + 1), "naive": naive.new_cache(1, T + 1),
                  "naive-kv": ExpandedMLACache(naive, 1, T + 1), "absorbed": self.absorbed.new_cache(1, T + 1)}
        _, k, v = mha.qkv(prefix).split([mha.d_out, mha.kv_dim, mha.kv_dim], dim=-1)
        caches["MHA"].append(mha.split_heads(k, mha.n_kv_groups), mha.split_heads(v, mha.n_kv_groups))
        naive.latents(prefix, 0, caches["naive"])
        self.absorbed.latents(prefix, 0, caches["absorbed"])
        caches["naive-kv"].append(prefix, 0)
        return caches, prefix, x_new

    def step(self, name: str, x: torch.Tensor, cache, T: int) -> torch.Tensor:
        """One decode step from the T cached tokens (the cache position is reset to T first)."""
        cache.position = T
        if name == "MHA":
            return self.mha(x, cache=cache)
        if name == "naive-kv":
            return naive_kv_step(self.naive, x, cache)
        return (self.naive if name == "naive" else self.absorbed)(x, cache=cache)


def check(bench: Bench, T: int, caches: dict, prefix: torch.Tensor, x_new: torch.Tensor) -> str:
    """The variants must compute what they claim before their speed is compared."""
    tol = dict(atol=1e-4, rtol=1e-4)
    out = {name: bench.step(name, x_new, caches[name], T) for name in VARIANTS}
    torch.testing.assert_close(out["absorbed"], out["naive"], **tol)
    torch.testing.assert_close(out["naive-kv"], out["naive"], **tol)
    if T > bench.args.check_max:
        return "MLA variants agree (1e-4)"
    full = torch.cat([prefix, x_new], dim=1)  # (1, T + 1, d): the uncached pass on every token
    for name, layer in (("MHA", bench.mha), ("naive", bench.naive), ("absorbed", bench.absorbed)):
        torch.testing.assert_close(out[name], layer(full)[:, -1:], **tol)
    return "MLA variants agree, cached = uncached last row (1e-4)"


def time_step(bench: Bench, name: str, x: torch.Tensor, cache, T: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        bench.step(name, x, cache, T)
    return (time.perf_counter() - start) * 1e3 / steps  # ms per step


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def bench_context(bench: Bench, T: int) -> dict:
    args = bench.args
    caches, prefix, x_new = bench.prefill(T)
    checked = check(bench, T, caches, prefix, x_new)
    for _ in range(args.warmup):
        for name in VARIANTS:
            time_step(bench, name, x_new, caches[name], T, args.steps)
    times = {name: [] for name in VARIANTS}
    for r in range(args.repeats):  # interleaved; rotate who goes first in each round
        k = r % len(VARIANTS)
        for name in VARIANTS[k:] + VARIANTS[:k]:
            times[name].append(time_step(bench, name, x_new, caches[name], T, args.steps))
    med = {name: statistics.median(t) for name, t in times.items()}
    pairs = {"naive/MHA": ("naive", "MHA"), "absorbed/MHA": ("absorbed", "MHA"),
             "absorbed/naive": ("absorbed", "naive"), "absorbed/naive-kv": ("absorbed", "naive-kv")}
    ratios = {}
    for label, (a, b) in pairs.items():
        per_round = [x / y for x, y in zip(times[a], times[b])]  # same round, same load
        ratios[label] = (med[a] / med[b], *quartiles(per_round))
    nbytes = {name: caches[name].nbytes() for name in VARIANTS}
    return {"T": T, "ms": med, "ratios": ratios, "nbytes": nbytes, "checked": checked}


def expected_bytes(args: argparse.Namespace, capacity: int) -> dict:
    """What each cache should allocate, from utils.kv_cache's formulas (fp32, one layer, batch 1)."""
    mha = kv_cache_bytes(AttentionShape(1, args.heads, args.head_dim), capacity, dtype=torch.float32)
    latent = kv_cache_bytes(LatentShape(1, args.latent, args.rope_dim), capacity, dtype=torch.float32)
    rope = kv_cache_bytes(LatentShape(1, args.rope_dim), capacity, dtype=torch.float32) if args.rope_dim else 0
    return {"MHA": mha, "naive": latent, "naive-kv": mha + rope, "absorbed": latent}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    H, d_h, d_c, d_r = args.heads, args.head_dim, args.latent, args.rope_dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32, batch 1, one layer; "
          f"d_model {args.d_model}, {H} heads of {d_h}; MLA: DeepSeekMLA, d_c {d_c} + d_h^R {d_r}, "
          f"query compression {args.q_rank or 'none'}; median of {args.repeats} interleaved rounds "
          f"({args.steps} decode steps per sample) after {args.warmup} warm-up rounds")
    print("naive: re-expands K and V from the latent cache every step; naive-kv: caches the expanded K, V "
          "(and k_R); absorbed: latent cache only (DeepSeekMLA.forward_absorbed)\n")
    start = time.perf_counter()
    results = []
    header = (f"{'context':>7} " + " ".join(f"{name + ' ms':>11}" for name in VARIANTS) + "  checked")
    print(header)
    print("-" * (len(header) + 60))
    with torch.inference_mode():
        bench = Bench(args)
        for T in args.contexts:
            r = bench_context(bench, T)
            results.append(r)
            print(f"{T:>7} " + " ".join(f"{r['ms'][name]:>11.2f}" for name in VARIANTS) + f"  {r['checked']}",
                  flush=True)
    print("\nratios of median step times (below 1: the first is faster); per-round ratio quartiles in brackets")
    labels = list(results[0]["ratios"])
    header = f"{'context':>7} " + " ".join(f"{label:>22}" for label in labels)
    print(header)
    print("-" * len(header))
    for r in results:
        cells = [f"{m:.2f} [{q1:.2f}-{q3:.2f}]" for m, q1, q3 in r["ratios"].values()]
        print(f"{r['T']:>7} " + " ".join(f"{c:>22}" for c in cells))

    print("\ncache per layer, fp32, batch 1 (nbytes() of the cache objects, checked against "
          "utils.kv_cache.kv_cache_bytes)")
    header = (f"{'context':>7} " + " ".join(f"{name:>11}" for name in VARIANTS)
              + f" {'MHA/absorbed':>13} {'naive-kv/absorbed':>18}")
    print(header)
    print("-" * len(header))
    per_token = {name: b // (results[0]["T"] + 1) for name, b in results[0]["nbytes"].items()}
    for r in results:
        capacity = r["T"] + 1
        expected = expected_bytes(args, capacity)
        for name in VARIANTS:
            assert r["nbytes"][name] == expected[name], (name, r["nbytes"][name], expected[name])
        at_T = {name: per_token[name] * r["T"] for name in VARIANTS}  # T tokens (the buffers hold T + 1)
        print(f"{r['T']:>7} " + " ".join(f"{format_bytes(at_T[name], binary=True):>11}" for name in VARIANTS)
              + f" {at_T['MHA'] / at_T['absorbed']:>12.2f}x {at_T['naive-kv'] / at_T['absorbed']:>17.2f}x")
    print(f"{'per token':>7} " + " ".join(f"{per_token[name]:>11,}" for name in VARIANTS)
          + " bytes (MHA 2 H d_h, naive-kv 2 H d_h + d_h^R, MLA d_c + d_h^R numbers of 4 bytes)")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

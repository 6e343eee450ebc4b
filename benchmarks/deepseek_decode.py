"""Greedy decoding: our DeepSeekModel with the absorbed latent cache vs transformers' ``generate`` (Lecture 29).

What it compares: ONE configuration (hidden 128, 4 layers (the first dense), 8 heads, q_lora 64, kv_lora 64,
nope 32, rope 16, v 32, 8 routed experts top-2 + 1 shared; vocab 512, fp32, batch 1, CPU), exported with
:func:`utils.hf_interop.export_hf` and loaded both ways: :func:`utils.hf_interop.import_hf` (ours) and
``transformers.DeepseekV3ForCausalLM.from_pretrained`` (theirs, default attention implementation). For each
prompt length (256, 1024, 2048, 4096 tokens by default) both generate 32 new tokens greedily; the tokens
must be identical (the script stops otherwise).

- **whole call**: ``utils.generation.generate(ours, prompt, 32, use_cache=True)`` (it allocates the latent
  cache, prefills, decodes) against ``hf.generate(prompt, max_new_tokens=32, do_sample=False)``.
- **prompt pass** and **per decode step**: the same work by hand, timed inside: one forward over the prompt
  with an empty cache (ours: a fresh :class:`utils.kv_cache.KVCache`; theirs: a ``DynamicCache``), then 31
  single-token steps; per-step time = (time of the 31 steps) / 31. This leaves out ``generate``'s own
  bookkeeping (logits processors, stopping criteria), which the whole-call time includes.
- **peak memory**: the largest total of CPU tensor memory allocated during one whole call, above what was
  allocated before it (torch profiler, ``profile_memory=True``: its ``[memory]`` events' "Total Allocated";
  tracemalloc would miss torch's allocations, which bypass Python's allocator). One untimed call each.
- **cache bytes per token per layer**: what each cache stores per token and layer (ours: the latent cache's
  row, d_c + d_h^R floats; theirs: its DynamicCache's keys + values of one layer divided by the cached
  tokens). Ours is preallocated for the whole context: the allocated bytes are reported too.

Why ours is faster (REFERENCE.md, transformers 5.24): transformers caches the same latent, but every decode
step re-expands all cached tokens through ``kv_b_proj`` (H (d_h + d_v) numbers per cached token and layer),
and its prompt pass materialises the full (H, T, T) score matrix (sdpa falls back to the unfused math path
since the q/k head dim differs from the v head dim). Ours prefills with the naive expansion through
``scaled_dot_product_attention`` and decodes on the absorbed path (W_UK folded into the query, W_UV after
attention, the latent cache written in place), so a step's attention reads d_c + d_h^R numbers per cached
token and never expands them.

How it measures: after ``--warmup`` untimed rounds, ``--repeats`` rounds per prompt length; in each round
the two run back to back (interleaved pairs; the order alternates between rounds, so both share the
machine's load). Reported: the median of each side and the median of the per-round ratios (theirs / ours)
with their range. Both sides run with the same number of threads, 1 by default: batch-1 decoding of a
model this small is a chain of tiny ops, which extra threads only slow down, and on a shared machine a
second thread that waits for a core makes every op wait (measured on 2 busy cores: decode steps 5-10x
slower with 2 threads). Timings depend on the CPU and its other load; run it alone, and twice.

Run from the repository root (CPU; several minutes with the defaults on 2 cores):

    python benchmarks/deepseek_decode.py
    python benchmarks/deepseek_decode.py --quick          # prompts 256 1024, 2 rounds, no memory profile
    python benchmarks/deepseek_decode.py --prompts 1024 --repeats 9 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.generation import generate  # noqa: E402
from utils.hf_interop import export_hf, import_hf  # noqa: E402
from utils.model import DeepSeekConfig, DeepSeekModel  # noqa: E402

SIZES = dict(vocab_size=512, d_model=128, n_layers=4, n_heads=8, q_lora_rank=64, kv_lora_rank=64,
             qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, d_ff=384, first_k_dense=1,
             n_routed=8, n_shared=1, top_k=2, expert_hidden=96)


def build(context_length: int, seed: int = 0) -> DeepSeekModel:
    """The benchmark model with random weights; a sharper output head so greedy picks have no near-ties."""
    torch.manual_seed(seed)
    model = DeepSeekModel(DeepSeekConfig(context_length=context_length, **SIZES)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if name.startswith("lm_head") else 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn_like(b))
    return model


# --- the two sides ---------------------------------------------------------------------------------------

def ours_generate(model, prompt, new):
    return generate(model, prompt, new, use_cache=True)


def hf_generate(hf, prompt, new):
    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False)


@torch.no_grad()
def ours_steps(model, prompt, new):
    """(ids, prompt-pass seconds, seconds per decode step, cache) by hand on the absorbed latent cache."""
    cache = model.new_cache(prompt.shape[0])
    t0 = time.perf_counter()
    logits = model(prompt, cache=cache)[:, -1]
    t1 = time.perf_counter()
    out = [logits.argmax(-1, keepdim=True)]
    for _ in range(new - 1):
        out.append(model(out[-1], cache=cache)[:, -1].argmax(-1, keepdim=True))
    t2 = time.perf_counter()
    return torch.cat([prompt, *out], 1), t1 - t0, (t2 - t1) / max(1, new - 1), cache


@torch.no_grad()
def hf_steps(hf, prompt, new):
    """The same with transformers' forward and its DynamicCache."""
    from transformers import DynamicCache
    cache = DynamicCache(config=hf.config)
    t0 = time.perf_counter()
    res = hf(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    t1 = time.perf_counter()
    out = [res.logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(new - 1):
        res = hf(input_ids=out[-1], cache=cache, use_cache=True)
        out.append(res.logits[:, -1].argmax(-1, keepdim=True))
    t2 = time.perf_counter()
    return torch.cat([prompt, *out], 1), t1 - t0, (t2 - t1) / max(1, new - 1), cache


def peak_allocated(fn) -> int:
    """Largest CPU tensor memory allocated during ``fn()`` above the start (torch profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    finally:
        os.remove(path)
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0)


def cache_bytes(ours_cache, hf_cache, tokens: int):
    layer = ours_cache.layers[0]
    ours_row = layer.c.shape[-1] * layer.c.element_size()
    ours_alloc = layer.c.numel() * layer.c.element_size() // layer.c.shape[0]  # per sequence, whole capacity
    hl = hf_cache.layers[0]
    theirs = (hl.keys.numel() * hl.keys.element_size() + hl.values.numel() * hl.values.element_size())
    return ours_row, ours_alloc, theirs // (tokens * hl.keys.shape[0])


# --- the run ---------------------------------------------------------------------------------------------

def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def med_range(values):
    return statistics.median(values), min(values), max(values)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per prompt length (interleaved pairs)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads for both sides (default 1; 0: torch's default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the profiled peak-memory calls")
    ap.add_argument("--quick", action="store_true", help="prompts 256 1024, 2 rounds, no memory profile")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.repeats, args.warmup, args.no_memory = [256, 1024], 2, 1, True
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import DeepseekV3ForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    new = args.new_tokens
    model = build(max(args.prompts) + new)
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, Path(tmp) / "m")
        ours = import_hf(Path(tmp) / "m")
        hf = DeepseekV3ForCausalLM.from_pretrained(Path(tmp) / "m").eval()
    hf.generation_config.pad_token_id = hf.generation_config.eos_token_id = None
    cfg = ours.cfg
    print(f"config: d_model {cfg.d_model}, {cfg.n_layers} layers ({cfg.first_k_dense} dense), {cfg.n_heads} heads, "
          f"q_lora {cfg.q_lora_rank}, kv_lora {cfg.kv_lora_rank}, nope {cfg.qk_nope_head_dim}, rope "
          f"{cfg.qk_rope_head_dim}, v {cfg.v_head_dim}, {cfg.n_routed} routed top-{cfg.top_k} + {cfg.n_shared} shared, "
          f"vocab {cfg.vocab_size}, context {cfg.context_length}; fp32, batch 1, {torch.get_num_threads()} threads; "
          f"transformers attn_implementation={hf.config._attn_implementation!r}")
    print(f"{new} new tokens, {args.repeats} interleaved rounds per prompt after {args.warmup} warm-up; "
          "ratios are theirs / ours (median of the rounds, [min, max])\n")

    rows = []
    gen = torch.Generator().manual_seed(123)
    for T in args.prompts:
        prompt = torch.randint(0, cfg.vocab_size, (1, T), generator=gen)
        # correctness first: identical tokens from all four ways of generating
        a, b = ours_generate(ours, prompt, new), hf_generate(hf, prompt, new)
        c, d = ours_steps(ours, prompt, new)[0], hf_steps(hf, prompt, new)[0]
        if not (torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)):
            first = int((a != b).nonzero()[0, 1]) if a.shape == b.shape and not torch.equal(a, b) else None
            print(f"prompt {T}: the generated tokens differ (first difference at {first}); no timing.")
            return 1
        whole_o, whole_h, step_o, step_h, pre_o, pre_h = [], [], [], [], [], []
        for r in range(args.warmup + args.repeats):
            pair = [("ours", lambda: ours_generate(ours, prompt, new)), ("hf", lambda: hf_generate(hf, prompt, new))]
            times = {}
            for name, fn in (pair if r % 2 == 0 else pair[::-1]):
                times[name] = timed(fn)[1]
            steps = {}
            order = [("ours", ours_steps, ours), ("hf", hf_steps, hf)]
            for name, fn, m in (order if r % 2 == 1 else order[::-1]):
                steps[name] = fn(m, prompt, new)
            if r < args.warmup:
                continue
            whole_o.append(times["ours"]); whole_h.append(times["hf"])
            pre_o.append(steps["ours"][1]); pre_h.append(steps["hf"][1])
            step_o.append(steps["ours"][2]); step_h.append(steps["hf"][2])
        per_bytes = cache_bytes(steps["ours"][3], steps["hf"][3], T + new - 1)
        mem = None
        if not args.no_memory:
            mem = (peak_allocated(lambda: ours_generate(ours, prompt, new)),
                   peak_allocated(lambda: hf_generate(hf, prompt, new)))
        rows.append(dict(T=T, whole=(whole_o, whole_h), step=(step_o, step_h), pre=(pre_o, pre_h), bytes=per_bytes,
                         mem=mem))
        report(rows[-1])
    print("\nsummary (theirs / ours, median of rounds):")
    for row in rows:
        w = statistics.median(h / o for o, h in zip(*row["whole"]))
        s = statistics.median(h / o for o, h in zip(*row["step"]))
        p = statistics.median(h / o for o, h in zip(*row["pre"]))
        print(f"  prompt {row['T']:>5}: whole call {w:5.2f}x   per decode step {s:5.2f}x   prompt pass {p:5.2f}x")
    return 0


def report(row) -> None:
    T = row["T"]
    print(f"prompt {T} tokens: identical tokens")
    for label, key, unit, scale in (("whole call", "whole", "ms", 1e3), ("prompt pass", "pre", "ms", 1e3),
                                    ("decode step", "step", "ms", 1e3)):
        o, h = row[key]
        ratios = [b / a for a, b in zip(o, h)]
        rm, rlo, rhi = med_range(ratios)
        print(f"  {label:<12} ours {statistics.median(o) * scale:9.2f} {unit}   transformers "
              f"{statistics.median(h) * scale:9.2f} {unit}   ratio {rm:5.2f}x [{rlo:.2f}, {rhi:.2f}]")
    ours_row, ours_alloc, theirs = row["bytes"]
    print(f"  cache bytes per token per layer: ours {ours_row} (latent d_c + d_h^R, fp32; preallocated "
          f"{ours_alloc / 2**20:.2f} MiB per layer for the whole context), transformers {theirs}")
    if row["mem"]:
        print(f"  peak tensor memory during one call (torch profiler): ours {row['mem'][0] / 2**20:.1f} MiB, "
              f"transformers {row['mem'][1] / 2**20:.1f} MiB")


if __name__ == "__main__":
    raise SystemExit(main())

"""Our DeepSeekMoE against transformers' DeepseekV3MoE, and batched against loop dispatch (Lectures 19-21).

What it measures: one training step's forward + backward of a DeepSeek-style MoE layer on a
batch of tokens, in tokens per second, for three variants holding the same weights:

- ``transformers``: ``DeepseekV3MoE`` from Hugging Face transformers (its tiny-config layer, fp32);
- ``ours batched``: ``utils.moe.DeepSeekMoE`` with the batched dispatch (tokens sorted by expert,
  one contiguous slice per expert, Lecture 19);
- ``ours loop``: the same layer with the per-expert loop dispatch (each expert gathers its tokens).

Before timing, the script loads transformers' weights (with a non-zero correction bias and
group-limited routing) into ours and checks that the three outputs agree (1e-5) and that the
input gradients agree (1e-4).

How it measures: after warm-up, the variants run in turn for ``--repeats`` rounds (rotating who
goes first), so all see the same machine load; the table reports the median tokens per second,
and ratios of medians with the range of per-round ratios. Timings depend on the CPU, the thread
count and other load: run it twice and compare.

Run from the repository root (CPU; under a minute on 2 cores with the defaults):

    python benchmarks/moe.py
    python benchmarks/moe.py --quick
    python benchmarks/moe.py --tokens 4096 --experts 64 --top-k 6 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.moe import DeepSeekMoE, DeepSeekMoEConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step (default: 2048)")
    parser.add_argument("--d-model", type=int, default=256, help="model width (default: 256)")
    parser.add_argument("--expert-hidden", type=int, default=128, help="expert hidden width (default: 128)")
    parser.add_argument("--experts", type=int, default=32, help="routed experts (default: 32)")
    parser.add_argument("--shared", type=int, default=1, help="shared experts (default: 1)")
    parser.add_argument("--top-k", type=int, default=4, help="experts per token (default: 4)")
    parser.add_argument("--groups", type=int, default=4, help="expert groups (default: 4)")
    parser.add_argument("--topk-groups", type=int, default=2, help="groups kept per token (default: 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 512 tokens, 3 rounds")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.repeats, args.warmup = 512, 3, 1
    return args


def build(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """transformers' DeepseekV3MoE with random weights and a non-zero bias, and ours with the same weights."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    hf_cfg = DeepseekV3Config(hidden_size=args.d_model, moe_intermediate_size=args.expert_hidden,
                              n_routed_experts=args.experts, n_shared_experts=args.shared,
                              num_experts_per_tok=args.top_k, n_group=args.groups, topk_group=args.topk_groups,
                              routed_scaling_factor=2.5, norm_topk_prob=True)
    torch.manual_seed(args.seed)
    theirs = DeepseekV3MoE(hf_cfg).float()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.05)
        theirs.gate.e_score_correction_bias.normal_(0, 0.02)
    variants = {"transformers": theirs}
    for dispatch in ("batched", "loop"):
        ours = DeepSeekMoE(DeepSeekMoEConfig(args.d_model, args.expert_hidden, args.experts, args.shared,
                                             args.top_k, args.groups, args.topk_groups,
                                             routed_scaling_factor=2.5), dispatch=dispatch)
        ours.load_transformers_state_dict(theirs.state_dict())
        variants[f"ours {dispatch}"] = ours
    return variants


def step(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward of a scalar loss; returns the output and the input gradient."""
    x = x.detach().requires_grad_(True)
    out = layer(x)
    (out * out).mean().backward()
    return out.detach(), x.grad


def check(variants: dict, x: torch.Tensor) -> None:
    results = {name: step(layer, x) for name, layer in variants.items()}
    ref_out, ref_grad = results["transformers"]
    for name, (out, grad) in results.items():
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-4)


def timed(layer: torch.nn.Module, x: torch.Tensor) -> float:
    layer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    step(layer, x)
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = build(args)
    x = torch.randn(1, args.tokens, args.d_model, generator=torch.Generator().manual_seed(args.seed))
    check(variants, x)
    names = list(variants)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32; one MoE layer: d_model "
          f"{args.d_model}, {args.experts} routed experts of {args.expert_hidden} + {args.shared} shared, "
          f"top-{args.top_k}, {args.groups} groups (keep {args.topk_groups}); {args.tokens} tokens per step, "
          f"forward + backward; median of {args.repeats} interleaved rounds after {args.warmup} warm-up rounds")
    print("outputs (1e-5) and input gradients (1e-4) of all three agree (checked)\n")
    for _ in range(args.warmup):
        for name in names:
            timed(variants[name], x)
    times = {name: [] for name in names}
    for r in range(args.repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(variants[name], x))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'variant':>14} {'median ms':>10} {'tokens/s':>10}")
    print("-" * 36)
    for name in names:
        print(f"{name:>14} {1000 * med[name]:10.1f} {args.tokens / med[name]:10,.0f}")
    print()
    for a, b in (("ours batched", "transformers"), ("ours batched", "ours loop")):
        per_round = sorted(y / x_ for x_, y in zip(times[a], times[b]))
        print(f"{a} vs {b}: {med[b] / med[a]:.2f}x tokens per second "
              f"(per-round ratios {per_round[0]:.2f}x to {per_round[-1]:.2f}x)")


if __name__ == "__main__":
    main()

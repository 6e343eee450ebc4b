"""One training step of our DeepSeekModel against transformers' DeepseekV3ForCausalLM (Lectures 29-30).

What it measures: a full training step (forward, loss, backward, AdamW step) of the course's
``utils.model.DeepSeekModel`` and of Hugging Face's ``DeepseekV3ForCausalLM`` holding the same weights:
our model is built, written with ``utils.hf_interop.export_hf``, read back with ``import_hf`` (ours) and
with ``DeepseekV3ForCausalLM.from_pretrained`` (theirs). The configuration is the capstone's shape:
hidden 128, 4 layers (the first dense), 4 heads, 8 routed experts top-2 + 1 shared, q_lora 64,
kv_lora 32, vocabulary 7000, batch 16 x 128 tokens, fp32, no MTP (transformers has none), no
sequence-wise balance loss (transformers has none). Two comparisons:

1. **logits path**: both models return the (B, T, V) logits and the same ``F.cross_entropy`` is
   applied outside (ours: its attention takes the absorbed training path, since 2 d_c = 64 <= d_h + d_v,
   ``DeepSeekMLA.absorb_in_training``: every head attends over one shared latent key and value);
2. **own loss**: each model computes its own loss: ours ``deepseek_loss`` (``return_logits=False``: the
   output head and the cross-entropy a chunk of rows at a time, no (B, T, V) logits kept), theirs
   ``model(input_ids, labels=input_ids).loss`` (their shift by one inside: 127 of 128 positions per row).

Before timing, the script checks that the logits agree (1e-4), that both losses of each comparison
agree (1e-5 on the same positions) and that the gradients agree (1e-4).

How it measures: after warm-up, the four variants run in turn for ``--repeats`` rounds (the order
rotates every round), so all see the same machine load; the table gives the median step time, and each
comparison the ratio of medians with the range of per-round ratios (both steps of a round ran under the
same load). Each model has its own ``torch.optim.AdamW`` (PyTorch's defaults, as ``utils.trainer``: on CPU a
loop over the parameter tensors, and ours has more of them, one per expert matrix; ``--optimizer fused``
gives both PyTorch's fused kernel).

Peak memory: each variant runs in a fresh process (``MALLOC_MMAP_THRESHOLD_=65536``, so every large
tensor is its own mapping, returned to the system when freed); after two warm-up steps (optimizer state
allocated, gradients freed by ``zero_grad``) the kernel's resident high-water mark is reset
(``/proc/self/clear_refs``) and one more step runs: "step peak" = VmHWM after the step - VmRSS before it,
the memory the step needed on top of the weights and the optimizer state. Linux only.

Profile: ``torch.profiler`` (CPU) over a few steps of each variant; every op's self time goes to one
category: optimizer (inside ``optimizer.step``), routing (the router's forward: gate matmul, sigmoid,
group mask, top-k), matmuls (mm, addmm, bmm, linear, scaled_dot_product_attention and their backward),
cross-entropy (log-softmax, NLL, logsumexp and their backward; ours the chunked head's non-matmul work),
dispatch/indexing (gathers, scatters, sorts, index_add, cat, copies, embedding), elementwise (the rest).

Run from the repository root, alone on the machine (timings depend on the CPU, threads and load):

    python benchmarks/deepseek_train_step.py
    python benchmarks/deepseek_train_step.py --quick          # a smoke test: batch 4 x 64, 3 rounds
    python benchmarks/deepseek_train_step.py --threads 2 --repeats 21
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from utils.hf_interop import export_hf, import_hf  # noqa: E402
from utils.model import DeepSeekConfig, DeepSeekModel, deepseek_loss  # noqa: E402
from utils.moe import DeepSeekMoE  # noqa: E402

VARIANTS = ("ours logits", "theirs logits", "ours own loss", "theirs own loss")
CATEGORIES = ("matmuls", "cross-entropy", "elementwise", "dispatch/indexing", "routing", "optimizer")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default: 16)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--vocab", type=int, default=7000, help="vocabulary size (default: 7000)")
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds (default: 11, at least 11)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: 2)")
    parser.add_argument("--profile-steps", type=int, default=3, help="profiled steps per variant (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--optimizer", choices=("default", "foreach", "fused"), default="default",
                        help="AdamW implementation for both models (default: PyTorch's choice, as utils.trainer; "
                             "on CPU a loop over the parameter tensors)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile")
    parser.add_argument("--quick", action="store_true", help="a smoke test: batch 4 x 64, 3 rounds, 1 profiled step")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--memory-probe", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one fresh process
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.repeats, args.warmup, args.profile_steps = 4, 64, 3, 1, 1
    return args


def config(args) -> DeepSeekConfig:
    return DeepSeekConfig.small(vocab_size=args.vocab, context_length=args.seq, q_lora_rank=64, kv_lora_rank=32,
                                mtp_depth=0, seq_aux_alpha=0.0)


def build(args):
    """(ours, theirs): the same weights, ours through export_hf + import_hf, theirs through from_pretrained."""
    from transformers import DeepseekV3ForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as directory:
        export_hf(DeepSeekModel(config(args)), directory)
        ours = import_hf(directory)
        theirs = DeepseekV3ForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return ours.train(), theirs.train()


def batch(args):
    g = torch.Generator().manual_seed(args.seed + 1)
    seq = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()  # ids, next-token targets


def loss_fns(ours, theirs, x, y):
    """variant -> (model, a function computing the step's loss)."""
    ce = lambda logits: F.cross_entropy(logits.flatten(0, 1), y.flatten())  # noqa: E731
    return {
        "ours logits": (ours, lambda: ce(ours(x))),
        "theirs logits": (theirs, lambda: ce(theirs(input_ids=x).logits)),
        "ours own loss": (ours, lambda: deepseek_loss(ours, x, y)[0]),
        "theirs own loss": (theirs, lambda: theirs(input_ids=x, labels=x).loss),
    }


OPTIMIZER_OPTIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def make_steps(ours, theirs, x, y, optimizer: str = "default"):
    options = OPTIMIZER_OPTIONS[optimizer]
    optims = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4, **options) for m in (ours, theirs)}

    def stepper(model, loss_fn):
        opt = optims[id(model)]

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
            return loss.detach()
        return step
    return {name: stepper(m, fn) for name, (m, fn) in loss_fns(ours, theirs, x, y).items()}


def check(ours, theirs, x, y) -> dict:
    """Logits, the losses of both comparisons and the gradients agree; returns the losses."""
    with torch.no_grad():
        lo, lt = ours(x), theirs(input_ids=x).logits
    torch.testing.assert_close(lo, lt, atol=1e-4, rtol=1e-4)
    ce = F.cross_entropy(lt.flatten(0, 1), y.flatten())
    fns = loss_fns(ours, theirs, x, y)
    losses = {}
    for name, (model, fn) in fns.items():
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        losses[name] = loss.item()
    # ours own loss (all 128 positions) == CE of their logits; theirs own loss (127) == CE of ours on the same
    torch.testing.assert_close(torch.tensor(losses["ours own loss"]), ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(losses["theirs logits"]), ce, atol=1e-5, rtol=1e-5)
    shifted = F.cross_entropy(lo[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    torch.testing.assert_close(torch.tensor(losses["theirs own loss"]), shifted, atol=1e-5, rtol=1e-5)
    # gradients: ours own loss and theirs logits path minimise the same number
    grads = {}
    for name in ("ours own loss", "theirs logits"):
        model, fn = fns[name]
        model.zero_grad(set_to_none=True)
        fn().backward()
        emb = model.embed_tokens if model is ours else model.model.embed_tokens
        grads[name] = (emb.weight.grad.clone(), model.lm_head.weight.grad.clone())
    for a, b in zip(grads["ours own loss"], grads["theirs logits"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    ours.zero_grad(set_to_none=True)
    theirs.zero_grad(set_to_none=True)
    return losses


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


# --- peak memory (a fresh process per variant) -----------------------------------------------------------

def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(args) -> None:
    ours, theirs = build(args)
    x, y = batch(args)
    step = make_steps(ours, theirs, x, y, args.optimizer)[args.memory_probe]
    for _ in range(2):
        step()
    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step()
    print(json.dumps({"before": before, "peak": _status("VmHWM")}))


def measure_memory(args) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONWARNINGS": "ignore"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    base = [sys.executable, str(Path(__file__).resolve()), "--batch", str(args.batch), "--seq", str(args.seq),
            "--vocab", str(args.vocab), "--seed", str(args.seed), "--optimizer", args.optimizer]
    out = {}
    for name in VARIANTS:
        run = subprocess.run(base + ["--memory-probe", name], capture_output=True, text=True, env=env, cwd=ROOT)
        if run.returncode:
            raise RuntimeError(f"memory probe {name!r} failed:\n{run.stderr[-2000:]}")
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


# --- profile by category -----------------------------------------------------------------------------------

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
          "aten::_scaled_dot_product_flash_attention_for_cpu",
          "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
          "aten::_scaled_dot_product_attention_math", "aten::scaled_dot_product_attention", "aten::addmm_",
          "aten::_grouped_mm", "aten::einsum"}
CROSS_ENTROPY = {"aten::log_softmax", "aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss",
                 "aten::nll_loss_forward", "aten::nll_loss_backward", "aten::nll_loss_nd", "aten::cross_entropy_loss",
                 "aten::logsumexp"}
DISPATCH = {"aten::index", "aten::index_select", "aten::index_add_", "aten::index_put_", "aten::_index_put_impl_",
            "aten::scatter", "aten::scatter_", "aten::scatter_add_", "aten::gather", "aten::sort", "aten::argsort",
            "aten::nonzero", "aten::where", "aten::one_hot", "aten::bincount", "aten::cat", "aten::stack",
            "aten::copy_", "aten::clone", "aten::contiguous", "aten::embedding", "aten::embedding_backward",
            "aten::embedding_dense_backward", "aten::index_add", "aten::split_with_sizes", "aten::_to_copy",
            "aten::index_backward", "aten::new_zeros", "aten::zeros_like", "aten::masked_scatter",
            "aten::repeat_interleave", "aten::cumsum", "aten::unique_dim", "aten::_unique2", "aten::item",
            "aten::_local_scalar_dense", "aten::embedding_dense_backward_cpu", "aten::sum_to_size"}
CE_SCOPES = ("NllLossBackward", "LogSoftmaxBackward", "_LinearCrossEntropy")


def categorise(event) -> str:
    names = []
    parent = event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    if any(n.startswith("Optimizer.") for n in names):
        return "optimizer"
    if "routing" in names:
        return "routing"
    if event.name in MATMUL:
        return "matmuls"
    if event.name in CROSS_ENTROPY or any(s in n for n in names for s in CE_SCOPES):
        return "cross-entropy"
    if event.name in DISPATCH:
        return "dispatch/indexing"
    return "elementwise"


@contextlib.contextmanager
def routing_scopes(ours, theirs):
    """Mark the routers' forward as a ``routing`` profiler scope (profiling only)."""
    restore, handles = [], []
    for moe in (m for m in ours.modules() if isinstance(m, DeepSeekMoE)):
        original = moe.route

        def route(flat, _original=original):
            with torch.profiler.record_function("routing"):
                return _original(flat)
        moe.route = route
        restore.append(moe)
    for name, module in theirs.named_modules():
        if type(module).__name__ == "DeepseekV3TopkRouter":
            scope = {}

            def enter(module, inputs, scope=scope):
                scope["rf"] = torch.profiler.record_function("routing").__enter__()
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(
                lambda m, a, o, scope=scope: scope.pop("rf").__exit__(None, None, None)))
    try:
        yield
    finally:
        for moe in restore:
            del moe.route
        for h in handles:
            h.remove()


def profile(steps: dict, n: int, ours, theirs) -> dict:
    table = {}
    with routing_scopes(ours, theirs):
        for name, step in steps.items():
            step()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(n):
                    step()
            per = defaultdict(float)
            for event in prof.events():
                if event.device_type == torch.autograd.DeviceType.CPU and event.self_cpu_time_total > 0:
                    per[categorise(event)] += event.self_cpu_time_total / 1000 / n  # ms per step
            table[name] = per
    return table


# --- main --------------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args)
    import transformers
    ours, theirs = build(args)
    x, y = batch(args)
    losses = check(ours, theirs, x, y)
    n_tok = args.batch * args.seq
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"CPU, fp32; theirs: attention {theirs.config._attn_implementation!r}, experts "
          f"{getattr(theirs.config, '_experts_implementation', None) or 'eager'!r}")
    cfg = ours.cfg
    print(f"config: hidden {cfg.d_model}, {cfg.n_layers} layers ({cfg.first_k_dense} dense), {cfg.n_heads} heads, "
          f"{cfg.n_routed} routed experts top-{cfg.top_k} + {cfg.n_shared} shared, q_lora {cfg.q_lora_rank}, "
          f"kv_lora {cfg.kv_lora_rank}, vocab {cfg.vocab_size}; batch {args.batch} x {args.seq} = {n_tok} tokens; "
          f"step = forward + loss + backward + AdamW ({args.optimizer} implementation, "
          f"{sum(1 for _ in ours.parameters())} parameter tensors ours, {sum(1 for _ in theirs.parameters())} theirs)")
    print("checked: logits (1e-4), losses on the same positions (1e-5), embedding and head gradients (1e-4) agree; "
          + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    steps = make_steps(ours, theirs, x, y, args.optimizer)
    names = list(steps)
    for _ in range(args.warmup):
        for name in names:
            steps[name]()
    times = {name: [] for name in names}
    for r in range(args.repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(steps[name]))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nmedian of {args.repeats} interleaved rounds after {args.warmup} warm-up rounds")
    print(f"{'variant':>16} {'median ms':>10} {'tokens/s':>10}")
    print("-" * 38)
    for name in names:
        print(f"{name:>16} {1000 * med[name]:10.1f} {n_tok / med[name]:10,.0f}")
    print()
    for ours_name, theirs_name, goal in (("ours logits", "theirs logits", 1.10),
                                         ("ours own loss", "theirs own loss", 1.25)):
        per_round = sorted(t / o for o, t in zip(times[ours_name], times[theirs_name]))
        ratio = med[theirs_name] / med[ours_name]
        print(f"{ours_name} vs {theirs_name}: {ratio:.2f}x (per-round {per_round[0]:.2f}x to {per_round[-1]:.2f}x; "
              f"goal >= {goal:.2f}x: {'met' if ratio >= goal else 'NOT met'})")

    if not args.no_memory:
        mem = measure_memory(args)
        print("\npeak memory of one step (fresh process each; step peak = VmHWM during the step - VmRSS before it)")
        print(f"{'variant':>16} {'step peak MiB':>14} {'VmHWM MiB':>10}")
        print("-" * 42)
        for name in VARIANTS:
            m = mem[name]
            print(f"{name:>16} {(m['peak'] - m['before']) / 2**20:14.1f} {m['peak'] / 2**20:10.1f}")
        o, t = (mem[n]["peak"] - mem[n]["before"] for n in ("ours own loss", "theirs own loss"))
        print(f"own loss: ours needs {o / 2**20:.1f} MiB, theirs {t / 2**20:.1f} MiB ({t / max(o, 1):.2f}x)")

    if not args.no_profile:
        table = profile(steps, args.profile_steps, ours, theirs)
        print(f"\nprofile: self CPU ms per step by category (torch.profiler, {args.profile_steps} steps each; "
              "profiler overhead included, so totals exceed the timed medians)")
        print(f"{'category':>18} " + " ".join(f"{n:>16}" for n in names))
        print("-" * (19 + 17 * len(names)))
        for cat in CATEGORIES:
            print(f"{cat:>18} " + " ".join(f"{table[n].get(cat, 0.0):16.1f}" for n in names))
        print(f"{'total':>18} " + " ".join(f"{sum(table[n].values()):16.1f}" for n in names))


if __name__ == "__main__":
    main()

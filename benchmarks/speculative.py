"""Speculative decoding with an MTP draft vs plain greedy decoding, on a small trained model (Lecture 25).

What it measures: a small GPT (``utils.gpt.GPTModel``, d_model 64, 2 blocks, context 64, the
compact TinyStories vocabulary of Lecture 03) with one DeepSeek MTP module
(``utils.deepseek_mtp.DeepSeekMTP``, D = 1) is trained for ``--steps`` steps with lecture 22's
trainer on next-token loss + 0.3 * the MTP loss (or loaded from ``--load``, a state dict this script
wrote with ``--save``). Then, for a few story prompts, it generates ``--new-tokens`` tokens with
``utils.generation.generate(main model, use_cache=True)`` (plain greedy with a KV cache) and with
``utils.mtp.speculative_generate(model, use_cache=True)`` (MTP module 1 drafts the token after
next, the main model verifies it in a two-token pass). Both must give identical tokens, checked in
every round. It reports tokens per second of each (median over rounds), their ratio, the
acceptance rate and the tokens per main-model pass.

How it measures: after a warm-up, the two variants run alternately for ``--repeats`` rounds
(taking turns to go first), so both see the same machine load; each round decodes every prompt.

Why a small CPU model gains little or loses (read the printed counts): a speculative step costs
one MTP draft (eh_proj + one block + the shared output head) plus one main-model pass over two
tokens, and yields 1 + (acceptance) tokens. DeepSeek-V3 reports 85-90 % acceptance and 1.8x: there
the MTP module is one layer beside 61, and on a GPU a pass over two tokens costs about as much as
over one (decoding is limited by reading the weights). Here the opposite holds: the trunk is only
2 blocks, so a draft (which runs the vocabulary-sized head again) costs nearly as much as a whole
main-model step; a two-token pass on a CPU costs more than a one-token pass; Python overhead per
step is a large share; and a briefly trained model's drafts are often wrong (its acceptance rate is
far below DeepSeek's). With acceptance a and draft cost c (in main-model steps), the ideal speed-up
is about (1 + a) / (1 + c + extra cost of the second token): below 1 unless a is high and c small.

Run from the repository root (CPU; under about 2 minutes on 2 cores with the defaults):

    python benchmarks/speculative.py
    python benchmarks/speculative.py --quick                 # 40 steps, 2 rounds: a smoke test
    python benchmarks/speculative.py --save /tmp/mtp25.pt    # then --load /tmp/mtp25.pt skips training
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.data import STORY_SEPARATOR, encode_stories, load_corpus, make_loader, split_stories  # noqa: E402
from utils.deepseek_mtp import DeepSeekMTP, mtp_loss  # noqa: E402
from utils.generation import generate  # noqa: E402
from utils.gpt import GPTConfig, GPTModel  # noqa: E402
from utils.mtp import SpeculativeStats, speculative_generate  # noqa: E402
from utils.tokenizer import END_OF_TEXT, CompactTokenizer  # noqa: E402
from utils.trainer import TrainConfig, evaluate_lm, train  # noqa: E402

PROMPTS = ["Once upon a time", "Tom and Lily went to the park.", "The little dog was sad because",
           "One day, a girl named Sue"]
LAMBDA = 0.3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens generated per prompt (default: 48)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--save", type=str, default=None, help="write the trained state dict here")
    parser.add_argument("--load", type=str, default=None, help="load a state dict written with --save")
    parser.add_argument("--quick", action="store_true", help="40 steps and 2 rounds (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 40, 2
    return args


def mtp_loss_fn(model, x, y):
    main, mtp_logits = model(x)  # (B, T, V), (B, T - 1, 1, V)
    lm = F.cross_entropy(main.flatten(0, 1), y.flatten())
    l_mtp = mtp_loss(mtp_logits, y[:, 1:].unsqueeze(-1), lam=LAMBDA)  # position i scores t_(i+2) = y[:, i+1]
    return lm + l_mtp, {"lm": lm.item(), "mtp": l_mtp.item()}


def build(args) -> tuple[DeepSeekMTP, CompactTokenizer]:
    train_stories, val_stories = split_stories(load_corpus("tinystories"))
    compact = CompactTokenizer.from_text(STORY_SEPARATOR.join(train_stories) + STORY_SEPARATOR)
    end_id = compact.encode(END_OF_TEXT)[0]
    cfg = GPTConfig(vocab_size=compact.vocab_size, context_length=64, d_model=64, n_heads=4, n_layers=2,
                    dropout=0.0, use_sdpa=True)
    torch.manual_seed(123)
    model = DeepSeekMTP(GPTModel(cfg), depth=1)
    val_loader = make_loader(encode_stories(val_stories, compact.encode, end_id), 64, 16, shuffle=False)
    if args.load:
        model.load_state_dict(torch.load(args.load, weights_only=True))
        print(f"loaded {args.load}")
    else:
        train_loader = make_loader(encode_stories(train_stories, compact.encode, end_id), 64, 16, seed=1)
        config = TrainConfig(steps=args.steps, lr=3e-3, warmup_steps=max(1, args.steps // 10),
                             eval_every=args.steps, eval_batches=10)
        start = time.perf_counter()
        train(model, train_loader, val_loader, config, loss_fn=mtp_loss_fn)
        print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s")
        if args.save:
            torch.save(model.state_dict(), args.save)
    print(f"next-token validation loss {evaluate_lm(model, val_loader, 10):.4f}")
    return model.eval(), compact


def counts(model: DeepSeekMTP) -> None:
    def macs(m):
        return sum(p.numel() for n, p in m.named_parameters() if p.dim() == 2 and "emb" not in n)

    trunk = sum(macs(b) for b in model.model.blocks)
    head = model.model.out_head.weight.numel()
    draft = macs(model.mtp[0]) + head
    print(f"multiply-adds per token (weights): main model {trunk + head:,} (trunk {trunk:,}, head {head:,}); "
          f"one MTP draft {draft:,} = {draft / (trunk + head):.2f} of a main-model token")


def run_round(model, prompts, n, speculative: bool):
    outs, stats = [], SpeculativeStats()
    start = time.perf_counter()
    for idx in prompts:
        if speculative:
            out, s = speculative_generate(model, idx, n)
            for f in ("drafted", "accepted", "main_passes", "new_tokens"):
                setattr(stats, f, getattr(stats, f) + getattr(s, f))
        else:
            out = generate(model.model, idx, n, use_cache=True)
        outs.append(out)
    return time.perf_counter() - start, outs, stats


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, compact = build(args)
    prompts = [torch.tensor([compact.encode(p)]) for p in PROMPTS]
    if max(p.shape[1] for p in prompts) + args.new_tokens > model.cfg.context_length:
        raise SystemExit(f"--new-tokens {args.new_tokens} does not fit the context of {model.cfg.context_length}.")
    counts(model)
    n_total = args.new_tokens * len(prompts)
    run_round(model, prompts, 8, False), run_round(model, prompts, 8, True)  # warm-up
    seconds = {"greedy": [], "speculative": []}
    stats = None
    for r in range(args.repeats):
        for speculative in ((False, True) if r % 2 == 0 else (True, False)):
            elapsed, outs, s = run_round(model, prompts, args.new_tokens, speculative)
            seconds["speculative" if speculative else "greedy"].append(elapsed)
            if speculative:
                spec_outs, stats = outs, s
            else:
                greedy_outs = outs
        if not all(torch.equal(a, b) for a, b in zip(spec_outs, greedy_outs)):
            raise SystemExit("speculative and greedy decoding disagree: the timings compare different results")
    print(f"\nspeculative and greedy decoding gave the same {n_total} tokens in every round (checked)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32; {len(prompts)} prompts x "
          f"{args.new_tokens} new tokens, batch 1; median of {args.repeats} interleaved rounds\n")
    tps = {name: n_total / statistics.median(s) for name, s in seconds.items()}
    paired = sorted(g / s for g, s in zip(seconds["greedy"], seconds["speculative"]))
    print(f"{'variant':>12} {'median s':>9} {'tokens/s':>9}")
    for name, s in seconds.items():
        print(f"{name:>12} {statistics.median(s):>9.3f} {tps[name]:>9.1f}")
    print(f"\nspeculative / greedy: {tps['speculative'] / tps['greedy']:.2f}x tokens per second (per-round "
          f"{paired[0]:.2f}x to {paired[-1]:.2f}x); acceptance rate {stats.acceptance_rate:.4f} "
          f"({stats.accepted}/{stats.drafted}); {stats.tokens_per_pass:.2f} tokens per main-model pass "
          "(DeepSeek-V3: 85-90 % acceptance, 1.8x)")
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()

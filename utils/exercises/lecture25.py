"""Exercises of Lecture 25: MTP in code and speculative decoding.

25.1 depth k of DeepSeek's MTP as a module (norms, concatenation, projection, block, shared head):
     the learner subclasses :class:`MTPDepth` and writes ``forward``; checked with copied weights,
25.2 the greedy acceptance rule of speculative decoding (:func:`utils.mtp.greedy_accept`),
25.3 the shifted targets of every depth (:func:`utils.deepseek_mtp.mtp_targets`).
Inputs come from private generators.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.deepseek_mtp import RMS_EPS, mtp_targets
from utils.exercises import Case, exercise, module_case, run_module, seeded
from utils.gpt import FeedForward, GPTConfig, TransformerBlock, default_attention
from utils.mtp import greedy_accept


class MTPDepth(nn.Module):
    """Depth k of DeepSeek's MTP with the shared parts it reads (Lecture 25, exercise 25.1).

    Own parts as in DeepSeek-V3's checkpoint: ``hnorm``, ``enorm``, ``eh_proj``, ``block``; shared
    with the main model: ``tok_emb`` (Emb), ``final_norm`` + ``out_head`` (OutHead).
    ``forward(h_prev (B, n, d), idx (B, T), k)`` -> (h^k (B, n, d), logits (B, n, V)) where row i
    uses the token t_{i+k} and scores t_{i+k+1}.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.hnorm = nn.RMSNorm(d, eps=RMS_EPS)
        self.enorm = nn.RMSNorm(d, eps=RMS_EPS)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.block = TransformerBlock(cfg, default_attention(cfg), FeedForward(cfg))
        self.final_norm = nn.LayerNorm(d)
        self.out_head = nn.Linear(d, cfg.vocab_size, bias=False)

    def forward(self, h_prev: torch.Tensor, idx: torch.Tensor, k: int):
        n = h_prev.shape[1]
        emb = self.tok_emb(idx[:, k:k + n])                                    # Emb(t_{i+k}): (B, n, d)
        x = self.eh_proj(torch.cat([self.hnorm(h_prev), self.enorm(emb)], dim=-1))  # (B, n, 2d) -> (B, n, d)
        h = self.block(x)                                                      # h^k: (B, n, d)
        return h, self.out_head(self.final_norm(h))                            # (B, n, V)


def _reference(cfg: GPTConfig, seed: int) -> MTPDepth:
    module = seeded(MTPDepth, cfg, seed=seed)
    with torch.no_grad():  # non-trivial norm weights and biases, so a skipped norm shows
        g = torch.Generator().manual_seed(seed + 1)
        for norm in (module.hnorm, module.enorm, module.final_norm):
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=g))
        module.final_norm.bias.copy_(0.1 * torch.randn(module.final_norm.bias.shape, generator=g))
    return module


def _depth_case(label, d, n_heads, V, B, n, T, k, seed):
    cfg = GPTConfig(vocab_size=V, context_length=16, d_model=d, n_heads=n_heads, n_layers=1, dropout=0.0)
    g = torch.Generator().manual_seed(seed + 2)
    h_prev = 3.0 * torch.randn(B, n, d, generator=g)
    idx = torch.randint(0, V, (B, T), generator=g)
    return module_case(label, _reference(cfg, seed), (cfg,), (h_prev, idx, k))


@exercise("25.1", "depth k of the MTP as a module: (h^k, logits) from h^{k-1}, Emb(t_{i+k}), block, shared head",
          call=run_module)
def _cases_depth():
    return [
        _depth_case("the lecture's model: d = 8, vocab 5000, depth k = 1 of T = 8, 5 positions",
                    8, 2, 5000, 1, 5, 8, 1, 2501),
        _depth_case("depth k = 3 of T = 8 (the last depth of D = 3), 5 positions", 8, 2, 5000, 1, 5, 8, 3, 2502),
        _depth_case("batch of 2, d = 16, vocab 50, depth k = 2", 16, 4, 50, 2, 4, 9, 2, 2503),
    ]


def _accept_case(label, greedy, draft, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(greedy), V, generator=g)
    logits[torch.arange(len(greedy)), torch.tensor(greedy)] = 5.0  # the main model's argmax per row
    draft = torch.tensor(draft)
    return Case(label, (draft, logits), greedy_accept(draft, logits))


@exercise("25.2", "greedy acceptance: (number of draft tokens accepted, next token) as two ints")
def _cases_accept():
    return [
        _accept_case("one draft, accepted: the main model's next token comes free", [4, 9], [4], seed=1),
        _accept_case("one draft, rejected: the main model's own token replaces it", [4, 9], [7], seed=2),
        _accept_case("three drafts, second rejected, third happens to match (must not count)",
                     [3, 5, 2, 8], [3, 6, 2], seed=3),
        _accept_case("three drafts, the first rejected", [1, 5, 2, 8], [0, 5, 2], seed=4),
        _accept_case("three drafts, all accepted", [1, 5, 2, 8], [1, 5, 2], seed=5),
    ]


@exercise("25.3", "MTP targets (B, T - D, D): depth k at position i is t_{i+k+1}, -100 past the end")
def _cases_targets():
    cases = []
    for label, B, T, D, seed in (("T = 8, D = 3 (the lecture's model)", 1, 8, 3, 2531),
                                 ("T = 6, D = 1 (DeepSeek-V3's depth)", 2, 6, 1, 2532),
                                 ("T = 10, D = 4, batch 3", 3, 10, 4, 2533)):
        idx = torch.randint(0, 5000, (B, T), generator=torch.Generator().manual_seed(seed))
        cases.append(Case(label, (idx, D), mtp_targets(idx, D)))
    return cases


__all__ = ["MTPDepth"]

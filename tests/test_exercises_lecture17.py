"""Lecture 17's checkers accept the right answers and reject the wrong answers learners write."""

import math

import torch

from checker_tools import assert_accepts, assert_rejects
from utils.mla_rope import DeepSeekMLA
from utils.mla import per_head
from utils.positional import apply_rope

# --- 17.1: the absorbed decode step with decoupled RoPE ---------------------------------------------


def make_answer(scale="one", rope="shared", positions="offset"):
    class Answer(DeepSeekMLA):
        def forward_absorbed(self, x, cache=None):
            cfg = self.cfg
            start = 0 if cache is None else cache.position
            q_c, q_r = self.queries(x, start)                              # (B, H, T, d_h), (B, H, T, d_h^R)
            if positions == "offset":
                c_kv, k_r = self.latents(x, start, cache)                  # (B, T_k, d_c), (B, T_k, d_h^R)
            else:  # the new keys rotated from position 0 again, whatever the cache holds
                c_new = self.kv_norm(self.W_DKV(x))
                k_new = apply_rope(self.W_KR(x), self.cos, self.sin, offset=0)
                both = torch.cat([c_new, k_new], -1)
                if cache is not None:
                    both = cache.append(both)
                c_kv, k_r = both.split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], -1)
            W_UK = per_head(self.W_UK.weight.T, cfg.n_heads)              # (H, d_c, d_h)
            c, k = c_kv.unsqueeze(1), k_r.unsqueeze(1)
            s_c = (q_c @ W_UK.transpose(1, 2)) @ c.transpose(-2, -1)
            s_r = q_r @ k.transpose(-2, -1)
            if rope == "forgotten":
                s_r = torch.zeros_like(s_r)
            if scale == "one":
                scores = (s_c + s_r) / math.sqrt(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
            elif scale == "two":  # two separately scaled scores added
                scores = s_c / math.sqrt(cfg.qk_nope_head_dim) + s_r / math.sqrt(cfg.qk_rope_head_dim)
            else:  # sqrt(d_h) only
                scores = (s_c + s_r) / math.sqrt(cfg.qk_nope_head_dim)
            weights = self._attend(scores, start)
            context = (weights @ c) @ per_head(self.W_UV.weight.T, cfg.n_heads)
            return self.out_proj(context.transpose(1, 2).flatten(2)), weights
    return Answer


class Concatenated(DeepSeekMLA):  # the same algebra: one dot product of [q_C W_UK^T ; q_R] with [c_KV ; k_R]
    def forward_absorbed(self, x, cache=None):
        start = 0 if cache is None else cache.position
        q_c, q_r = self.queries(x, start)
        c_kv, k_r = self.latents(x, start, cache)
        W_UK = self.W_UK.weight.view(self.cfg.n_heads, self.cfg.qk_nope_head_dim, -1)  # (H, d_h, d_c)
        q = torch.cat([torch.einsum("bhtd,hdc->bhtc", q_c, W_UK), q_r], -1)
        k = torch.cat([c_kv, k_r], -1).unsqueeze(1)
        weights = self._attend(q @ k.transpose(-2, -1) * self.scale, start)
        W_UV = self.W_UV.weight.view(self.cfg.n_heads, self.cfg.v_head_dim, -1)          # (H, d_v, d_c)
        ctx = torch.einsum("bhts,bsc,hvc->bthv", weights, c_kv, W_UV)
        return self.out_proj(ctx.flatten(2)), weights


class NaiveInDisguise(DeepSeekMLA):
    def forward_absorbed(self, x, cache=None):
        return self.forward_naive(x, cache)


def test_17_1_accepts():
    for answer in (make_answer(), Concatenated, NaiveInDisguise):
        assert_accepts("17.1", answer)


def test_17_1_rejects_two_separately_scaled_scores():
    assert_rejects("17.1", make_answer(scale="two"), "2 heads")


def test_17_1_rejects_scale_by_sqrt_d_h_only():
    assert_rejects("17.1", make_answer(scale="nope"))


def test_17_1_rejects_forgetting_the_rope_part():
    assert_rejects("17.1", make_answer(rope="forgotten"))


def test_17_1_rejects_rope_positions_not_offset_by_the_cache():
    assert_rejects("17.1", make_answer(positions="zero"), "prefill 3 tokens")


# --- 17.2: numbers cached per token -----------------------------------------------------------------

def test_17_2_accepts():
    assert_accepts("17.2", lambda cfg, n_layers: (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * n_layers)
    assert_accepts("17.2", lambda cfg, n_layers: cfg.cache_elements_per_token() * n_layers)


def test_17_2_rejects():
    assert_rejects("17.2", lambda cfg, n: cfg.kv_lora_rank * n, "DeepSeek-V3")                    # no RoPE key
    assert_rejects("17.2", lambda cfg, n: (cfg.kv_lora_rank + cfg.n_heads * cfg.qk_rope_head_dim) * n)  # per head
    assert_rejects("17.2", lambda cfg, n: 2 * cfg.n_heads * cfg.qk_nope_head_dim * n)            # MHA's cache
    assert_rejects("17.2", lambda cfg, n: float((cfg.kv_lora_rank + cfg.qk_rope_head_dim) * n))  # a float
    assert_rejects("17.2", lambda cfg, n: cfg.kv_lora_rank + cfg.qk_rope_head_dim, "61 layers")  # one layer only

"""Lecture 13's checkers accept the right answers and reject the wrong answers learners write."""

import math

import torch

from checker_tools import assert_accepts, assert_rejects
from utils.mla import MultiHeadLatentAttention, absorbed_query_weights, per_head

# --- 13.1: the absorbed path ------------------------------------------------------------------------


def make_answer(fold="per_head", use_W_uV=True, scale="head", append=True):
    class Answer(MultiHeadLatentAttention):
        def forward_absorbed(self, x, cache=None):
            T = x.shape[1]
            start = 0 if cache is None else cache.position
            c_kv = self.proj.latent(x)
            if cache is not None:
                c_kv = cache.append(c_kv) if append else torch.cat([cache.latent, c_kv], dim=1)
            if fold == "per_head":
                W_qk = absorbed_query_weights(self.W_q.weight.T, self.proj.W_uK, self.n_heads)
            else:  # across heads: one (d_in, d_c) matrix, the sum of the heads' blocks, shared by all heads
                W_qk = (self.W_q.weight.T @ self.proj.W_uK.T).expand(self.n_heads, -1, -1)
            c = c_kv.unsqueeze(1)
            d = self.head_dim if scale == "head" else self.d_latent
            scores = (x.unsqueeze(1) @ W_qk) @ c.transpose(-2, -1) / math.sqrt(d)
            scores = scores.masked_fill(self.mask[start:start + T, :start + T], float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            context = weights @ c
            if use_W_uV:
                context = context @ per_head(self.proj.W_uV, self.n_heads)
            else:  # the attended latent used as if it were the values
                context = context[..., :self.head_dim]
            return self.out_proj(self.merge_heads(context)), weights
    return Answer


class Einsum(MultiHeadLatentAttention):  # the same algebra written with einsum
    def forward_absorbed(self, x, cache=None):
        T, start = x.shape[1], 0 if cache is None else cache.position
        c = self.proj.latent(x)
        if cache is not None:
            c = cache.append(c)
        W_q = self.W_q.weight.T.view(self.d_in, self.n_heads, -1)
        W_uK = self.proj.W_uK.view(self.d_latent, self.n_heads, -1)
        q_lat = torch.einsum("btd,dhk,chk->bhtc", x, W_q, W_uK)
        scores = torch.einsum("bhtc,bsc->bhts", q_lat, c) / math.sqrt(self.head_dim)
        weights = torch.softmax(scores.masked_fill(self.mask[start:start + T, :start + T], float("-inf")), -1)
        ctx = torch.einsum("bhts,bsc,chk->bthk", weights, c, self.proj.W_uV.view(self.d_latent, self.n_heads, -1))
        return self.out_proj(ctx.flatten(2)), weights


class NaiveInDisguise(MultiHeadLatentAttention):  # expanding K and V is the same number too
    def forward_absorbed(self, x, cache=None):
        return self.forward_naive(x, cache)


def test_13_1_accepts():
    for answer in (make_answer(), Einsum, NaiveInDisguise):
        assert_accepts("13.1", answer)


def test_13_1_rejects_fold_across_heads():
    assert_rejects("13.1", make_answer(fold="across"), "case 1")


def test_13_1_rejects_forgetting_W_uV():
    assert_rejects("13.1", make_answer(use_W_uV=False), "case 1")


def test_13_1_rejects_scaling_by_sqrt_d_latent():
    assert_rejects("13.1", make_answer(scale="latent"), "case 3")  # the toy's latent 4 equals its head width


def test_13_1_rejects_cache_not_appended():
    assert_rejects("13.1", make_answer(append=False), "case 2")


def test_13_1_rejects_a_plain_module():
    assert_rejects("13.1", torch.nn.Module)


# --- 13.2: bytes of an MLA cache ------------------------------------------------------------------------


def bytes_right(n_layers, d_latent, rope_dim, seq_len, batch, bytes_per_element):
    return n_layers * batch * seq_len * (d_latent + rope_dim) * bytes_per_element


def test_13_2_accepts():
    assert_accepts("13.2", bytes_right)


def test_13_2_rejects_keys_and_values():  # MLA caches one latent, not a key and a value
    assert_rejects("13.2", lambda L, d, r, T, B, e: 2 * bytes_right(L, d, r, T, B, e), "case 1")


def test_13_2_rejects_forgetting_the_rope_key():
    assert_rejects("13.2", lambda L, d, r, T, B, e: bytes_right(L, d, 0, T, B, e), "case 3")


def test_13_2_rejects_a_float():
    assert_rejects("13.2", lambda L, d, r, T, B, e: float(bytes_right(L, d, r, T, B, e)), "int")

"""Lecture 09's checkers accept the right answers and reject the wrong answers learners write."""

import math

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects
from utils.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention

# --- 09.1: one cached attention step ---------------------------------------------------------------


def make_step(cache_query=False, no_scale=False, scale_by_d_v=False, wrong_axis=False, without_own_kv=False,
              softmax_over_rows=False, return_vector=False):
    """The right cached step, or one with a mistake learners make."""

    def cached_step(x_new, W_q, W_k, W_v, K_cache, V_cache):
        q, k, v = x_new @ W_q, x_new @ W_k, x_new @ W_v  # (1, d_k), (1, d_k), (1, d_v)
        axis = 1 if wrong_axis else 0
        K_new = torch.cat([K_cache, q if cache_query else k], dim=axis)
        V_new = torch.cat([V_cache, v], dim=axis)
        K_att, V_att = (K_cache, V_cache) if without_own_kv else (K_new, V_new)
        d = V_att.shape[-1] if scale_by_d_v else K_att.shape[-1]
        scores = q @ K_att.T if no_scale else q @ K_att.T / math.sqrt(d)  # (1, t + 1)
        weights = torch.softmax(scores, dim=0 if softmax_over_rows else -1)
        context = weights @ V_att  # (1, d_v)
        return (context[0] if return_vector else context), K_new, V_new

    return cached_step


def step_from_library(x_new, W_q, W_k, W_v, K_cache, V_cache):
    # rebuild the whole sequence's K and V and take the last row of the full causal attention
    K, V = torch.cat([K_cache, x_new @ W_k]), torch.cat([V_cache, x_new @ W_v])
    T = K.shape[0]
    Q = torch.cat([torch.zeros(T - 1, W_q.shape[1]), x_new @ W_q])  # earlier queries do not matter
    return scaled_dot_product_attention(Q, K, V, causal_mask(T))[-1:], K, V


def test_09_1_accepts_cached_step():
    assert_accepts("09.1", make_step())
    assert_accepts("09.1", step_from_library)


@pytest.mark.parametrize("flaw, fragment", [
    ("cache_query", "case 1 (the lecture's step: 'bright' joins a cache of 4 tokens, (4, 4) -> (5, 4)) is wrong"),
    ("no_scale", "case 1 (the lecture's step"),
    ("scale_by_d_v", "case 4 (d_k 3 != d_v 6, 7 cached tokens) is wrong"),
    ("wrong_axis", "raised RuntimeError"),  # (4, 4) and (1, 4) do not concatenate along the features
    ("without_own_kv", "case 1 (the lecture's step"),
    ("softmax_over_rows", "case 1 (the lecture's step"),
    ("return_vector", "expected shape (1, 4), got (4,)"),
])
def test_09_1_rejects(flaw, fragment):
    assert_rejects("09.1", make_step(**{flaw: True}), fragment)


def test_09_1_rejects_the_wrong_axis_even_when_the_shapes_fit():
    # with one cached token, (1, 4) and (1, 4) concatenate along the features into (1, 8)
    def wrong_axis_padded(x_new, W_q, W_k, W_v, K_cache, V_cache):
        if K_cache.shape[0] != 1:
            return make_step()(x_new, W_q, W_k, W_v, K_cache, V_cache)
        return make_step(wrong_axis=True)(x_new, W_q, W_k, W_v, K_cache, V_cache)

    assert_rejects("09.1", wrong_axis_padded, "case 3 (one cached token")


# --- 09.2: multi-head attention with a cache -------------------------------------------------------


def make_cached_mha(cache_query=False, unshifted_mask=False, no_mask_when_cached=False, wrong_axis=False,
                    no_scale=False, without_own_kv=False, old_caches_returned=False):
    """The right cached forward pass, or one with a mistake learners make."""

    class CachedMultiHeadAttention(MultiHeadAttention):
        def forward(self, x, k_cache=None, v_cache=None):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).split(self.d_out, dim=-1)
            q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)  # (B, H, T, d_h)
            start = 0 if k_cache is None else k_cache.shape[2]
            if cache_query:  # keeps every query too and attends with all of them
                self.q_cache = q if k_cache is None else torch.cat([self.q_cache, q], dim=2)
                q = self.q_cache
            axis = 1 if wrong_axis else 2
            k_all = k if k_cache is None else torch.cat([k_cache, k], dim=axis)
            v_all = v if v_cache is None else torch.cat([v_cache, v], dim=axis)
            k_att, v_att = (k_cache, v_cache) if (without_own_kv and k_cache is not None) else (k_all, v_all)
            T_q = q.shape[2]
            if unshifted_mask:
                mask = self.mask[:T, :T]
            elif no_mask_when_cached and k_cache is not None:
                mask = None
            else:
                mask = self.mask[k_att.shape[2] - T_q:k_att.shape[2], :k_att.shape[2]]
            scores = q @ k_att.transpose(-2, -1)
            if not no_scale:
                scores = scores / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf"))
            context = torch.softmax(scores, dim=-1) @ v_att  # (B, H, T_q, d_h)
            out = self.out_proj(self.merge_heads(context))
            if old_caches_returned and k_cache is not None:
                return out, k_cache, v_cache
            return out, k_all, v_all

    return CachedMultiHeadAttention


def test_09_2_accepts_cached_mha():
    assert_accepts("09.2", make_cached_mha())


@pytest.mark.parametrize("flaw, fragment", [
    ("cache_query", "case 1 (one token at a time from an empty cache: 5 tokens, d_in 8, 2 heads of 2) is wrong: "
                    "result 0: expected shape (1, 5, 4), got (1, 15, 4)"),
    ("unshifted_mask", "case 3 (prefill 3, then a chunk of 2 new tokens (the mask shifts by the cache), then 1) "
                       "raised RuntimeError"),
    ("no_mask_when_cached", "case 3 (prefill 3, then a chunk of 2 new tokens"),
    ("wrong_axis", "case 1 (one token at a time"),
    ("no_scale", "case 1 (one token at a time"),
    ("without_own_kv", "case 1 (one token at a time"),
    ("old_caches_returned", "case 1 (one token at a time"),
])
def test_09_2_rejects(flaw, fragment):
    assert_rejects("09.2", make_cached_mha(**{flaw: True}), fragment)


def test_09_2_rejects_a_function_and_renamed_attributes():
    assert_rejects("09.2", lambda x, k_cache=None, v_cache=None: (x, k_cache, v_cache), "pass your class itself")

    class Renamed(torch.nn.Module):
        def __init__(self, d_in, d_out, context_length, n_heads, dropout=0.0, qkv_bias=False):
            super().__init__()
            self.W_qkv = torch.nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
            self.out_proj = torch.nn.Linear(d_out, d_out)

        def forward(self, x, k_cache=None, v_cache=None):
            return self.out_proj(x), k_cache, v_cache

    assert_rejects("09.2", Renamed, "keep the attribute names")


# --- 09.3: the size of the cache --------------------------------------------------------------------


def size_right(n_layers, n_heads, head_dim, seq_len, batch, bytes_per_element):
    return n_layers * batch * seq_len * n_heads * head_dim * 2 * bytes_per_element


def test_09_3_accepts_size():
    assert_accepts("09.3", size_right)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda L, H, d_h, T, B, b: float(size_right(L, H, d_h, T, B, b)), "return an int"),
    (lambda L, H, d_h, T, B, b: size_right(L, H, d_h, T, B, b) / 1e9 * 1e9, "return an int"),
    (lambda L, H, d_h, T, B, b: L * B * T * H * d_h * b, "case 1 (the lecture's 30B model as stated"),  # K only
    (lambda L, H, d_h, T, B, b: L * T * H * d_h * 2 * b, "case 1 (the lecture's 30B model"),  # no batch
    (lambda L, H, d_h, T, B, b: L * B * T * H * d_h * 2 * 8 * b, "case 1 (the lecture's 30B model"),  # bits
    (lambda L, H, d_h, T, B, b: B * T * H * d_h * 2 * b, "case 1 (the lecture's 30B model"),  # one layer
])
def test_09_3_rejects(wrong, fragment):
    assert_rejects("09.3", wrong, fragment)

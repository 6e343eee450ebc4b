"""Lecture 12's checkers accept the right answers and reject the wrong answers learners write."""

import math

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects

# --- 12.1: absorbed scores ---------------------------------------------------------------------------


def scores_right(x, W_q, W_uK, c_kv, n_heads):
    d_h = W_q.shape[1] // n_heads
    heads = []
    for h in range(n_heads):
        cols = slice(h * d_h, (h + 1) * d_h)
        q_latent = x @ (W_q[:, cols] @ W_uK[:, cols].T)   # (T_q, d_c)
        heads.append(q_latent @ c_kv.T / math.sqrt(d_h))
    return torch.stack(heads)


def scores_batched(x, W_q, W_uK, c_kv, n_heads):  # the same with one einsum
    d, d_c = W_q.shape[0], W_uK.shape[0]
    folded = torch.einsum("dhk,chk->hdc", W_q.view(d, n_heads, -1), W_uK.view(d_c, n_heads, -1))
    return (x @ folded) @ c_kv.T / math.sqrt(W_q.shape[1] // n_heads)


def scores_naive(x, W_q, W_uK, c_kv, n_heads):  # expanding the keys is the same number
    q = (x @ W_q).view(x.shape[0], n_heads, -1).transpose(0, 1)
    k = (c_kv @ W_uK).view(c_kv.shape[0], n_heads, -1).transpose(0, 1)
    return q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])


def test_12_1_accepts():
    for answer in (scores_right, scores_batched, scores_naive):
        assert_accepts("12.1", answer)


def scores_across_heads(x, W_q, W_uK, c_kv, n_heads):  # W_q W_uK^T sums the heads' scores
    return x @ (W_q @ W_uK.T) @ c_kv.T / math.sqrt(W_q.shape[1] // n_heads)


def scores_across_heads_broadcast(x, W_q, W_uK, c_kv, n_heads):  # ... copied to every head
    return scores_across_heads(x, W_q, W_uK, c_kv, n_heads).expand(n_heads, -1, -1)


def scores_rows_of_W_uK(x, W_q, W_uK, c_kv, n_heads):  # head h's *rows* of W_uK: the transposed layout
    d_h = W_q.shape[1] // n_heads
    return torch.stack([x @ W_q[:, h * d_h:(h + 1) * d_h] @ W_uK[h * d_h:(h + 1) * d_h] @ c_kv.T
                        for h in range(n_heads)]) / math.sqrt(d_h)


def scores_block_untransposed(x, W_q, W_uK, c_kv, n_heads):  # W_q,h W_uK,h without ^T (square blocks)
    d_h = W_q.shape[1] // n_heads
    return torch.stack([x @ W_q[:, h * d_h:(h + 1) * d_h] @ W_uK[:, h * d_h:(h + 1) * d_h] @ c_kv.T
                        for h in range(n_heads)]) / math.sqrt(d_h)


def scores_no_scale(x, W_q, W_uK, c_kv, n_heads):
    return scores_right(x, W_q, W_uK, c_kv, n_heads) * math.sqrt(W_q.shape[1] // n_heads)


def scores_latent_scale(x, W_q, W_uK, c_kv, n_heads):  # 1/sqrt(d_c): the latent's width, not the head's
    return scores_no_scale(x, W_q, W_uK, c_kv, n_heads) / math.sqrt(c_kv.shape[-1])


@pytest.mark.parametrize("wrong, fragment", [
    (scores_across_heads, "expected shape (2, 1, 5), got (1, 5)"),
    (scores_across_heads_broadcast, "case 1 (the lecture's sizes: d 8, 2 heads of 2, latent 4 (W_uK square), "
                                    "new token vs 5 cached) is wrong"),
    (scores_rows_of_W_uK, "case 1 (the lecture's sizes"),
    (scores_block_untransposed, "mat1 and mat2 shapes cannot be multiplied"),
    (scores_no_scale, "case 1 (the lecture's sizes"),
    (scores_latent_scale, "case 1 (the lecture's sizes"),
])
def test_12_1_rejects(wrong, fragment):
    assert_rejects("12.1", wrong, fragment)


# --- 12.2: one absorbed decoding step ---------------------------------------------------------------


def make_decode(no_append=False, across_heads=False, no_scale=False, softmax_over_heads=False,
                old_cache=False, values_across_heads=False):
    """The right absorbed step, or one with a mistake learners make."""

    def step(x_new, c_cache, W_dKV, W_q, W_uK, W_uV, W_o, n_heads):
        H = n_heads
        d_h, d_v = W_q.shape[1] // H, W_uV.shape[1] // H
        c_all = torch.cat([c_cache, x_new @ W_dKV])                         # (T + 1, d_c)
        c_attn = c_cache if no_append else c_all
        if across_heads:
            q_latent = (x_new @ (W_q @ W_uK.T)).expand(H, -1, -1)          # (H, 1, d_c), all heads alike
        else:
            Wq_h = W_q.view(-1, H, d_h).transpose(0, 1)                     # (H, d, d_h)
            WuK_h = W_uK.view(-1, H, d_h).transpose(0, 1)                   # (H, d_c, d_h)
            q_latent = x_new @ (Wq_h @ WuK_h.transpose(1, 2))               # (H, 1, d_c)
        scores = q_latent @ c_attn.T                                        # (H, 1, T + 1)
        if not no_scale:
            scores = scores / math.sqrt(d_h)
        weights = torch.softmax(scores, dim=0 if softmax_over_heads else -1)
        context = weights @ c_attn                                          # (H, 1, d_c): latent context
        if values_across_heads:
            return (context.sum(0) @ W_uV @ W_o), c_all
        WuV_h = W_uV.view(-1, H, d_v).transpose(0, 1)                       # (H, d_c, d_v)
        Wo_h = W_o.view(H, d_v, -1)                                         # (H, d_v, d_out): head h's rows
        out = (context @ (WuV_h @ Wo_h)).sum(0)                             # (1, d_out)
        return out, (c_cache if old_cache else c_all)

    return step


def test_12_2_accepts():
    assert_accepts("12.2", make_decode())


@pytest.mark.parametrize("flaw, fragment", [
    ("no_append", "case 1 (the lecture's sizes: cache (4, 4) grows to (5, 4), d 8, 2 heads of 2) is wrong"),
    ("across_heads", "case 1 (the lecture's sizes"),
    ("no_scale", "case 1 (the lecture's sizes"),
    ("softmax_over_heads", "case 1 (the lecture's sizes"),
    ("old_cache", "expected shape (5, 4), got (4, 4)"),
    ("values_across_heads", "case 1 (the lecture's sizes"),
])
def test_12_2_rejects(flaw, fragment):
    assert_rejects("12.2", make_decode(**{flaw: True}), fragment)


# --- 12.3: cache elements ------------------------------------------------------------------------------


def elements_right(spec, seq_len, batch):
    return (spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * spec.n_layers * seq_len * batch


def test_12_3_accepts():
    assert_accepts("12.3", elements_right)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda spec, t, b: 2 * elements_right(spec, t, b), "case 1 (DeepSeek-V3, one token of one sequence) is wrong"),
    (lambda spec, t, b: spec.mla.kv_lora_rank * spec.n_layers * t * b, "case 1 (DeepSeek-V3"),
    (lambda spec, t, b: (spec.mla.kv_lora_rank + spec.n_heads * spec.mla.qk_rope_head_dim) * spec.n_layers * t * b,
     "case 1 (DeepSeek-V3"),
    (lambda spec, t, b: (spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * t * b, "case 1 (DeepSeek-V3"),
    (lambda spec, t, b: float(elements_right(spec, t, b)), "int"),
])
def test_12_3_rejects(wrong, fragment):
    assert_rejects("12.3", wrong, fragment)

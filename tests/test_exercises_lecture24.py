"""Lecture 24's checkers accept the right answers and reject the wrong answers learners write."""

import torch

from checker_tools import assert_accepts, assert_rejects

# --- 24.1: one MTP step ---------------------------------------------------------------------------


def right_step(module, embedding, h_prev, idx, k):
    n = h_prev.shape[1]
    emb = embedding(idx[:, k:k + n])                                     # Emb(t_{i+k})
    x = torch.cat([module.hnorm(h_prev), module.enorm(emb)], dim=-1)    # (B, n, 2d)
    return module.block(module.eh_proj(x))                              # (B, n, d)


def test_24_1_accepts():
    assert_accepts("24.1", right_step)

    def via_module(module, embedding, h_prev, idx, k):
        return module(h_prev, embedding(idx[:, k:k + h_prev.shape[1]]))

    assert_accepts("24.1", via_module)


def test_24_1_rejects_swapped_concatenation():
    def swapped(module, embedding, h_prev, idx, k):  # vLLM's [emb; hidden] order with the paper's weights
        emb = embedding(idx[:, k:k + h_prev.shape[1]])
        return module.block(module.eh_proj(torch.cat([module.enorm(emb), module.hnorm(h_prev)], dim=-1)))

    assert_rejects("24.1", swapped)


def test_24_1_rejects_missing_norm():
    def no_hnorm(module, embedding, h_prev, idx, k):
        emb = embedding(idx[:, k:k + h_prev.shape[1]])
        return module.block(module.eh_proj(torch.cat([h_prev, module.enorm(emb)], dim=-1)))

    def no_enorm(module, embedding, h_prev, idx, k):
        emb = embedding(idx[:, k:k + h_prev.shape[1]])
        return module.block(module.eh_proj(torch.cat([module.hnorm(h_prev), emb], dim=-1)))

    assert_rejects("24.1", no_hnorm)
    assert_rejects("24.1", no_enorm)


def test_24_1_rejects_token_off_by_one():
    def previous_token(module, embedding, h_prev, idx, k):  # t_{i+k-1} instead of t_{i+k}
        emb = embedding(idx[:, k - 1:k - 1 + h_prev.shape[1]])
        return module.block(module.eh_proj(torch.cat([module.hnorm(h_prev), module.enorm(emb)], dim=-1)))

    assert_rejects("24.1", previous_token)


def test_24_1_rejects_missing_block():
    def no_block(module, embedding, h_prev, idx, k):
        emb = embedding(idx[:, k:k + h_prev.shape[1]])
        return module.eh_proj(torch.cat([module.hnorm(h_prev), module.enorm(emb)], dim=-1))

    assert_rejects("24.1", no_block)


# --- 24.2: extra parameters -----------------------------------------------------------------------


def test_24_2_accepts():
    assert_accepts("24.2", lambda d, V, block, D: D * (2 * d * d + 2 * d + block))


def test_24_2_rejects_counting_shared_copies():
    assert_rejects("24.2", lambda d, V, block, D: D * (2 * d * d + 2 * d + block + 2 * V * d))


def test_24_2_rejects_square_projection():
    assert_rejects("24.2", lambda d, V, block, D: D * (d * d + 2 * d + block))


def test_24_2_rejects_one_module_or_no_norms():
    assert_rejects("24.2", lambda d, V, block, D: 2 * d * d + 2 * d + block)
    assert_rejects("24.2", lambda d, V, block, D: D * (2 * d * d + block))


def test_24_2_rejects_float():
    assert_rejects("24.2", lambda d, V, block, D: float(D * (2 * d * d + 2 * d + block)))

"""utils.mla (Lecture 12): latent projections, the per-head absorption algebra, the cache per token.

Checked against exact identities, PyTorch's own attention and the numbers of DeepSeek-V2 Table 1 /
Table 9 and DeepSeek-V3 as recorded in REFERENCE.md.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from utils.configs import get_config
from utils.mla import (LatentProjections, absorbed_output_weights, absorbed_query_weights, absorbed_scores,
                       equivalent_gqa_groups, mha_cache_elements, mla_cache_elements, per_head)


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def layer():
    torch.manual_seed(0)
    proj = LatentProjections(d_model=6, d_latent=4, n_heads=3, head_dim=2, v_head_dim=5).double()
    W_q, W_o = _rand(6, 3 * 2, seed=1), _rand(3 * 5, 7, seed=2)
    return proj, W_q, W_o


def test_lecture_shapes():
    proj = LatentProjections(d_model=8, d_latent=4, n_heads=2, head_dim=2)
    X = torch.randn(4, 8)
    C = proj.latent(X)
    assert tuple(C.shape) == (4, 4)
    assert tuple(proj.keys(C).shape) == (2, 4, 2) and tuple(proj.values(C).shape) == (2, 4, 2)
    assert tuple(proj.keys(proj.latent(torch.randn(3, 4, 8))).shape) == (3, 2, 4, 2)  # batched


def test_keys_are_per_head_column_blocks(layer):
    proj, _, _ = layer
    C = _rand(5, 4, seed=3)
    K = proj.keys(C)
    for h in range(3):
        torch.testing.assert_close(K[h], C @ proj.W_uK[:, 2 * h:2 * h + 2])
        torch.testing.assert_close(proj.values(C)[h], C @ proj.W_uV[:, 5 * h:5 * h + 5])
    torch.testing.assert_close(per_head(proj.W_uK, 3), torch.stack(proj.W_uK.split(2, dim=1)))


def test_absorbed_attention_equals_torch_attention(layer):
    proj, W_q, W_o = layer
    x = _rand(4, 6, seed=4)
    C = proj.latent(x)                                          # (T, d_c)
    q = (x @ W_q).view(4, 3, 2).transpose(0, 1)                 # (H, T, d_h)
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    reference = F.scaled_dot_product_attention(q, proj.keys(C), proj.values(C), attn_mask=mask)  # (H, T, d_v)
    reference = reference.transpose(0, 1).reshape(4, 15) @ W_o   # (T, d_out)
    scores = absorbed_scores(x, W_q, proj.W_uK, C, 3).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)                     # (H, T, T)
    absorbed = ((weights @ C) @ absorbed_output_weights(proj.W_uV, W_o, 3)).sum(0)
    torch.testing.assert_close(absorbed, reference)


def test_folding_across_heads_sums_the_heads_scores(layer):
    proj, W_q, _ = layer
    x, C = _rand(2, 6, seed=5), _rand(5, 4, seed=6)
    folded = absorbed_query_weights(W_q, proj.W_uK, 3)           # (H, d, d_c)
    assert tuple(folded.shape) == (3, 6, 4)
    torch.testing.assert_close(folded.sum(0), W_q @ proj.W_uK.T)  # across heads = the sum of the heads
    per_head_scores = absorbed_scores(x, W_q, proj.W_uK, C, 3)
    across = x @ (W_q @ proj.W_uK.T) @ C.T / math.sqrt(2)
    torch.testing.assert_close(per_head_scores.sum(0), across)
    assert (per_head_scores - across).abs().max() > 0.1          # ... and differs from every head's


def test_absorbed_output_weights_use_each_heads_rows(layer):
    proj, _, W_o = layer
    folded = absorbed_output_weights(proj.W_uV, W_o, 3)          # (H, d_c, d_out)
    for h in range(3):
        torch.testing.assert_close(folded[h], proj.W_uV[:, 5 * h:5 * h + 5] @ W_o[5 * h:5 * h + 5])
    torch.testing.assert_close(folded.sum(0), proj.W_uV @ W_o)


def test_deepseek_cache_numbers():  # REFERENCE.md, KV cache section
    v3 = get_config("DeepSeek-V3")
    assert mla_cache_elements(v3.mla.kv_lora_rank, v3.mla.qk_rope_head_dim) == 576
    assert mha_cache_elements(128, 128) == 32768
    assert mha_cache_elements(128, 128) / mla_cache_elements(512) == 64
    assert round(mha_cache_elements(128, 128) / mla_cache_elements(512, 64), 1) == 56.9
    assert mla_cache_elements(512, 64, n_layers=61) * 2 == 70272            # bytes per token in BF16
    assert equivalent_gqa_groups(4 * 128, 128 // 2, 128) == 2.25           # V2 Table 1
    assert mla_cache_elements(512, 64, n_layers=27) == 15552                # V2 Table 9: 15.6K
    assert mla_cache_elements(512, 64, n_layers=60) == 34560                # 34.6K
    assert mha_cache_elements(16, 128, n_layers=27) == 110592               # 110.6K


@pytest.mark.parametrize("call, fragment", [
    (lambda: per_head(torch.zeros(4, 6), 4), "cannot be split into n_heads=4"),
    (lambda: per_head(torch.zeros(4, 6), 0), "n_heads must be a positive integer"),
    (lambda: absorbed_query_weights(torch.zeros(8, 4), torch.zeros(3, 4).T, 2), "same number of columns"),
    (lambda: absorbed_output_weights(torch.zeros(4, 6), torch.zeros(4, 8), 2), "as many columns"),
    (lambda: LatentProjections(8, 0, 2, 2), "d_latent must be a positive integer"),
    (lambda: LatentProjections(8, 4, 2, 2).latent(torch.zeros(3, 7)), "d_model=8"),
    (lambda: LatentProjections(8, 4, 2, 2).keys(torch.zeros(3, 8)), "pass C_KV = latent(x)"),
    (lambda: mla_cache_elements(0), "d_latent must be a positive integer"),
    (lambda: mla_cache_elements(512, -64), "rope_dim must be a non-negative integer"),
    (lambda: mha_cache_elements(128, 128, n_layers=0), "n_layers must be a positive integer"),
])
def test_bad_input_says_what_to_change(call, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        call()

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


# --- Lecture 13: the layer, its latent cache, GPTModel and generate ----------------------------------

from utils.generation import generate  # noqa: E402
from utils.gpt import GPTConfig, GPTModel  # noqa: E402
from utils.kv_cache import (AttentionShape, KVCache, LatentCache, LatentShape, kv_cache_bytes,  # noqa: E402
                            kv_elements_per_token)
from utils.mla import MultiHeadLatentAttention, mla_attention  # noqa: E402


def _pair(d_in=8, d_out=8, ctx=16, H=2, d_c=4, seed=0):
    torch.manual_seed(seed)
    naive = MultiHeadLatentAttention(d_in, d_out, ctx, H, d_c).double()
    absorbed = MultiHeadLatentAttention(d_in, d_out, ctx, H, d_c, absorb=True).double()
    absorbed.load_state_dict(naive.state_dict())
    return naive, absorbed


@pytest.mark.parametrize("sizes", [(8, 8, 16, 2, 4), (6, 12, 10, 3, 5), (10, 8, 9, 4, 16), (5, 4, 7, 1, 2)])
def test_absorbed_equals_naive(sizes):
    naive, absorbed = _pair(*sizes)
    x = _rand(3, sizes[2] - 2, sizes[0], seed=5)
    out_n, w_n = naive(x, return_weights=True)
    out_a, w_a = absorbed(x, return_weights=True)
    torch.testing.assert_close(out_a, out_n, atol=1e-5, rtol=0)
    torch.testing.assert_close(w_a, w_n, atol=1e-5, rtol=0)
    assert tuple(out_n.shape) == (3, sizes[2] - 2, sizes[1]) and tuple(w_n.shape) == (3, sizes[3], sizes[2] - 2, sizes[2] - 2)


def test_naive_path_is_torch_attention_on_expanded_keys():
    naive, _ = _pair(6, 12, 10, 3, 5)
    x = _rand(2, 7, 6, seed=6)
    c = x @ naive.proj.W_dKV
    q = (x @ naive.W_q.weight.T).view(2, 7, 3, 4).transpose(1, 2)
    k, v = [(c @ W).view(2, 7, 3, 4).transpose(1, 2) for W in (naive.proj.W_uK, naive.proj.W_uV)]
    ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 7, 12)
    torch.testing.assert_close(naive(x), naive.out_proj(ctx))


@pytest.mark.parametrize("absorb", [False, True])
def test_cache_holds_only_the_latent_and_matches_no_cache(absorb):
    naive, absorbed = _pair(seed=1)
    layer = absorbed if absorb else naive
    x = _rand(2, 9, 8, seed=7)
    cache = layer.new_cache(2)
    assert isinstance(cache, LatentCache) and tuple(cache.c.shape) == (2, 16, 4)
    steps = [layer(x[:, :4], cache=cache)] + [layer(x[:, t:t + 1], cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), naive(x), atol=1e-5, rtol=0)
    assert cache.position == 9 and tuple(cache.latent.shape) == (2, 9, 4)
    torch.testing.assert_close(cache.latent, x @ layer.proj.W_dKV)
    assert cache.nbytes() == 2 * 16 * 4 * 8  # float64


def test_gpt_with_mla_cached_generation_equals_uncached():
    cfg = GPTConfig(vocab_size=40, context_length=12, d_model=16, n_heads=4, n_layers=2, dropout=0.0)
    for absorb in (False, True):
        torch.manual_seed(3)
        model = GPTModel(cfg, attention=mla_attention(8, absorb=absorb)).eval()
        idx = torch.randint(0, 40, (2, 3), generator=torch.Generator().manual_seed(4))
        assert torch.equal(generate(model, idx, 15, use_cache=True), generate(model, idx, 15))  # past the context
        cache = KVCache.for_model(model, batch_size=2)
        seq = generate(model, idx, 8)
        with torch.no_grad():
            full = model(seq)
            steps = [model(seq[:, :3], cache=cache)] + [model(seq[:, t:t + 1], cache=cache) for t in range(3, 11)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
        assert cache.nbytes() == 2 * 2 * 12 * 8 * 4  # layers * batch * capacity * d_c * fp32


def test_cache_bytes_mla_vs_mha():
    assert kv_elements_per_token(AttentionShape(1, 2, 4)) == 16 and kv_elements_per_token(LatentShape(1, 4)) == 4
    assert kv_elements_per_token(AttentionShape(1, 8, 64)) == 1024 == 4 * kv_elements_per_token(LatentShape(1, 256))
    assert kv_cache_bytes(LatentShape(1, 256), 100, dtype=torch.float32) == 256 * 100 * 4
    assert kv_elements_per_token(LatentShape(1, 512, 64)) == 576 == mla_cache_elements(512, 64)
    assert kv_elements_per_token(get_config("DeepSeek-V3")) == 61 * 576


def test_bad_input():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MultiHeadLatentAttention(8, 10, 16, 4, 4)
    with pytest.raises(ValueError, match="d_latent must be a positive integer"):
        MultiHeadLatentAttention(8, 8, 16, 2, 0)
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadLatentAttention(8, 8, 16, 2, 4, dropout=1.0)
    with pytest.raises(ValueError, match="mla_attention|d_latent"):
        mla_attention(-1)
    layer = MultiHeadLatentAttention(8, 8, 6, 2, 4)
    with pytest.raises(ValueError, match="d_in=8"):
        layer(torch.randn(1, 3, 7))
    with pytest.raises(ValueError, match="batch axis"):
        layer(torch.randn(3, 8))
    cache = layer.new_cache(1)
    layer(torch.randn(1, 5, 8), cache=cache)
    with pytest.raises(ValueError, match="context_length"):
        layer(torch.randn(1, 2, 8), cache=cache)
    with pytest.raises(ValueError, match="batch_size"):
        layer(torch.randn(2, 1, 8), cache=layer.new_cache(1))
    with pytest.raises(ValueError, match="capacity"):
        layer.new_cache(1, capacity=7)
    with pytest.raises(ValueError, match="d_latent"):
        LatentShape(2, 0)


def test_heads_as_rows_against_a_shared_tensor_equal_broadcasting():
    from utils.mla import mix_shared, scores_against_shared
    g = torch.Generator().manual_seed(0)
    q, shared = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 7, 5, generator=g)
    torch.testing.assert_close(scores_against_shared(q, shared), q @ shared.unsqueeze(1).transpose(-2, -1))
    w = torch.softmax(torch.randn(2, 3, 4, 7, generator=g), -1)
    torch.testing.assert_close(mix_shared(w, shared), w @ shared.unsqueeze(1))

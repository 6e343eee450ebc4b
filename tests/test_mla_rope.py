"""DeepSeek's MLA with decoupled RoPE (utils.mla_rope, Lecture 17) against transformers' DeepseekV3Attention."""

import math

import pytest
import torch

from utils.generation import generate
from utils.gpt import GPTConfig, GPTModel
from utils.kv_cache import LatentShape, kv_elements_per_token
from utils.mla_rope import (DeepSeekMLA, DeepSeekMLAConfig, deepseek_mla_attention, rope_matrix,
                            state_dict_from_transformers, state_dict_to_transformers)
from utils.positional import apply_rope, rope_cache

transformers = pytest.importorskip("transformers")
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_v3  # noqa: E402


def hf_attention(q_lora_rank, seed=0, hidden=48, heads=4, kv_lora=24, nope=12, rope=8, v=10):
    config = transformers.DeepseekV3Config(
        vocab_size=64, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1, num_attention_heads=heads,
        num_key_value_heads=heads, q_lora_rank=q_lora_rank, kv_lora_rank=kv_lora, qk_nope_head_dim=nope,
        qk_rope_head_dim=rope, v_head_dim=v, max_position_embeddings=64, attention_bias=False)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    attn = hf_v3.DeepseekV3Attention(config, layer_idx=0).eval()
    with torch.no_grad():
        for p in attn.parameters():  # weights of order 1/sqrt(fan-in), norm gains away from 1
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.dim() == 2 else 0.3) + (p.dim() == 1))
    return config, attn


def hf_forward(config, attn, x):
    B, T, _ = x.shape
    cos, sin = hf_v3.DeepseekV3RotaryEmbedding(config)(x, torch.arange(T)[None].expand(B, T))
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]  # (1, 1, T, T): causal, additive
    with torch.no_grad():
        return attn(x, (cos, sin), mask)[0]


def ours_from(config, attn, absorb=False):
    cfg = DeepSeekMLAConfig.from_transformers(config, absorb=absorb)
    layer = DeepSeekMLA(cfg).eval()
    layer.load_state_dict(state_dict_from_transformers(attn.state_dict(), cfg))
    return layer


@pytest.mark.parametrize("q_lora_rank", [None, 20])
@pytest.mark.parametrize("absorb", [False, True])
def test_parity_with_transformers(q_lora_rank, absorb):
    config, attn = hf_attention(q_lora_rank)
    x = torch.randn(2, 9, 48, generator=torch.Generator().manual_seed(1))
    ours = ours_from(config, attn, absorb)
    with torch.no_grad():
        diff = (ours(x) - hf_forward(config, attn, x)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("q_lora_rank", [None, 20])
def test_parity_with_transformers_cache_offset(q_lora_rank):
    """Prefill 5 tokens, then 3 single-token steps: positions 5, 6, 7 as in cached decoding, both libraries."""
    config, attn = hf_attention(q_lora_rank, seed=3)
    x = torch.randn(1, 8, 48, generator=torch.Generator().manual_seed(2))
    rotary = hf_v3.DeepseekV3RotaryEmbedding(config)
    for absorb in (False, True):
        ours = ours_from(config, attn, absorb)
        cache, hf_cache = ours.new_cache(1), transformers.DynamicCache(config=config)
        for start, end in ((0, 5), (5, 6), (6, 7), (7, 8)):
            chunk = x[:, start:end]
            pos = torch.arange(start, end)[None]
            mask = torch.full((end - start, end), float("-inf")).triu(start + 1)[None, None]
            with torch.no_grad():
                theirs = attn(chunk, rotary(chunk, pos), mask, cache=hf_cache)[0]
                mine = ours(chunk, cache=cache)
            assert (mine - theirs).abs().max().item() <= 1e-5
        assert cache.latent.shape == (1, 8, 24 + 8)


@pytest.mark.parametrize("q_lora_rank", [None, 20])
def test_state_dict_round_trip(q_lora_rank):
    config, attn = hf_attention(q_lora_rank)
    cfg = DeepSeekMLAConfig.from_transformers(config)
    back = state_dict_to_transformers(state_dict_from_transformers(attn.state_dict(), cfg), cfg)
    assert set(back) == set(attn.state_dict())
    for k, v in attn.state_dict().items():
        torch.testing.assert_close(back[k], v, rtol=0, atol=0)


def test_absorbed_equals_naive_with_cache():
    cfg = DeepSeekMLAConfig(d_model=32, n_heads=4, kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=4,
                            v_head_dim=5, q_lora_rank=10, context_length=16)
    torch.manual_seed(0)
    naive = DeepSeekMLA(cfg).eval()
    absorbed = DeepSeekMLA(DeepSeekMLAConfig(**{**cfg.__dict__, "absorb": True})).eval()
    absorbed.load_state_dict(naive.state_dict())
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        torch.testing.assert_close(absorbed(x), naive(x), rtol=0, atol=1e-5)
        cache, outs = absorbed.new_cache(2), []
        for s, e in ((0, 4), (4, 5), (5, 8), (8, 10)):
            outs.append(absorbed(x[:, s:e], cache=cache))
        torch.testing.assert_close(torch.cat(outs, 1), naive(x), rtol=0, atol=1e-5)


def test_one_scale_over_the_concatenated_score():
    """The score is (q_C.k_C + q_R.k_R) / sqrt(d_h + d_h^R): the same as one concatenated dot product."""
    cfg = DeepSeekMLAConfig(d_model=16, n_heads=2, kv_lora_rank=8, qk_nope_head_dim=6, qk_rope_head_dim=4,
                            v_head_dim=6, context_length=8)
    torch.manual_seed(1)
    layer = DeepSeekMLA(cfg)
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        _, weights = layer(x, return_weights=True)
        q_c, q_r = layer.queries(x, 0)
        c_kv, k_r = layer.latents(x, 0)
        k_c = layer._heads(layer.W_UK(c_kv))
        q = torch.cat([q_c, q_r], -1)
        k = torch.cat([k_c, k_r.unsqueeze(1).expand(-1, 2, -1, -1)], -1)
        ref = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(10)).masked_fill(layer.mask[:5, :5], -math.inf), -1)
    torch.testing.assert_close(weights, ref)
    assert layer.scale == 1 / math.sqrt(10)


def test_rope_breaks_naive_absorption():
    """x_m W_q R_m (c_n W_uK R_n)^T = x_m W_q R_m R_n^T W_uK^T c_n^T: the folded middle depends on (m, n)."""
    g = torch.Generator().manual_seed(0)
    W_q, W_uK, x, c = (torch.randn(8, 4, generator=g), torch.randn(3, 4, generator=g),
                       torch.randn(1, 8, generator=g), torch.randn(1, 3, generator=g))
    folded = {(m, n): W_q @ rope_matrix(m, 4) @ rope_matrix(n, 4).T @ W_uK.T for m, n in ((3, 1), (5, 3), (5, 1))}
    cos, sin = rope_cache(8, 4)
    for (m, n), W in folded.items():  # each pair's own fold is exact ...
        q = apply_rope(x @ W_q, cos, sin, positions=torch.tensor([m]))
        k = apply_rope(c @ W_uK, cos, sin, positions=torch.tensor([n]))
        torch.testing.assert_close(x @ W @ c.T, q @ k.T)
    torch.testing.assert_close(folded[3, 1], folded[5, 3])          # ... it depends on m - n only,
    assert (folded[5, 1] - folded[3, 1]).abs().max() > 0.1           # so no single matrix serves all pairs
    torch.testing.assert_close(rope_matrix(3, 4) @ rope_matrix(3, 4).T, torch.eye(4))


def test_cache_elements_v3():
    cfg = DeepSeekMLAConfig.v3()
    assert cfg.cache_elements_per_token() == 576 == kv_elements_per_token(LatentShape(1, 512, 64))
    assert 2 * cfg.n_heads * cfg.qk_nope_head_dim == 32_768


def test_cached_equals_uncached_generation():
    torch.manual_seed(0)
    gcfg = GPTConfig(vocab_size=50, context_length=24, d_model=32, n_heads=4, n_layers=2, dropout=0.0)
    for absorb in (False, True):
        torch.manual_seed(0)
        model = GPTModel(gcfg, attention=deepseek_mla_attention(12, 4, q_lora_rank=16, absorb=absorb)).eval()
        idx = torch.tensor([[1, 5, 7, 2]])
        slow = generate(model, idx, max_new_tokens=10, use_cache=False)
        fast = generate(model, idx, max_new_tokens=10, use_cache=True)
        assert torch.equal(slow, fast)
        cache = model.new_cache(1)
        assert cache.layers[0].c.shape == (1, 24, 16)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(qk_rope_head_dim=7), "must be even"), (dict(qk_rope_head_dim=0), "positive integer"),
    (dict(kv_lora_rank=0), "positive integer"), (dict(q_lora_rank=0), "q_lora_rank"),
    (dict(n_heads=2.5), "positive integer"), (dict(rope_theta=1.0), "rope_theta"),
])
def test_bad_config(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DeepSeekMLAConfig(**kwargs)


def test_bad_input():
    layer = DeepSeekMLA(DeepSeekMLAConfig(context_length=8))
    with pytest.raises(ValueError, match="d_model=64"):
        layer(torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="context_length=8"):
        layer(torch.randn(1, 9, 64))
    cache = layer.new_cache(1)
    layer(torch.randn(1, 6, 64), cache=cache)
    with pytest.raises(ValueError, match="6 cached"):
        layer(torch.randn(1, 3, 64), cache=cache)
    with pytest.raises(ValueError, match="capacity"):
        layer.new_cache(1, capacity=9)
    config, _ = hf_attention(None)
    config.rope_interleave = False
    with pytest.raises(ValueError, match="rope_interleave=True"):
        DeepSeekMLAConfig.from_transformers(config)

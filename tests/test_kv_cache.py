"""KV cache (Lecture 09) with MHA, MQA and GQA (Lectures 10-11): the cache object, cached
forward passes and generation against the uncached model, and the cache-size formula."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from utils.attention import GroupedQueryAttention, MultiHeadAttention, MultiQueryAttention
from utils.configs import get_config
from utils.generation import generate
from utils.gpt import GPTConfig, GPTModel
from utils.kv_cache import (AttentionShape, KVCache, LayerKVCache, format_bytes, kv_cache_bytes,
                            kv_elements_per_token)

TOL = dict(atol=1e-5, rtol=1e-5)
BASE = GPTConfig(vocab_size=40, context_length=12, d_model=24, n_heads=4, n_layers=2, dropout=0.1)
KINDS = {"MHA": None, "GQA": 2, "MQA": 1}


def _model(kind="MHA", use_sdpa=False, **overrides) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(replace(BASE, n_kv_groups=KINDS[kind], use_sdpa=use_sdpa, **overrides))


VARIANTS = [(kind, sdpa) for kind in KINDS for sdpa in (False, True)]
IDS = [f"{kind}{'-sdpa' if sdpa else ''}" for kind, sdpa in VARIANTS]


# --- the model picks the attention the config asks for ----------------------------------------

def test_config_selects_attention_type():
    assert type(_model("MHA").blocks[0].attn) is MultiHeadAttention
    assert type(_model("MQA").blocks[0].attn) is MultiQueryAttention
    gqa = _model("GQA").blocks[0].attn
    assert type(gqa) is GroupedQueryAttention and gqa.n_kv_groups == 2
    assert type(GPTModel(replace(BASE, n_kv_groups=4)).blocks[0].attn) is MultiHeadAttention


# --- cached forward passes: same logits as the full sequence ------------------------------------

@pytest.mark.parametrize("kind, use_sdpa", VARIANTS, ids=IDS)
def test_cached_logits_match_full_forward(kind, use_sdpa):
    model = _model(kind, use_sdpa).eval()
    idx = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    full = model(idx)  # (2, 12, 40)
    cache = model.new_cache(batch_size=2)
    pieces, start = [], 0
    for size in (5, 1, 1, 3, 2):  # a prefill, single tokens, then chunks
        pieces.append(model(idx[:, start:start + size], cache=cache))
        start += size
        assert cache.position == start
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)


@pytest.mark.parametrize("kind, use_sdpa", VARIANTS, ids=IDS)
def test_attention_layer_with_cache_matches_full_sequence(kind, use_sdpa):
    torch.manual_seed(0)
    layer = GroupedQueryAttention(8, 12, 10, 6, {"MHA": 6, "GQA": 3, "MQA": 1}[kind], use_sdpa=use_sdpa).eval()
    x = torch.randn(3, 10, 8)
    cache = layer.new_cache(batch_size=3)
    out = torch.cat([layer(x[:, :4], cache=cache), layer(x[:, 4:5], cache=cache), layer(x[:, 5:], cache=cache)], 1)
    torch.testing.assert_close(out, layer(x), **TOL)
    assert cache.keys.shape == (3, layer.n_kv_groups, 10, 2)  # the cache holds K/V before the group repeat


def test_cached_weights_cover_cache_and_new_tokens():
    torch.manual_seed(0)
    layer = GroupedQueryAttention(8, 8, 10, 4, 2).eval()
    x = torch.randn(1, 7, 8)
    cache = layer.new_cache(1)
    layer(x[:, :5], cache=cache)
    _, weights = layer(x[:, 5:], return_weights=True, cache=cache)  # 2 new queries over 7 keys
    _, full = layer(x, return_weights=True)
    assert weights.shape == (1, 4, 2, 7)
    torch.testing.assert_close(weights, full[:, :, 5:], **TOL)
    assert (weights[..., 0, 6] == 0).all()  # token 5 does not see token 6


# --- generation with the cache: the same tokens as without it -----------------------------------

def _both(model, prompt, n, **kw):
    return generate(model, prompt, n, **kw), generate(model, prompt, n, use_cache=True, **kw)


@pytest.mark.parametrize("kind, use_sdpa", VARIANTS, ids=IDS)
def test_greedy_generation_identical_with_cache(kind, use_sdpa):
    model = _model(kind, use_sdpa)
    plain, cached = _both(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), 8)  # stays inside the context
    assert torch.equal(plain, cached) and cached.shape == (2, 11)


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_generation_identical_with_cache_and_same_seed(kind):
    model = _model(kind)
    prompt = torch.tensor([[7, 8]])
    kw = dict(temperature=1.5, top_k=20)
    plain = generate(model, prompt, 20, generator=torch.Generator().manual_seed(5), **kw)
    cached = generate(model, prompt, 20, generator=torch.Generator().manual_seed(5), use_cache=True, **kw)
    assert torch.equal(plain, cached)
    other = generate(model, prompt, 20, generator=torch.Generator().manual_seed(6), use_cache=True, **kw)
    assert not torch.equal(cached, other)  # sampling really samples


@pytest.mark.parametrize("kind, use_sdpa", VARIANTS, ids=IDS)
def test_generation_past_context_length_rebuilds_and_stays_identical(kind, use_sdpa):
    model = _model(kind, use_sdpa)
    plain, cached = _both(model, torch.tensor([[3, 1, 4, 1, 5]]), 25)  # 5 + 25 = 30 > 12
    assert torch.equal(plain, cached) and cached.shape == (1, 30)
    g = lambda: torch.Generator().manual_seed(2)
    plain, cached = _both(model, torch.tensor([[3, 1, 4, 1, 5]]), 25, temperature=1.0, generator=g())
    assert torch.equal(plain, generate(model, torch.tensor([[3, 1, 4, 1, 5]]), 25, temperature=1.0,
                                       generator=g(), use_cache=True))


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_longer_than_context(kind):
    model = _model(kind)
    prompt = torch.randint(0, 40, (2, 20), generator=torch.Generator().manual_seed(3))
    plain, cached = _both(model, prompt, 6)
    assert torch.equal(plain, cached) and torch.equal(cached[:, :20], prompt)


def test_prompt_exactly_the_context_then_one_step_past():
    model = _model("GQA")
    prompt = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(4))
    for n in (1, 2, 3):
        plain, cached = _both(model, prompt, n)
        assert torch.equal(plain, cached)


def test_one_cache_serves_two_generate_calls_in_a_row():
    model = _model("GQA")
    cache = model.new_cache(batch_size=1)
    first = generate(model, torch.tensor([[1, 2, 3]]), 15, cache=cache)  # runs past the context
    assert cache.position == 12
    second = generate(model, torch.tensor([[9]]), 5, cache=cache)  # the pointer must start again at 0
    assert torch.equal(first, generate(model, torch.tensor([[1, 2, 3]]), 15))
    assert torch.equal(second, generate(model, torch.tensor([[9]]), 5))
    assert cache.position == 5  # prefill of 1 token + 4 single steps


def test_generation_stops_at_eos_with_cache():
    model = _model("MQA")
    first = int(generate(model, torch.tensor([[1, 2]]), 1)[0, -1])
    assert generate(model, torch.tensor([[1, 2]]), 5, eos_id=first, use_cache=True).shape == (1, 3)


def test_cached_generation_restores_training_mode():
    model = _model("MHA").train()
    generate(model, torch.tensor([[1]]), 3, use_cache=True)
    assert model.training


def test_zero_new_tokens_returns_the_prompt():
    model = _model("MHA")
    prompt = torch.tensor([[1, 2]])
    assert torch.equal(generate(model, prompt, 0, use_cache=True), prompt)


# --- the cache object ---------------------------------------------------------------------------

def test_cache_is_preallocated_and_filled_in_place():
    cache = LayerKVCache(batch_size=2, n_kv_heads=3, capacity=6, head_dim=4)
    k_ptr, v_ptr = cache.k.data_ptr(), cache.v.data_ptr()
    k1, v1 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    k2, v2 = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    cache.append(k1, v1)
    keys, values = cache.append(k2, v2)
    assert cache.position == 5 and keys.shape == (2, 3, 5, 4)
    torch.testing.assert_close(keys, torch.cat([k1, k2], 2))
    torch.testing.assert_close(values, torch.cat([v1, v2], 2))
    assert cache.k.data_ptr() == k_ptr and cache.v.data_ptr() == v_ptr and keys.data_ptr() == k_ptr
    assert cache.nbytes() == 2 * 2 * 3 * 6 * 4 * 4
    cache.reset()
    assert cache.position == 0 and cache.keys.shape == (2, 3, 0, 4)


def test_model_cache_has_one_layer_per_block_sized_by_kv_heads():
    for kind, groups in (("MHA", 4), ("GQA", 2), ("MQA", 1)):
        cache = _model(kind).new_cache(batch_size=3)
        assert len(cache) == 2 and cache.capacity == 12 and cache.batch_size == 3
        assert cache.layers[0].k.shape == (3, groups, 12, 6)
        assert cache.nbytes() == kv_cache_bytes(replace(BASE, n_kv_groups=KINDS[kind]), 12, 3, torch.float32)


def test_cache_refuses_to_grow_past_capacity():
    cache = LayerKVCache(1, 2, capacity=4, head_dim=3)
    cache.append(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"full: it holds 3 of 4 tokens.*larger capacity"):
        cache.append(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 3))
    assert cache.position == 3  # nothing was written


def test_model_refuses_to_run_the_cache_past_the_context():
    model = _model("MHA").eval()
    cache = model.new_cache()
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache.reset()"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_cache_with_a_different_batch_size_raises():
    model = _model("GQA").eval()
    cache = model.new_cache(batch_size=2)
    with pytest.raises(ValueError, match="batch size 2.*batch_size=3"):
        model(torch.zeros(3, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"batch size 2.*new_cache\(1\)"):
        generate(model, torch.tensor([[1, 2]]), 3, cache=cache)


@pytest.mark.parametrize("make, message", [
    (lambda: LayerKVCache(0, 2, 4, 3), "batch_size must be a positive integer"),
    (lambda: _model("MHA").new_cache(capacity=13), r"capacity must be an integer in \[1, context_length=12\]"),
    (lambda: MultiHeadAttention(8, 8, 6, 2).new_cache(1, capacity=7), "capacity 7 exceeds context_length=6"),
])
def test_bad_cache_construction_says_what_to_change(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_heads_or_dtype_raise():
    cache = LayerKVCache(1, 2, 4, 3)
    with pytest.raises(ValueError, match="2 K/V heads of width 3"):
        cache.append(torch.zeros(1, 4, 1, 3), torch.zeros(1, 4, 1, 3))
    with pytest.raises(ValueError, match="float32"):
        cache.append(torch.zeros(1, 2, 1, 3, dtype=torch.float64), torch.zeros(1, 2, 1, 3, dtype=torch.float64))


def test_a_skipped_layer_is_detected():
    cache = _model("MHA").new_cache()
    cache.layers[0].append(torch.zeros(1, 4, 2, 6), torch.zeros(1, 4, 2, 6))
    with pytest.raises(RuntimeError, match="different numbers of tokens"):
        cache.position


class _NoCache(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x):
        return self.proj(x)


class _LearnerMHA(MultiHeadAttention):  # an exercise-style subclass whose forward knows no cache
    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize("attention", [_NoCache, lambda cfg: _LearnerMHA(cfg.d_model, cfg.d_model,
                                                                          cfg.context_length, cfg.n_heads)])
def test_use_cache_with_a_cacheless_attention_raises(attention):
    torch.manual_seed(0)
    model = GPTModel(BASE, attention=attention)
    assert generate(model, torch.tensor([[1, 2]]), 3).shape == (1, 5)  # uncached generation still works
    with pytest.raises(ValueError, match="no KV-cache support.*use_cache=False"):
        generate(model, torch.tensor([[1, 2]]), 3, use_cache=True)


# --- cache size (Lectures 09-11, DeepSeek-V2 Table 1) -------------------------------------------

GiB, MiB = 2 ** 30, 2 ** 20


def test_lecture_30b_example_is_180_gb():
    shape = AttentionShape(n_layers=48, n_heads=56, head_dim=128)  # d_model 7168
    assert kv_cache_bytes(shape, seq_len=1024, batch=128) == 2 * 2 * 48 * 7168 * 1024 * 128 == 180_388_626_432
    assert format_bytes(180_388_626_432) == "180.4 GB"


def test_llama3_gqa_cache():
    l8, l70 = get_config("Llama-3-8B"), get_config("Llama-3-70B")
    assert kv_cache_bytes(l8, 1, dtype=torch.bfloat16) == 2 * 32 * 8 * 128 * 2 == 131_072  # 128 KiB per token
    assert kv_cache_bytes(l70, 1, dtype=torch.bfloat16) == 327_680  # 320 KiB per token
    assert kv_cache_bytes(l8, 8192) == 1 * GiB
    assert kv_cache_bytes(l70, 8192) == 2.5 * GiB
    mha_8b = kv_cache_bytes(replace(l8, n_kv_heads=None), 8192)
    assert mha_8b == 4 * kv_cache_bytes(l8, 8192)  # 32 query heads in 8 groups


def test_gpt3_mha_vs_mqa():
    gpt3 = get_config("GPT-3 175B")
    mha = kv_cache_bytes(gpt3, 1024)
    mqa = kv_cache_bytes(replace(gpt3, n_kv_heads=1), 1024)
    assert mha == 4.5 * GiB and mqa == 48 * MiB and mha == 96 * mqa
    assert (format_bytes(mha, binary=True), format_bytes(mqa, binary=True)) == ("4.5 GiB", "48.0 MiB")


def test_deepseek_v3_sized_mha_at_100k_tokens():
    mha = AttentionShape(n_layers=61, n_heads=128, head_dim=128)
    assert kv_elements_per_token(mha) == 61 * 32_768
    assert kv_cache_bytes(mha, 1, dtype=torch.bfloat16) == 3_997_696  # about 4 MB per token (REFERENCE.md)
    assert kv_cache_bytes(mha, 100_000) == 399_769_600_000  # about 400 GB
    v3 = get_config("DeepSeek-V3")  # MLA caches the latent 512 + the RoPE key 64 (Lecture 13)
    assert kv_elements_per_token(v3) == 61 * 576 and kv_elements_per_token(mha) == 61 * 576 * 32_768 // 576
    assert kv_cache_bytes(v3, 100_000) == 61 * 576 * 100_000 * 2


def test_formula_for_mha_gqa_mqa_and_v2_table9():
    assert kv_elements_per_token(AttentionShape(27, 16, 128)) == 110_592  # V2 Table 9: MHA 110.6K
    for groups, kind in ((16, "MHA"), (4, "GQA"), (1, "MQA")):
        shape = AttentionShape(27, 16, 128, n_kv_heads=groups)
        assert shape.kind == kind
        assert kv_cache_bytes(shape, 100, batch=3, dtype=torch.float32) == 27 * 3 * 100 * groups * 128 * 2 * 4
    assert kv_cache_bytes(AttentionShape(2, 4, 8), 10, dtype=1) * 2 == kv_cache_bytes(AttentionShape(2, 4, 8), 10)


def test_cache_bytes_from_gpt_config():
    cfg = GPTConfig(d_model=768, n_heads=12, n_layers=12)
    assert kv_cache_bytes(cfg, 1024, dtype=torch.float32) == 12 * 1024 * 768 * 2 * 4
    assert kv_cache_bytes(replace(cfg, n_kv_groups=3), 1024, dtype=torch.float32) == 12 * 1024 * 192 * 2 * 4


@pytest.mark.parametrize("call, message", [
    (lambda: kv_cache_bytes(AttentionShape(2, 4, 8), 10, dtype="fp16"), "torch dtype or a positive number"),
    (lambda: kv_cache_bytes(AttentionShape(2, 4, 8), -1), "seq_len"),
    (lambda: AttentionShape(2, 8, 16, n_kv_heads=3), r"divisible by n_kv_heads=3.*\[1, 2, 4, 8\]"),
    (lambda: GPTConfig(n_heads=12, n_kv_groups=5), r"not divisible by n_kv_groups=5.*\[1, 2, 3, 4, 6, 12\]"),
])
def test_bad_size_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()

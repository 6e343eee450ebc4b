"""Attention (Lectures 04-11) against PyTorch's own implementations and exact identities."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.attention import (CausalAttention, GroupedQueryAttention, MultiHeadAttention, MultiHeadAttentionWrapper,
                             MultiQueryAttention, SelfAttention, causal_mask, dot_product_context,
                             scaled_dot_product_attention)

TOL = dict(atol=1e-5, rtol=1e-5)


def test_dot_product_context_is_a_weighted_sum():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    weights, context = dot_product_context(x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(context[2], weights[2, 0] * x[0] + weights[2, 1] * x[1] + weights[2, 2] * x[2])


def test_core_matches_torch_sdpa_with_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    ours = scaled_dot_product_attention(q, k, v, causal_mask(7))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL)


def test_self_attention_matches_sdpa():
    torch.manual_seed(0)
    layer = SelfAttention(8, 4)
    x = torch.randn(5, 8)
    q, k, v = layer.W_query(x), layer.W_key(x), layer.W_value(x)
    torch.testing.assert_close(layer(x), F.scaled_dot_product_attention(q, k, v), **TOL)


def _mha(d=12, heads=3, ctx=10, bias=True, **kw):
    torch.manual_seed(0)
    return MultiHeadAttention(d, d, ctx, heads, qkv_bias=bias, **kw).eval()


@pytest.mark.parametrize("bias", [True, False])
def test_mha_matches_torch_multihead_attention(bias):
    ours = _mha(bias=bias)
    ref = nn.MultiheadAttention(12, 3, bias=bias, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(ours.qkv.bias)
            ref.out_proj.bias.copy_(ours.out_proj.bias)
        else:  # torch's bias=False also drops the output bias; ours keeps it (as GPT-2 does)
            ours.out_proj.bias.zero_()
    x = torch.randn(2, 10, 12)
    expected, _ = ref(x, x, x, attn_mask=causal_mask(10), need_weights=False)
    torch.testing.assert_close(ours(x), expected, **TOL)


def test_mha_sdpa_path_matches_explicit_core():
    explicit = _mha()
    fused = _mha(use_sdpa=True)
    x = torch.randn(2, 10, 12)
    torch.testing.assert_close(explicit(x), fused(x), **TOL)


def test_mha_equals_stacked_heads_wrapper():
    torch.manual_seed(0)
    wrapper = MultiHeadAttentionWrapper(6, 6, context_length=5, n_heads=2).eval()
    fused = MultiHeadAttention(6, 6, context_length=5, n_heads=2).eval()
    with torch.no_grad():
        for i, name in enumerate(["W_query", "W_key", "W_value"]):
            fused.qkv.weight[i * 6:(i + 1) * 6] = torch.cat([getattr(h, name).weight for h in wrapper.heads])
        fused.out_proj.weight.copy_(torch.eye(6))
        fused.out_proj.bias.zero_()
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(fused(x), wrapper(x), **TOL)


@pytest.mark.parametrize("make", [
    lambda: CausalAttention(8, 4, 12),
    lambda: MultiHeadAttentionWrapper(8, 4, 12, 2),
    lambda: MultiHeadAttention(8, 8, 12, 2),
    lambda: MultiHeadAttention(8, 8, 12, 2, use_sdpa=True),
    lambda: GroupedQueryAttention(8, 8, 12, 4, 2),
    lambda: MultiQueryAttention(8, 8, 12, 4, use_sdpa=True),
])
def test_changing_future_tokens_never_changes_earlier_outputs(make):
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(2, 12, 8)
    y = x.clone()
    y[:, 7:] = torch.randn(2, 5, 8)
    torch.testing.assert_close(layer(x)[:, :7], layer(y)[:, :7])
    assert not torch.allclose(layer(x)[:, 7:], layer(y)[:, 7:])


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_dropout_is_identity_in_eval_mode(use_sdpa):
    torch.manual_seed(0)
    layer = MultiHeadAttention(8, 8, 12, 2, dropout=0.5, use_sdpa=use_sdpa)
    x = torch.randn(2, 12, 8)
    layer.eval()
    reference = layer(x)
    torch.testing.assert_close(layer(x), reference)
    layer.train()
    assert not torch.allclose(layer(x), reference)  # dropout does act in training


def test_causal_attention_dropout_scales_survivors():
    torch.manual_seed(0)
    layer = CausalAttention(3, 2, 6, dropout=0.5).train()
    weights = torch.softmax(torch.randn(6, 6), -1)
    dropped = layer.dropout(weights)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2 * weights[kept])


def test_batch_elements_are_independent():
    layer = _mha()
    x = torch.randn(4, 10, 12)
    together = layer(x)
    for b in range(4):
        torch.testing.assert_close(layer(x[b:b + 1])[0], together[b], **TOL)


def test_weights_are_causal_and_normalised():
    layer = _mha()
    _, weights = layer(torch.randn(1, 6, 12), return_weights=True)
    assert weights.shape == (1, 3, 6, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 3, 6))
    assert (weights.masked_select(causal_mask(6)) == 0).all()


def test_shapes_through_every_layer():
    x = torch.randn(2, 6, 3)
    assert CausalAttention(3, 2, 6)(x).shape == (2, 6, 2)
    assert MultiHeadAttentionWrapper(3, 4, 6, 2)(x).shape == (2, 6, 4)
    assert MultiHeadAttention(3, 6, 6, 2)(x).shape == (2, 6, 6)


@pytest.mark.parametrize("make, message", [
    (lambda: MultiHeadAttention(8, 10, 12, 3), "divisible by n_heads"),
    (lambda: MultiHeadAttentionWrapper(8, 10, 12, 4), "divisible by n_heads"),
    (lambda: MultiHeadAttention(8, 8, 0, 2), "context_length"),
    (lambda: CausalAttention(8, 4, 12, dropout=1.5), "dropout"),
    (lambda: SelfAttention(0, 4), "positive"),
    (lambda: GroupedQueryAttention(8, 8, 12, 4, 3), r"n_heads=4 must be divisible by n_kv_groups=3.*\[1, 2, 4\]"),
    (lambda: GroupedQueryAttention(8, 8, 12, 4, 0), "n_kv_groups"),
    (lambda: MultiQueryAttention(8, 10, 12, 3), "divisible by n_heads"),
])
def test_bad_construction_says_what_to_change(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("layer", [SelfAttention(8, 4), CausalAttention(8, 4, 12), MultiHeadAttention(8, 8, 12, 2)])
def test_mismatched_input_width_raises(layer):
    with pytest.raises(ValueError, match="d_in=8"):
        layer(torch.randn(1, 5, 7))


@pytest.mark.parametrize("layer", [CausalAttention(8, 4, 12), MultiHeadAttention(8, 8, 12, 2, use_sdpa=True)])
def test_sequence_longer_than_mask_raises(layer):
    with pytest.raises(ValueError, match="exceeds context_length=12"):
        layer(torch.randn(1, 13, 8))


# --- grouped-query and multi-query attention (Lectures 10-11) -----------------------------------

def test_mha_keeps_its_lecture_08_layout():
    layer = MultiHeadAttention(6, 6, 5, 2)
    assert isinstance(layer, GroupedQueryAttention) and layer.n_kv_groups == 2
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {
        "qkv.weight": (18, 6), "out_proj.weight": (6, 6), "out_proj.bias": (6,)}
    assert [name for name, _ in layer.named_children()] == ["qkv", "out_proj", "dropout"]


def test_gqa_projection_shapes_and_parameters():
    mqa, gqa, mha = (GroupedQueryAttention(32, 32, 8, 8, g) for g in (1, 2, 8))
    assert mqa.qkv.weight.shape == (32 + 2 * 4, 32) and gqa.qkv.weight.shape == (32 + 2 * 8, 32)
    assert mha.qkv.weight.shape == (3 * 32, 32) and gqa.group_size == 4
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(mha) - n(gqa) == 2 * (32 - 8) * 32 and n(gqa) - n(mqa) == 2 * 4 * 32


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_gqa_with_groups_equal_heads_is_mha(use_sdpa):
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 12, 10, 3, qkv_bias=True, use_sdpa=use_sdpa).eval()
    gqa = GroupedQueryAttention(12, 12, 10, 3, 3, qkv_bias=True, use_sdpa=use_sdpa).eval()
    gqa.load_state_dict(mha.state_dict())  # same keys and shapes: the weights map one to one
    x = torch.randn(2, 10, 12)
    torch.testing.assert_close(gqa(x), mha(x), atol=0, rtol=0)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_gqa_with_one_group_is_mqa(use_sdpa):
    torch.manual_seed(0)
    mqa = MultiQueryAttention(12, 12, 10, 4, use_sdpa=use_sdpa).eval()
    gqa = GroupedQueryAttention(12, 12, 10, 4, 1, use_sdpa=use_sdpa).eval()
    gqa.load_state_dict(mqa.state_dict())
    x = torch.randn(2, 10, 12)
    torch.testing.assert_close(gqa(x), mqa(x), atol=0, rtol=0)


def _gqa(groups, d=24, heads=6, ctx=9, **kw):
    torch.manual_seed(0)
    layer = GroupedQueryAttention(d, d, ctx, heads, groups, qkv_bias=True, **kw).eval()
    with torch.no_grad():  # make K/V heads clearly different, so a wrong head-to-group map shows
        layer.qkv.weight.mul_(5.0)
    return layer


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_gqa_matches_torch_sdpa_with_enable_gqa(groups):
    layer = _gqa(groups)
    x = torch.randn(2, 9, 24)
    q, k, v = layer.qkv(x).split([24, layer.kv_dim, layer.kv_dim], dim=-1)
    heads = lambda t, n: t.view(2, 9, n, 4).transpose(1, 2)  # (B, n, T, d_h)
    context = F.scaled_dot_product_attention(heads(q, 6), heads(k, groups), heads(v, groups),
                                             is_causal=True, enable_gqa=True)  # (B, 6, T, d_h)
    expected = layer.out_proj(context.transpose(1, 2).reshape(2, 9, 24))
    torch.testing.assert_close(layer(x), expected, **TOL)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_gqa_equals_mha_with_each_kv_head_copied_to_its_group(groups):
    """Mapped weights: MHA whose K/V heads h = g * group_size ... are copies of GQA's K/V head g."""
    gqa = _gqa(groups)
    mha = MultiHeadAttention(24, 24, 9, 6, qkv_bias=True).eval()
    size = 6 // groups
    repeat = lambda w: w.view(groups, 4, *w.shape[1:]).repeat_interleave(size, dim=0).reshape(24, *w.shape[1:])
    with torch.no_grad():
        for name in ("weight", "bias"):
            wq, wk, wv = getattr(gqa.qkv, name).split([24, gqa.kv_dim, gqa.kv_dim])
            getattr(mha.qkv, name).copy_(torch.cat([wq, repeat(wk), repeat(wv)]))
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    x = torch.randn(2, 9, 24)
    torch.testing.assert_close(gqa(x), mha(x), **TOL)
    _, w_gqa = gqa(x, return_weights=True)
    _, w_mha = mha(x, return_weights=True)
    torch.testing.assert_close(w_gqa, w_mha, **TOL)
    if groups < 6:  # heads of one group share keys, yet their weights differ (their queries do)
        assert not torch.allclose(w_gqa[:, 0], w_gqa[:, 1])


@pytest.mark.parametrize("groups", [1, 2])
def test_gqa_sdpa_path_matches_explicit_core(groups):
    explicit, fused = _gqa(groups), _gqa(groups, use_sdpa=True)
    x = torch.randn(2, 9, 24)
    torch.testing.assert_close(explicit(x), fused(x), **TOL)

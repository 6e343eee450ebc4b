"""utils.moe.experts and utils.moe.routing (Lectures 18-19): hand-computed routers, loop == batched
dispatch, only the selected experts run, costs equal utils.configs.count_parameters, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils.configs import count_parameters, get_config
from utils.gpt import GPTConfig, GPTModel
from utils.moe import SparseMoE, SwiGLUExpert, TopKRouter, dense_ffn_cost, moe_layer_cost, top_k_gates


def test_top_k_gates_hand_computed():
    scores = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, math.log(3.0)]])
    weights, indices = top_k_gates(scores, 2)
    assert indices.tolist() == [[1, 2], [2, 0]]
    e = math.e
    expected = torch.tensor([[e / (e + 1), 1 / (e + 1)], [0.75, 0.25]])  # softmax(3, 2); softmax(ln 3, 0)
    torch.testing.assert_close(weights, expected)


def test_top_k_equals_minus_inf_mask_then_softmax():
    scores = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    weights, indices = top_k_gates(scores, 3)
    kth = scores.topk(3, dim=-1).values[:, -1:]
    dense = torch.softmax(scores.masked_fill(scores < kth, float("-inf")), dim=-1)
    torch.testing.assert_close(dense.gather(-1, indices), weights)
    assert (dense > 0).sum(-1).tolist() == [3] * 5


def test_router_scores_are_x_times_w_r():
    router = TopKRouter(4, 3, 1)
    with torch.no_grad():
        router.gate.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 1.0]]))
    x = torch.tensor([[5.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    weights, indices = router(x)
    assert indices.tolist() == [[0], [2]]
    torch.testing.assert_close(weights, torch.ones(2, 1))  # top-1: softmax of one score is 1
    torch.testing.assert_close(router.dense_weights(x), torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))


def test_swiglu_expert_formula():
    expert = SwiGLUExpert(6, 10)
    x = torch.randn(2, 3, 6)
    w1, w3, w2 = expert.gate_proj.weight, expert.up_proj.weight, expert.down_proj.weight
    torch.testing.assert_close(expert(x), (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T)
    assert sum(p.numel() for p in expert.parameters()) == dense_ffn_cost(6, 10).total_params == 180


def test_moe_output_is_weighted_sum_of_selected_experts():
    torch.manual_seed(1)
    moe = SparseMoE(8, 16, 3, 2)
    x = torch.randn(4, 8)
    out = moe(x)
    weights, indices = moe.router(x)
    for t in range(4):
        manual = sum(weights[t, j] * moe.experts[int(indices[t, j])](x[t]) for j in range(2))
        torch.testing.assert_close(out[t], manual)


@pytest.mark.parametrize("n_experts, top_k, shape", [(3, 2, (4, 8)), (8, 2, (2, 7, 8)), (5, 1, (3, 5, 8)),
                                                     (4, 4, (6, 8))])
def test_loop_equals_batched(n_experts, top_k, shape):
    torch.manual_seed(2)
    moe = SparseMoE(8, 12, n_experts, top_k)
    x = torch.randn(*shape, requires_grad=True)
    batched = moe(x)
    grad_b = torch.autograd.grad(batched.sum(), x)[0]
    moe.dispatch = "loop"
    loop = moe(x)
    grad_l = torch.autograd.grad(loop.sum(), x)[0]
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_b, grad_l, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dispatch", ["loop", "batched"])
def test_only_selected_experts_run(dispatch):
    torch.manual_seed(3)
    moe = SparseMoE(8, 12, 6, 1, dispatch=dispatch)
    with torch.no_grad():  # every token prefers expert 0 or expert 4
        moe.router.gate.weight.zero_()
        moe.router.gate.weight[0, 0] = 1.0
        moe.router.gate.weight[4, 0] = -1.0
    rows = [0] * 6
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda m, inp, out, e=e: rows.__setitem__(e, rows[e] + inp[0].shape[0]))
    x = torch.randn(10, 8)
    x[:, 0] = torch.tensor([1.0, -1, 2, -2, 3, 1, 1, -1, 1, 1])
    moe(x)
    assert rows == [7, 0, 0, 0, 3, 0]  # 7 positive tokens to expert 0, 3 negative to expert 4, nothing else


def test_usable_as_gpt_feed_forward():
    cfg = GPTConfig(vocab_size=50, context_length=8, d_model=16, n_heads=2, n_layers=2, dropout=0.0)
    model = GPTModel(cfg, feed_forward=SparseMoE.factory(4, 2, d_hidden=24))
    logits = model(torch.randint(0, 50, (2, 8)))
    assert logits.shape == (2, 8, 50)
    assert model.blocks[0].ff.last_indices.shape == (16, 2)


def test_v3_moe_layer_matches_count_parameters():
    spec = get_config("DeepSeek-V3")
    moe, count = spec.moe, count_parameters(spec)
    layers = spec.n_layers - moe.first_k_dense
    cost = moe_layer_cost(spec.d_model, moe.expert_hidden, moe.n_routed_experts, moe.n_activated_experts,
                          n_shared=moe.n_shared_experts, gate_bias=moe.gate_bias)
    assert cost.total_params * layers == count.breakdown["experts"] + count.breakdown["router"]
    unused = (cost.total_params - cost.active_params) * layers
    assert count.total - count.activated == unused + spec.vocab_size * spec.d_model  # + embedding lookup
    assert cost.total_params == 11_320_164_608 and cost.active_params == 398_196_992
    dense = dense_ffn_cost(spec.d_model, spec.d_ff)
    assert dense.flops_per_token == 2 * 3 * 7168 * 18432


@pytest.mark.parametrize("build", [
    lambda: TopKRouter(8, 3, 4), lambda: SparseMoE(8, 16, 3, 4), lambda: top_k_gates(torch.zeros(2, 3), 4),
    lambda: moe_layer_cost(8, 16, 3, 4), lambda: TopKRouter(8, 3, 0)])
def test_top_k_out_of_range_says_what_to_change(build):
    with pytest.raises(ValueError, match=r"choose top_k <= 3"):
        build()


def test_bad_dispatch_and_sizes():
    with pytest.raises(ValueError, match="dispatch must be"):
        SparseMoE(8, 16, 3, 2, dispatch="grouped")
    with pytest.raises(ValueError, match="positive sizes"):
        SwiGLUExpert(8, 0)

"""DeepSeekMoE (Lecture 21) against transformers' DeepseekV3MoE, exact identities and crafted inputs."""

import math

import pytest
import torch

from utils.gpt import GPTConfig, GPTModel
from utils.moe import DeepSeekMoE, DeepSeekMoEConfig, SparseMoE
from utils.moe.deepseek import (bias_update, deepseek_gates, group_limited_mask, max_violation,
                                sequence_balance_loss)

transformers = pytest.importorskip("transformers")
from transformers.models.deepseek_v3 import DeepseekV3Config  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE  # noqa: E402


def _pair(n_routed=8, n_shared=2, top_k=3, n_groups=4, topk_groups=2, scale=2.5, seed=0):
    """Their DeepseekV3MoE with random weights and a non-zero correction bias, and ours with the same."""
    hf_cfg = DeepseekV3Config(hidden_size=16, moe_intermediate_size=8, n_routed_experts=n_routed,
                              n_shared_experts=n_shared, num_experts_per_tok=top_k, n_group=n_groups,
                              topk_group=topk_groups, routed_scaling_factor=scale, norm_topk_prob=True)
    torch.manual_seed(seed)
    theirs = DeepseekV3MoE(hf_cfg).float().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        theirs.gate.e_score_correction_bias.normal_(0, 0.2)
    ours = DeepSeekMoE(DeepSeekMoEConfig(16, 8, n_routed, n_shared, top_k, n_groups, topk_groups,
                                         routed_scaling_factor=scale)).eval()
    ours.load_transformers_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("groups", [(1, 1), (4, 2), (2, 1)])
@pytest.mark.parametrize("dispatch", ["batched", "loop"])
def test_matches_transformers_deepseek_v3_moe(groups, dispatch):
    ours, theirs = _pair(n_groups=groups[0], topk_groups=groups[1])
    ours.dispatch = dispatch
    assert ours.e_score_correction_bias.abs().min() > 0
    x = torch.randn(3, 10, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        _, w, i = theirs.gate(x)
    weights, indices, _ = ours.route(x.reshape(-1, 16))
    assert torch.equal(indices.sort(-1).values, i.sort(-1).values)


def test_state_dict_round_trip_and_bad_state_dict():
    ours, theirs = _pair()
    sd = ours.transformers_state_dict()
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(sd[key], value, atol=0, rtol=0)
    with pytest.raises(ValueError, match="missing"):
        ours.load_transformers_state_dict({k: v for k, v in sd.items() if k != "gate.weight"})
    bad = dict(sd, **{"experts.down_proj": torch.zeros(8, 16, 4)})
    with pytest.raises(ValueError, match="expert_hidden"):
        ours.load_transformers_state_dict(bad)


def test_bias_changes_selection_but_never_the_gate_weights():
    s = torch.tensor([[0.9, 0.8, 0.3, 0.1]])
    w0, i0 = deepseek_gates(s, torch.zeros(4), top_k=2)
    w1, i1 = deepseek_gates(s, torch.tensor([0.0, -0.6, 0.0, 0.0]), top_k=2)
    assert i0.tolist() == [[0, 1]] and i1.tolist() == [[0, 2]]  # the bias changed the set
    torch.testing.assert_close(w1, torch.tensor([[0.9 / 1.2, 0.3 / 1.2]]))  # unbiased s of {0, 2}
    # a bias that keeps the set keeps the weights exactly
    w2, i2 = deepseek_gates(s, torch.tensor([0.05, -0.05, 0.0, 0.0]), top_k=2)
    assert torch.equal(i2, i0) and torch.equal(w2, w0)
    # scaling factor; no normalisation
    w3, _ = deepseek_gates(s, torch.zeros(4), top_k=2, norm_topk_prob=False, routed_scaling_factor=2.5)
    torch.testing.assert_close(w3, torch.tensor([[2.25, 2.0]]))


def test_update_bias_leaves_gate_weights_of_the_module_untouched():
    ours, _ = _pair(n_groups=1, topk_groups=1)
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.eval()(x)  # evaluation batches do not count towards the bias update
    assert ours.last_load.sum() == 40 * 3 and ours.step_load.sum() == 0
    ours.train()(x)
    assert torch.equal(ours.step_load, ours.last_load)
    new = ours.update_bias()
    load = ours.last_load
    torch.testing.assert_close(new - before["e_score_correction_bias"], 0.001 * torch.sign(load.mean() - load))
    for k, v in ours.state_dict().items():
        if k != "e_score_correction_bias":
            assert torch.equal(v, before[k])
    assert ours.step_load.sum() == 0
    assert "e_score_correction_bias" not in dict(ours.named_parameters())


def test_bias_update_rule():
    b = torch.zeros(4)
    torch.testing.assert_close(bias_update(b, torch.tensor([10., 2., 4., 4.]), 0.1),
                               torch.tensor([-0.1, 0.1, 0.1, 0.1]))  # mean 5
    torch.testing.assert_close(bias_update(b, torch.tensor([6, 4, 5, 5]), 0.1),
                               torch.tensor([-0.1, 0.1, 0.0, 0.0]))  # at the mean: unchanged


def test_bias_update_balances_a_skewed_router():
    gen = torch.Generator().manual_seed(0)
    E, k = 8, 2
    s = torch.sigmoid(torch.randn(512, E, generator=gen) + torch.linspace(2, -2, E))  # fixed, skewed
    bias, vio = torch.zeros(E), []
    for _ in range(300):
        _, idx = deepseek_gates(s, bias, k)
        load = torch.bincount(idx.flatten(), minlength=E)
        vio.append(max_violation(load))
        bias = bias_update(bias, load, 0.01)
    assert vio[0] > 1.0 and max(vio[-20:]) < 0.2


def test_max_violation():
    assert max_violation(torch.tensor([3, 1, 1, 3])) == pytest.approx(0.5)
    assert max_violation(torch.tensor([2, 2])) == 0.0


def test_sequence_balance_loss_on_crafted_inputs():
    # balanced: every expert its share -> f_i = 1, sum_i P_i = 1 -> loss = alpha
    s = torch.full((1, 4, 4), 0.5)
    idx = torch.tensor([[[0], [1], [2], [3]]])
    assert sequence_balance_loss(s, idx, 1, 0.0001).item() == pytest.approx(0.0001)
    # collapsed: all tokens to expert 0, s' = (0.7, 0.1, 0.1, 0.1) -> f_0 = 4, loss = alpha * 4 * 0.7
    s = torch.tensor([[[0.7, 0.1, 0.1, 0.1]] * 4])
    idx = torch.zeros(1, 4, 1, dtype=torch.long)
    assert sequence_balance_loss(s, idx, 1, 1.0).item() == pytest.approx(2.8)
    # by hand with top-2 and unnormalised sigmoid scores, averaged over two sequences
    s = torch.tensor([[[0.8, 0.6, 0.2], [0.4, 0.9, 0.5]], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]])
    idx = torch.tensor([[[0, 1], [1, 2]], [[0, 1], [0, 2]]])
    f1 = torch.tensor([1, 2, 1]) * 3 / 4
    P1 = (torch.tensor([0.8, 0.6, 0.2]) / 1.6 + torch.tensor([0.4, 0.9, 0.5]) / 1.8) / 2
    f2, P2 = torch.tensor([2, 1, 1]) * 3 / 4, torch.full((3,), 1 / 3)
    want = ((f1 * P1).sum() + (f2 * P2).sum()) / 2
    assert sequence_balance_loss(s, idx, 2, 1.0).item() == pytest.approx(want.item(), abs=1e-6)


def test_module_aux_loss_only_in_training():
    m = DeepSeekMoE(DeepSeekMoEConfig(16, 8, 8, 1, 2, seq_aux_alpha=0.0001))
    x = torch.randn(2, 5, 16)
    m.train()(x)
    assert m.aux_loss.item() > 0 and m.aux_loss.requires_grad
    m.eval()(x)
    assert m.aux_loss.item() == 0


def test_group_limited_mask_scores_groups_by_top2_sum():
    # group 0 = (0.9, 0.0): top-2 sum 0.9; group 1 = (0.5, 0.5): 1.0 -> group 1 wins although max is in group 0
    mask = group_limited_mask(torch.tensor([[0.9, 0.0, 0.5, 0.5]]), 2, 1)
    assert mask.tolist() == [[False, False, True, True]]
    _, idx = deepseek_gates(torch.tensor([[0.9, 0.0, 0.5, 0.5]]), torch.zeros(4), 1, n_groups=2, topk_groups=1)
    assert idx.item() in (2, 3)


def test_softmax_scoring_and_shared_experts_reduce_to_sums():
    cfg = DeepSeekMoEConfig(8, 4, 4, 2, 4, scoring="softmax", norm_topk_prob=False)
    m = DeepSeekMoE(cfg)
    x = torch.randn(5, 8)
    # top_k = all experts with softmax weights: out = sum_e softmax_e * expert_e(x) + shared(x)
    p = torch.softmax(m.gate(x), -1)
    want = sum(p[:, e:e + 1] * m.experts[e](x) for e in range(4)) + m.shared_experts(x)
    torch.testing.assert_close(m(x), want, atol=1e-6, rtol=1e-5)
    assert isinstance(m, SparseMoE)


def test_as_gpt_feed_forward():
    cfg = GPTConfig(vocab_size=50, context_length=8, d_model=16, n_heads=2, n_layers=2)
    model = GPTModel(cfg, feed_forward=DeepSeekMoE.factory(expert_hidden=8, n_routed=4, n_shared=1, top_k=2))
    out = model(torch.randint(0, 50, (2, 8)))
    assert out.shape == (2, 8, 50)
    assert sum(isinstance(m, DeepSeekMoE) for m in model.modules()) == 2


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(n_routed=8, top_k=5, n_groups=4, topk_groups=2), "top_k <= 4"),
    (dict(n_routed=8, top_k=9), "top_k <= 8"),
    (dict(n_routed=8, top_k=2, n_groups=3), "must divide"),
    (dict(n_routed=8, top_k=2, n_groups=4, topk_groups=5), "topk_groups"),
    (dict(n_routed=8, top_k=2, scoring="relu"), "sigmoid"),
    (dict(n_routed=8, top_k=2, gamma=-1.0), "gamma"),
])
def test_bad_configuration_says_what_to_change(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DeepSeekMoEConfig(d_model=16, expert_hidden=8, n_shared=1, **kwargs)


def test_bad_sequence_loss_input():
    with pytest.raises(ValueError, match="one row per sequence"):
        sequence_balance_loss(torch.rand(4, 3), torch.zeros(4, 1, dtype=torch.long), 1, 1.0)


def test_fine_grained_combinations():
    assert math.comb(16, 2) == 120 and math.comb(64, 8) == 4_426_165_368


def test_update_moe_biases_updates_every_layer_with_its_own_load():
    """Lecture 22's trainer hook: each DeepSeekMoE layer of a GPT gets Wang et al.'s update, loads reset."""
    from utils.gpt import GPTConfig, GPTModel
    from utils.moe.deepseek import moe_layers, update_moe_biases

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=11, context_length=8, d_model=16, n_heads=2, n_layers=2, dropout=0.0)
    model = GPTModel(cfg, feed_forward=DeepSeekMoE.factory(expert_hidden=8, n_routed=4, n_shared=1, top_k=2,
                                                           gamma=0.1))
    model(torch.randint(0, 11, (3, 8)))
    layers = moe_layers(model, DeepSeekMoE)
    assert len(layers) == 2
    expected = [0.1 * torch.sign(l.step_load.mean() - l.step_load) for l in layers]
    assert all(l.step_load.sum() == 3 * 8 * 2 for l in layers)
    update_moe_biases(1, model, None)
    for layer, want in zip(layers, expected):
        torch.testing.assert_close(layer.e_score_correction_bias, want)
        assert layer.step_load.sum() == 0

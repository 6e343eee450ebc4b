"""Lecture 22's checkers accept the right answers and reject the wrong answers learners write."""

import torch

from checker_tools import assert_accepts, assert_rejects
from utils.moe.deepseek import DeepSeekMoE, bias_update, moe_layers


def active(d, I, E, S, k):
    return d * E + (S + k) * 3 * d * I


def test_22_1_accepts():
    assert_accepts("22.1", active)


def test_22_1_rejects_total_parameters():
    assert_rejects("22.1", lambda d, I, E, S, k: d * E + (S + E) * 3 * d * I, "case 1")


def test_22_1_rejects_missing_router():
    assert_rejects("22.1", lambda d, I, E, S, k: (S + k) * 3 * d * I, "case 1")


def test_22_1_rejects_missing_shared_experts():
    assert_rejects("22.1", lambda d, I, E, S, k: d * E + k * 3 * d * I, "shared")


def test_22_1_rejects_two_matrices_per_expert():
    assert_rejects("22.1", lambda d, I, E, S, k: d * E + (S + k) * 2 * d * I, "case 1")


def test_22_1_rejects_a_float():
    assert_rejects("22.1", lambda d, I, E, S, k: float(active(d, I, E, S, k)), "case 1")


def hook(step, model, history):
    for layer in moe_layers(model, DeepSeekMoE):
        layer.update_bias()


def test_22_2_accepts():
    assert_accepts("22.2", hook)


def test_22_2_rejects_updating_only_the_first_layer():
    assert_rejects("22.2", lambda s, m, h: moe_layers(m, DeepSeekMoE)[0].update_bias(), "two layers")


def test_22_2_rejects_a_flipped_sign():
    def flipped(step, model, history):
        for layer in moe_layers(model, DeepSeekMoE):
            layer.e_score_correction_bias.copy_(bias_update(layer.e_score_correction_bias, -layer.step_load,
                                                            layer.cfg.gamma))
            layer.step_load = torch.zeros(layer.n_experts)
    assert_rejects("22.2", flipped, "case 1")


def test_22_2_rejects_never_resetting_the_load():
    def stale(step, model, history):  # the load of all past steps keeps counting
        for layer in moe_layers(model, DeepSeekMoE):
            layer.e_score_correction_bias.copy_(bias_update(layer.e_score_correction_bias, layer.step_load,
                                                            layer.cfg.gamma))
    assert_rejects("22.2", stale)


def test_22_2_rejects_updating_every_other_step():
    def sparse(step, model, history):
        if step % 2 == 0:
            hook(step, model, history)
    assert_rejects("22.2", sparse, "case 1")


def test_22_2_rejects_a_hook_that_does_nothing():
    assert_rejects("22.2", lambda s, m, h: None, "case 1")

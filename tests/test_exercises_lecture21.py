"""Lecture 21's checkers accept the right answers and reject the wrong answers learners write."""

import torch

from checker_tools import assert_accepts, assert_rejects


def make_selection(bias_in_weights=False, softmax_biased=False, no_norm=False):
    def select(scores, bias, top_k):
        biased = scores + bias
        indices = biased.topk(top_k, dim=-1).indices
        if softmax_biased:  # the public version: softmax over the biased scores of the chosen experts
            return torch.softmax(biased.gather(-1, indices), dim=-1), indices
        weights = (biased if bias_in_weights else scores).gather(-1, indices)
        if not no_norm:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights, indices
    return select


def test_21_1_accepts():
    assert_accepts("21.1", make_selection())


def test_21_1_rejects_bias_added_to_the_gate_weights():
    assert_rejects("21.1", make_selection(bias_in_weights=True), "result 0")


def test_21_1_rejects_softmax_over_biased_scores():
    assert_rejects("21.1", make_selection(softmax_biased=True), "result 0")


def test_21_1_rejects_selection_on_unbiased_scores():
    def select(scores, bias, top_k):
        w, i = scores.topk(top_k, dim=-1)
        return w / w.sum(-1, keepdim=True), i
    assert_rejects("21.1", select, "bias -0.6")


def test_21_1_rejects_missing_normalisation():
    assert_rejects("21.1", make_selection(no_norm=True), "result 0")


def make_update(flip=False, proportional=False):
    def update(bias, load, gamma):
        step = (load.mean() - load) if proportional else torch.sign(load.mean() - load)
        return bias - gamma * step if flip else bias + gamma * step
    return update


def test_21_2_accepts():
    assert_accepts("21.2", make_update())


def test_21_2_rejects_sign_flipped():
    assert_rejects("21.2", make_update(flip=True))


def test_21_2_rejects_proportional_update():
    assert_rejects("21.2", make_update(proportional=True))


def test_21_2_rejects_in_place_without_the_mean_rule():
    def update(bias, load, gamma):  # overloaded = the single most loaded expert only
        return bias - gamma * (load == load.max()).float()
    assert_rejects("21.2", update)


def test_21_3_accepts():
    assert_accepts("21.3", lambda load: float(load.max() / load.mean() - 1))


def test_21_3_rejects_forgetting_minus_one():
    assert_rejects("21.3", lambda load: float(load.max() / load.mean()))


def test_21_3_rejects_max_minus_min():
    assert_rejects("21.3", lambda load: float((load.max() - load.min()) / load.mean()))


def test_21_3_rejects_a_tensor_result():
    assert_rejects("21.3", lambda load: load.max() / load.mean() - 1)

"""Lecture 04 checkers accept the right answers and reject the wrong ones learners write."""

import torch

from checker_tools import assert_accepts, assert_rejects


# --- 04.1 softmax by hand ------------------------------------------------------------------------

def softmax_row_max(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def softmax_global_max(x):  # one max for the whole tensor: rows far below it underflow to 0 / 0
    e = torch.exp(x - x.max())
    return e / e.sum(dim=-1, keepdim=True)


def softmax_no_shift(x):  # exp(1000) overflows to inf: inf / inf = NaN
    e = torch.exp(x)
    return e / e.sum(dim=-1, keepdim=True)


def softmax_dim0(x):  # normalises columns instead of rows
    e = torch.exp(x - x.max(dim=0, keepdim=True).values)
    return e / e.sum(dim=0, keepdim=True)


def softmax_max_without_keepdim(x):  # (3, 3) - (3,) broadcasts the row maxima along the columns
    e = torch.exp(x - x.max(dim=-1).values)
    return e / e.sum(dim=-1, keepdim=True)


def softmax_sum_without_keepdim(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1)


def softmax_divide_by_sum(x):  # no exponential at all
    return x / x.sum(dim=-1, keepdim=True)


def softmax_float32(x):  # drops the input's dtype
    return softmax_row_max(x.float())


def test_04_1_accepts_the_row_max_and_torch_softmax():
    assert_accepts("04.1", softmax_row_max)
    assert_accepts("04.1", lambda x: torch.softmax(x, dim=-1))


def test_04_1_rejects_the_global_max():
    assert_rejects("04.1", softmax_global_max, "rows far apart")


def test_04_1_rejects_no_max_subtraction():
    assert_rejects("04.1", softmax_no_shift, "NaN")


def test_04_1_rejects_the_wrong_dimension():
    assert_rejects("04.1", softmax_dim0, "one softmax per row")
    assert_rejects("04.1", lambda x: torch.softmax(x, dim=0), "one softmax per row")


def test_04_1_rejects_other_slips():
    assert_rejects("04.1", softmax_max_without_keepdim)
    assert_rejects("04.1", softmax_sum_without_keepdim)
    assert_rejects("04.1", softmax_divide_by_sum, "three scores")
    assert_rejects("04.1", softmax_float32, "dtype")


# --- 04.2 the weights and context of one query -------------------------------------------------

def one_query(inputs, i):
    scores = inputs @ inputs[i]
    weights = torch.softmax(scores, dim=0)
    return weights, weights @ inputs


def test_04_2_accepts_the_lecture_steps():
    assert_accepts("04.2", one_query)

    def with_a_loop(inputs, i):
        scores = torch.stack([inputs[i] @ x_j for x_j in inputs])
        weights = torch.exp(scores) / torch.exp(scores).sum()
        return weights, sum(w * x_j for w, x_j in zip(weights, inputs))

    assert_accepts("04.2", with_a_loop)


def test_04_2_rejects_wrong_answers():
    # the scores normalised by their sum instead of a softmax
    def no_softmax(inputs, i):
        scores = inputs @ inputs[i]
        weights = scores / scores.sum()
        return weights, weights @ inputs

    assert_rejects("04.2", no_softmax, "The next day is bright")

    # Lecture 05's scaling, not this lecture's attention
    def scaled(inputs, i):
        weights = torch.softmax(inputs @ inputs[i] / inputs.shape[1] ** 0.5, dim=0)
        return weights, weights @ inputs

    assert_rejects("04.2", scaled, "The next day is bright")

    # the query's row of X^T X instead of X X^T: breaks when d != T, wrong when d == T
    def transposed(inputs, i):
        weights = torch.softmax(inputs.T @ inputs[:, i], dim=0)
        return weights, inputs.T @ weights

    assert_rejects("04.2", transposed)

    # the context mixes the scores rather than the token vectors
    def mixes_scores(inputs, i):
        scores = inputs @ inputs[i]
        weights = torch.softmax(scores, dim=0)
        return weights, weights * scores

    assert_rejects("04.2", mixes_scores)

    # (context, weights) in the wrong order
    assert_rejects("04.2", lambda inputs, i: one_query(inputs, i)[::-1], "result 0")

    # the query leaves itself out
    def without_self(inputs, i):
        scores = (inputs @ inputs[i]).index_fill(0, torch.tensor([i]), float("-inf"))
        weights = torch.softmax(scores, dim=0)
        return weights, weights @ inputs

    assert_rejects("04.2", without_self, "The next day is bright")

    # the weights of all queries rather than one
    def all_rows(inputs, i):
        weights = torch.softmax(inputs @ inputs.T, dim=-1)
        return weights, weights @ inputs

    assert_rejects("04.2", all_rows, "expected shape")

"""Lecture 06 checkers: each accepts the right answer and rejects the wrong answers learners write."""

import math

import torch
from torch import nn

from checker_tools import assert_accepts, assert_rejects
from utils.attention import causal_mask


# --- 06.1 causal weights from scores ---------------------------------------------------------------

def causal_weights(scores):
    T = scores.shape[-1]
    return torch.softmax(scores.masked_fill(causal_mask(T), float("-inf")), dim=-1)


def test_06_1_accepts_masked_fill_and_the_additive_mask():
    assert_accepts("06.1", causal_weights)
    assert_accepts("06.1", lambda s: torch.softmax(
        s + torch.zeros(s.shape[-1], s.shape[-1]).masked_fill(causal_mask(s.shape[-1]), float("-inf")), dim=-1))


def test_06_1_rejects_a_mask_that_hides_the_token_itself():
    def diagonal_hidden(scores):  # triu(diagonal=0): row 0 has no key left -> NaN
        T = scores.shape[-1]
        return torch.softmax(scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool)), float("-inf")), -1)

    assert_rejects("06.1", diagonal_hidden, "NaN")


def test_06_1_rejects_masking_after_the_softmax_without_renormalising():
    assert_rejects("06.1", lambda s: torch.softmax(s, dim=-1).masked_fill(causal_mask(s.shape[-1]), 0.0),
                   "largest difference")


def test_06_1_rejects_no_mask_and_a_zero_instead_of_minus_infinity():
    assert_rejects("06.1", lambda s: torch.softmax(s, dim=-1), "largest difference")
    assert_rejects("06.1", lambda s: torch.softmax(s.masked_fill(causal_mask(s.shape[-1]), 0.0), dim=-1),
                   "largest difference")


# --- 06.2 zero after the softmax, then renormalise -------------------------------------------------

def renormalise(weights):
    kept = weights * torch.tril(torch.ones(weights.shape[-2:]))
    return kept / kept.sum(dim=-1, keepdim=True)


def test_06_2_accepts_renormalising_each_row():
    assert_accepts("06.2", renormalise)


def test_06_2_rejects_forgetting_to_renormalise():
    assert_rejects("06.2", lambda w: w * torch.tril(torch.ones(w.shape[-2:])), "case 1 (T = 4)")


def test_06_2_rejects_renormalising_columns_and_the_wrong_triangle():
    def columns(w):
        kept = w * torch.tril(torch.ones(w.shape[-2:]))
        return kept / kept.sum(dim=-2, keepdim=True)

    assert_rejects("06.2", columns, "largest difference")

    def upper(w):
        kept = w * torch.triu(torch.ones(w.shape[-2:]))
        return kept / kept.sum(dim=-1, keepdim=True)

    assert_rejects("06.2", upper, "largest difference")


# --- 06.3 CausalAttention.forward ------------------------------------------------------------------

class Template(nn.Module):
    """The exercise's template: __init__ is given, the learner writes forward."""

    def __init__(self, d_in, d_out, context_length, dropout=0.0, qkv_bias=False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)


class Right(Template):
    def forward(self, x):
        T = x.shape[1]
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
        scores = q @ k.transpose(1, 2) / math.sqrt(k.shape[-1])
        weights = torch.softmax(scores.masked_fill(self.mask[:T, :T], float("-inf")), dim=-1)
        return self.dropout(weights) @ v


def test_06_3_accepts_the_lecture_forward_and_a_subclass_of_utils():
    assert_accepts("06.3", Right)

    import utils.attention

    class Subclass(utils.attention.CausalAttention):
        def forward(self, x):
            T = x.shape[1]
            scores = self.W_query(x) @ self.W_key(x).transpose(1, 2)
            scores = scores.masked_fill(self.mask[:T, :T], -torch.inf) / self.W_key.out_features ** 0.5
            return self.dropout(torch.softmax(scores, dim=-1)) @ self.W_value(x)

    assert_accepts("06.3", Subclass)


def test_06_3_rejects_a_mask_that_is_not_cut_to_the_sequence():
    class Uncropped(Template):
        def forward(self, x):
            q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            scores = (q @ k.transpose(1, 2)).masked_fill(self.mask, float("-inf")) / math.sqrt(k.shape[-1])
            return self.dropout(torch.softmax(scores, dim=-1)) @ v

    text = assert_rejects("06.3", Uncropped, "case 2 (T = 4 < context_length = 6")
    assert "RuntimeError" in text and "masked_fill(self.mask" in text


def test_06_3_rejects_a_mask_that_hides_the_token_itself():
    class Diagonal(Template):
        def forward(self, x):
            T = x.shape[1]
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=0)
            q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            scores = (q @ k.transpose(1, 2)).masked_fill(mask, float("-inf")) / math.sqrt(k.shape[-1])
            return self.dropout(torch.softmax(scores, dim=-1)) @ v

    assert_rejects("06.3", Diagonal, "case 1 (the lecture's batch")


def test_06_3_rejects_masking_after_the_softmax_without_renormalising():
    class ZeroAfter(Template):
        def forward(self, x):
            T = x.shape[1]
            q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(k.shape[-1]), dim=-1)
            return self.dropout(weights.masked_fill(self.mask[:T, :T], 0.0)) @ v

    assert_rejects("06.3", ZeroAfter, "largest difference")


def test_06_3_rejects_dropout_on_the_context_or_twice():
    class DropContext(Template):
        def forward(self, x):
            T = x.shape[1]
            q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            scores = (q @ k.transpose(1, 2) / math.sqrt(k.shape[-1])).masked_fill(self.mask[:T, :T], -torch.inf)
            return self.dropout(torch.softmax(scores, dim=-1) @ v)

    assert_rejects("06.3", DropContext, "case 4 (training mode, dropout 0.5")

    class DropTwice(Right):
        def forward(self, x):
            return self.dropout(super().forward(x))

    assert_rejects("06.3", DropTwice, "case 4 (training mode")


def test_06_3_rejects_a_missing_scale_and_a_persistent_mask():
    class NoScale(Template):
        def forward(self, x):
            T = x.shape[1]
            q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            scores = (q @ k.transpose(1, 2)).masked_fill(self.mask[:T, :T], float("-inf"))
            return self.dropout(torch.softmax(scores, dim=-1)) @ v

    assert_rejects("06.3", NoScale, "case 1 (the lecture's batch")

    class PersistentMask(Right):  # the mask in the state_dict: not the layout the checker loads
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self.mask
            self.register_buffer("mask", causal_mask(args[2]))

    assert_rejects("06.3", PersistentMask, "keep the attribute names")


# --- 06.4 number of windows ------------------------------------------------------------------------

def test_06_4_accepts_the_int_formula():
    assert_accepts("06.4", lambda n, T, s: (n - T - 1) // s + 1)


def test_06_4_rejects_a_float_count():
    assert_rejects("06.4", lambda n, T, s: (n - T - 1) / s + 1, "return an int")
    assert_rejects("06.4", lambda n, T, s: float((n - T - 1) // s + 1), "return an int")


def test_06_4_rejects_off_by_one_formulas():
    assert_rejects("06.4", lambda n, T, s: (n - T) // s + 1, "expected 6, got 7")  # forgets the last target
    assert_rejects("06.4", lambda n, T, s: (n - T - 1) // s, "expected 6, got 5")
    assert_rejects("06.4", lambda n, T, s: n // s, "is wrong")

"""Lecture 05 checkers accept the right answers and reject the wrong ones learners write."""

import math

import pytest
import torch
from torch import nn

from checker_tools import assert_accepts, assert_rejects
from utils.attention import SelfAttention


# --- 05.1 scaled dot-product attention ---------------------------------------------------------

def attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def test_05_1_accepts_the_formula():
    assert_accepts("05.1", attention)
    assert_accepts("05.1", lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v))


@pytest.mark.filterwarnings("ignore:The use of `x.T`")
def test_05_1_rejects_wrong_answers():
    assert_rejects("05.1", lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v,
                   "the lecture's sizes")                                                  # no scaling
    assert_rejects("05.1", lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], dim=-1) @ v,
                   "the lecture's sizes")                                                  # by d_k
    assert_rejects("05.1", lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]),
                                                         dim=-2) @ v)                       # over the queries
    assert_rejects("05.1", lambda q, k, v: torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1) @ v,
                   "a batch")                                                              # k.T on a batch
    assert_rejects("05.1", lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(v.shape[-1]),
                                                         dim=-1) @ v, "d_v = 5 != d_k = 16")  # sqrt(d_v)


# --- 05.2 SelfAttention.forward ----------------------------------------------------------------

class Template(nn.Module):
    """The notebook's template: the attribute names are fixed."""

    def __init__(self, d_in, d_out, qkv_bias=False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)


def make(forward):
    return type("Answer", (Template,), {"forward": forward})


def right(self, x):
    queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
    scores = queries @ keys.transpose(-2, -1)
    return torch.softmax(scores / math.sqrt(keys.shape[-1]), dim=-1) @ values


def test_05_2_accepts_the_forward_pass():
    assert_accepts("05.2", make(right))

    class Subclass(SelfAttention):  # overriding the utils class's forward works too
        def forward(self, x):
            return right(self, x)

    assert_accepts("05.2", Subclass)


def test_05_2_stub_is_not_attempted(capsys):
    from utils.exercises import check

    def stub(self, x):
        raise NotImplementedError

    assert not check("05.2", make(stub))
    assert "not attempted yet" in capsys.readouterr().out


def test_05_2_rejects_a_missing_or_wrong_scale():
    def unscaled(self, x):
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v

    def by_d_k(self, x):
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
        return torch.softmax(q @ k.transpose(-2, -1) / k.shape[-1], dim=-1) @ v

    def by_sqrt_d_in(self, x):
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(x.shape[-1]), dim=-1) @ v

    assert_rejects("05.2", make(unscaled), "the lecture's X")
    assert_rejects("05.2", make(by_d_k), "the lecture's X")
    assert_rejects("05.2", make(by_sqrt_d_in), "the lecture's X")


def test_05_2_rejects_the_wrong_softmax_axis():
    def dim0(self, x):
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=0) @ v

    def dim_minus_2(self, x):
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=-2) @ v

    assert_rejects("05.2", make(dim0), "the lecture's X")
    assert_rejects("05.2", make(dim_minus_2), "the lecture's X")


def test_05_2_rejects_raw_weights_not_transposed():
    def raw_weight(self, x):  # nn.Linear's weight is (d_out, d_in): x @ weight needs .T
        q, k, v = x @ self.W_query.weight, x @ self.W_key.weight, x @ self.W_value.weight
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=-1) @ v

    text = assert_rejects("05.2", make(raw_weight), "RuntimeError")   # d_in != d_out: shapes clash
    assert "in your code, line" in text

    def raw_weight_square(self, x):  # same slip, but only run where it does not crash
        if self.W_query.weight.shape[0] != self.W_query.weight.shape[1]:
            return right(self, x)
        return raw_weight(self, x)

    assert_rejects("05.2", make(raw_weight_square), "square weights")

    def transposed_no_bias(self, x):  # .T is right, but the bias is forgotten
        q, k, v = x @ self.W_query.weight.T, x @ self.W_key.weight.T, x @ self.W_value.weight.T
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=-1) @ v

    assert_rejects("05.2", make(transposed_no_bias), "qkv_bias=True")


def test_05_2_rejects_a_forgotten_value_projection():
    def no_values(self, x):
        q, k = self.W_query(x), self.W_key(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=-1) @ x

    assert_rejects("05.2", make(no_values), "the lecture's X")

    def no_values_square(self, x):
        if x.shape[-1] != self.W_value.out_features:
            return right(self, x)
        return no_values(self, x)

    assert_rejects("05.2", make(no_values_square), "square weights")

    def keys_as_values(self, x):
        q, k = self.W_query(x), self.W_key(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=-1) @ k

    assert_rejects("05.2", make(keys_as_values), "the lecture's X")


@pytest.mark.filterwarnings("ignore:The use of `x.T`")
def test_05_2_rejects_renamed_attributes_and_k_T_on_a_batch():
    class Renamed(nn.Module):
        def __init__(self, d_in, d_out, qkv_bias=False):
            super().__init__()
            self.q = nn.Linear(d_in, d_out, bias=qkv_bias)
            self.k = nn.Linear(d_in, d_out, bias=qkv_bias)
            self.v = nn.Linear(d_in, d_out, bias=qkv_bias)

        def forward(self, x):
            q, k, v = self.q(x), self.k(x), self.v(x)
            return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1]), dim=-1) @ v

    assert_rejects("05.2", Renamed, "keep the attribute names")

    def k_T(self, x):  # .T transposes a (T, d) matrix, but reverses all three dimensions of a batch
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
        return torch.softmax(q @ k.T / math.sqrt(k.shape[-1]), dim=-1) @ v

    assert_rejects("05.2", make(k_T), "a batch")


# --- 05.3 the parameter count ------------------------------------------------------------------

def test_05_3_accepts_the_formula():
    assert_accepts("05.3", lambda d_in, d_out, qkv_bias: 3 * d_in * d_out + (3 * d_out if qkv_bias else 0))


def test_05_3_rejects_wrong_counts():
    assert_rejects("05.3", lambda d_in, d_out, qkv_bias: 3 * d_in * d_out, "with biases")          # no biases
    assert_rejects("05.3", lambda d_in, d_out, qkv_bias: 3 * d_in * d_out + (d_out if qkv_bias else 0),
                   "with biases")                                                                  # one bias
    assert_rejects("05.3", lambda d_in, d_out, qkv_bias: 3.0 * d_in * d_out + (3 * d_out if qkv_bias else 0),
                   "return an int")                                                                # a float
    assert_rejects("05.3", lambda d_in, d_out, qkv_bias: d_in * d_out + (d_out if qkv_bias else 0))  # one matrix

"""Lecture 03's checkers accept the right answers and reject the wrong ones learners write."""

import torch
from torch import nn

from checker_tools import assert_accepts, assert_rejects
from utils.exercises import get_exercise
from utils.gpt import TransformerBlock

# --- 03.1: input/target windows -------------------------------------------------------------------


def make_windows(ids, context_length, stride, dtype=torch.long, shift=1):
    ids = torch.as_tensor(ids).to(dtype)
    starts = range(0, len(ids) - context_length, stride)
    inputs = torch.stack([ids[s:s + context_length] for s in starts])
    targets = torch.stack([ids[s + shift:s + shift + context_length] for s in starts])
    return inputs, targets


def test_03_1_accepts_long_windows():
    assert_accepts("03.1", make_windows)


def test_03_1_rejects_float_windows():
    assert_rejects("03.1", lambda *a: make_windows(*a, dtype=torch.float32), "expected dtype torch.int64")


def test_03_1_rejects_int32_windows():
    assert_rejects("03.1", lambda *a: make_windows(*a, dtype=torch.int32), "expected dtype torch.int64")


def test_03_1_rejects_targets_not_shifted_by_one():
    assert_rejects("03.1", lambda *a: make_windows(*a, shift=0), "entries differ")


def test_03_1_rejects_targets_shifted_by_two():
    def shifted_by_two(ids, context_length, stride):  # one id too far: needs context_length + 2 ids
        ids = torch.as_tensor(ids)
        starts = range(0, len(ids) - context_length - 1, stride)
        return (torch.stack([ids[s:s + context_length] for s in starts]),
                torch.stack([ids[s + 2:s + 2 + context_length] for s in starts]))

    assert_rejects("03.1", shifted_by_two)


def test_03_1_rejects_an_incomplete_last_window():
    def keeps_too_many(ids, context_length, stride):  # stops one start too late (off by one in the range)
        ids = torch.as_tensor(ids)
        starts = range(0, len(ids) - context_length + 1, stride)
        x = [ids[s:s + context_length] for s in starts]
        y = [ids[s + 1:s + 1 + context_length] for s in starts]
        return torch.nn.utils.rnn.pad_sequence(x, batch_first=True), torch.nn.utils.rnn.pad_sequence(y, batch_first=True)

    assert_rejects("03.1", keeps_too_many, "expected shape")


# --- 03.2: LayerNorm ------------------------------------------------------------------------------


class MyLayerNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased: divide by d
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


def test_03_2_accepts_the_formula():
    assert_accepts("03.2", MyLayerNorm)

    class WithVar(MyLayerNorm):
        def forward(self, x):
            mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
            return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    assert_accepts("03.2", WithVar)


def test_03_2_rejects_the_unbiased_variance():
    class Unbiased(MyLayerNorm):
        def forward(self, x):
            mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)  # torch's default divides by d - 1
            return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias

    assert_rejects("03.2", Unbiased, "largest difference")


def test_03_2_rejects_forgetting_gamma_and_beta():
    class NoAffine(MyLayerNorm):
        def forward(self, x):
            mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
            return (x - mean) / torch.sqrt(var + self.eps)

    assert_rejects("03.2", NoAffine, "case 2 (non-trivial gamma and beta)")


def test_03_2_rejects_a_variance_around_zero():
    class Uncentred(MyLayerNorm):
        def forward(self, x):
            mean = x.mean(-1, keepdim=True)
            var = (x ** 2).mean(-1, keepdim=True)  # forgot to subtract the mean
            return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias

    assert_rejects("03.2", Uncentred, "largest difference")


def test_03_2_rejects_eps_outside_the_root_and_a_fixed_eps():
    class EpsOutside(MyLayerNorm):
        def forward(self, x):
            mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
            return self.weight * (x - mean) / (torch.sqrt(var) + self.eps) + self.bias

    assert_rejects("03.2", EpsOutside)  # case 6 (tiny variance) exposes it in any case

    class FixedEps(MyLayerNorm):
        def forward(self, x):
            mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
            return self.weight * (x - mean) / torch.sqrt(var + 1e-5) + self.bias

    assert_rejects("03.2", FixedEps, "eps = 1e-3")


def test_03_2_rejects_normalising_over_the_wrong_axis():
    class WrongAxis(MyLayerNorm):
        def forward(self, x):
            mean, var = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
            return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias

    assert_rejects("03.2", WrongAxis)


def test_03_2_rejects_renamed_parameters():
    class Renamed(nn.Module):
        def __init__(self, d, eps=1e-5):
            super().__init__()
            self.gamma, self.beta, self.eps = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)), eps

        def forward(self, x):
            return x

    assert_rejects("03.2", Renamed, "keep the attribute names")


# --- 03.3: one transformer block ------------------------------------------------------------------


class MyBlock(TransformerBlock):
    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.ff(self.norm2(x)))


def test_03_3_accepts_the_pre_norm_block():
    assert_accepts("03.3", MyBlock)
    assert_accepts("03.3", TransformerBlock)


def test_03_3_rejects_a_post_norm_block():
    class PostNorm(TransformerBlock):
        def forward(self, x):
            x = self.norm1(x + self.drop(self.attn(x)))
            return self.norm2(x + self.drop(self.ff(x)))

    assert_rejects("03.3", PostNorm, "case 1")


def test_03_3_rejects_the_residual_around_the_wrong_thing():
    class ResidualOfNorm(TransformerBlock):  # adds the normalised x instead of x
        def forward(self, x):
            h = self.norm1(x)
            x = h + self.drop(self.attn(h))
            h = self.norm2(x)
            return h + self.drop(self.ff(h))

    assert_rejects("03.3", ResidualOfNorm, "case 1")

    class Parallel(TransformerBlock):  # both halves read the block's input (the FFN misses the attention)
        def forward(self, x):
            return x + self.drop(self.attn(self.norm1(x))) + self.drop(self.ff(self.norm2(x)))

    assert_rejects("03.3", Parallel, "case 1")

    class NoResidual(TransformerBlock):
        def forward(self, x):
            x = self.drop(self.attn(self.norm1(x)))
            return self.drop(self.ff(self.norm2(x)))

    assert_rejects("03.3", NoResidual, "case 1")


def test_03_3_rejects_forgetting_dropout_in_training_mode():
    class NoDropout(TransformerBlock):
        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.ff(self.norm2(x))

    assert_rejects("03.3", NoDropout, "case 3 (training mode")

    class DropoutOnce(TransformerBlock):
        def forward(self, x):
            x = x + self.drop(self.attn(self.norm1(x)))
            return x + self.ff(self.norm2(x))

    assert_rejects("03.3", DropoutOnce, "case 3 (training mode")


def test_03_3_rejects_the_same_norm_twice():
    class OneNorm(TransformerBlock):
        def forward(self, x):
            x = x + self.drop(self.attn(self.norm1(x)))
            return x + self.drop(self.ff(self.norm1(x)))

    assert_rejects("03.3", OneNorm, "case 1")


# --- 03.4: greedy generation ----------------------------------------------------------------------


@torch.no_grad()
def greedy_generate(model, idx, max_new_tokens, crop=lambda idx, T: idx[:, -T:], position=-1):
    for _ in range(max_new_tokens):
        logits = model(crop(idx, model.cfg.context_length))[:, position, :]
        idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def test_03_4_accepts_greedy_generation():
    assert_accepts("03.4", greedy_generate)


def test_03_4_rejects_no_crop_and_the_wrong_crop():
    assert_rejects("03.4", lambda m, i, n: greedy_generate(m, i, n, crop=lambda idx, T: idx), "raised ValueError")
    assert_rejects("03.4", lambda m, i, n: greedy_generate(m, i, n, crop=lambda idx, T: idx[:, :T]), "case 2")


def test_03_4_rejects_the_first_positions_logits():
    assert_rejects("03.4", lambda m, i, n: greedy_generate(m, i, n, position=0))


def test_03_4_rejects_returning_only_the_new_tokens():
    assert_rejects("03.4", lambda m, i, n: greedy_generate(m, i, n)[:, i.shape[1]:], "expected shape")


def test_03_4_case_building_keeps_the_global_random_state():
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    for key in ("03.1", "03.2", "03.3", "03.4"):
        get_exercise(key).cases()
    assert torch.equal(torch.random.get_rng_state(), before)

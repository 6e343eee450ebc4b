"""Lecture 23's checkers accept the right answers and reject the wrong answers learners write."""

import torch
import torch.nn.functional as F

from checker_tools import assert_accepts, assert_rejects

IGNORE = -100

# --- 23.1: multi-token targets -------------------------------------------------------------------


def right_targets(idx, n):
    B, T = idx.shape
    targets = torch.full((B, T, n), IGNORE, dtype=torch.long)
    for j in range(n):
        targets[:, : T - 1 - j, j] = idx[:, 1 + j:]
    return targets


def test_23_1_accepts():
    assert_accepts("23.1", right_targets)

    def with_pad_and_unfold(idx, n):
        padded = F.pad(idx, (0, n), value=IGNORE)              # (B, T + n)
        return padded[:, 1:].unfold(1, n, 1)[:, : idx.shape[1]]  # (B, T, n)

    assert_accepts("23.1", with_pad_and_unfold)


def test_23_1_rejects_off_by_one_shift():
    def off_by_one(idx, n):  # head j gets token t + j: head 0 copies the input
        B, T = idx.shape
        targets = torch.full((B, T, n), IGNORE, dtype=torch.long)
        for j in range(n):
            targets[:, : T - j, j] = idx[:, j:]
        return targets

    assert_rejects("23.1", off_by_one)


def test_23_1_rejects_wrap_around():
    def wrapped(idx, n):  # torch.roll brings the first tokens back as targets of the last positions
        return torch.stack([torch.roll(idx, -(1 + j), dims=1) for j in range(n)], dim=-1)

    assert_rejects("23.1", wrapped)


def test_23_1_rejects_wrong_axis_order():
    def heads_first(idx, n):  # (B, n, T) instead of (B, T, n)
        return right_targets(idx, n).transpose(1, 2)

    assert_rejects("23.1", heads_first)


def test_23_1_rejects_zero_padding():
    def zero_pad(idx, n):  # token 0 is a real id, not "no target"
        t = right_targets(idx, n)
        return t.masked_fill(t == IGNORE, 0)

    assert_rejects("23.1", zero_pad)


# --- 23.2: multi-token loss ----------------------------------------------------------------------


def right_loss(logits, targets):
    n = logits.shape[2]
    return sum(F.cross_entropy(logits[:, :, j].flatten(0, 1), targets[:, :, j].flatten(), ignore_index=IGNORE)
               for j in range(n)) / n


def test_23_2_accepts():
    assert_accepts("23.2", right_loss)

    def masked_by_hand(logits, targets):
        logp = logits.log_softmax(-1)
        valid = targets != IGNORE
        nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid  # (B, T, n)
        return (nll.sum(dim=(0, 1)) / valid.sum(dim=(0, 1))).mean()

    assert_accepts("23.2", masked_by_hand)


def test_23_2_rejects_sum_over_heads():
    def summed(logits, targets):
        return right_loss(logits, targets) * logits.shape[2]

    assert_rejects("23.2", summed)


def test_23_2_rejects_ignored_positions_in_the_mean():
    def zeros_counted(logits, targets):  # reduction="none" gives 0 at ignored positions; .mean() counts them
        n = logits.shape[2]
        return sum(F.cross_entropy(logits[:, :, j].flatten(0, 1), targets[:, :, j].flatten(), ignore_index=IGNORE,
                                   reduction="none").mean() for j in range(n)) / n

    assert_rejects("23.2", zeros_counted)


def test_23_2_rejects_ignore_as_token_zero():
    def clamped(logits, targets):  # the missing targets scored as token 0
        return right_loss(logits, targets.clamp(min=0))

    assert_rejects("23.2", clamped)


def test_23_2_rejects_one_flat_mean():
    def flat(logits, targets):  # weights head j by its number of targets instead of 1 / n
        return F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=IGNORE)

    assert_rejects("23.2", flat)

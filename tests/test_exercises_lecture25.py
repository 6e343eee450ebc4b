"""Lecture 25's checkers accept the right answers and reject the wrong answers learners write."""

import torch

from checker_tools import assert_accepts, assert_rejects
from utils.exercises.lecture25 import MTPDepth

# --- 25.1: depth k of the MTP as a module ---------------------------------------------------------


class Right(MTPDepth):
    def forward(self, h_prev, idx, k):
        emb = self.tok_emb(idx[:, k:k + h_prev.shape[1]])
        h = self.block(self.eh_proj(torch.cat([self.hnorm(h_prev), self.enorm(emb)], dim=-1)))
        return h, self.out_head(self.final_norm(h))


class EmbeddingFirst(MTPDepth):  # vLLM's [emb; hidden] order with the paper's weights
    def forward(self, h_prev, idx, k):
        emb = self.tok_emb(idx[:, k:k + h_prev.shape[1]])
        h = self.block(self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h_prev)], dim=-1)))
        return h, self.out_head(self.final_norm(h))


class PreviousToken(MTPDepth):  # t_{i+k-1}: the token the previous depth already had
    def forward(self, h_prev, idx, k):
        emb = self.tok_emb(idx[:, k - 1:k - 1 + h_prev.shape[1]])
        h = self.block(self.eh_proj(torch.cat([self.hnorm(h_prev), self.enorm(emb)], dim=-1)))
        return h, self.out_head(self.final_norm(h))


class NoHeadNorm(MTPDepth):  # the shared head without the final norm
    def forward(self, h_prev, idx, k):
        emb = self.tok_emb(idx[:, k:k + h_prev.shape[1]])
        h = self.block(self.eh_proj(torch.cat([self.hnorm(h_prev), self.enorm(emb)], dim=-1)))
        return h, self.out_head(h)


class NoBlock(MTPDepth):
    def forward(self, h_prev, idx, k):
        emb = self.tok_emb(idx[:, k:k + h_prev.shape[1]])
        h = self.eh_proj(torch.cat([self.hnorm(h_prev), self.enorm(emb)], dim=-1))
        return h, self.out_head(self.final_norm(h))


class NoInputNorms(MTPDepth):
    def forward(self, h_prev, idx, k):
        emb = self.tok_emb(idx[:, k:k + h_prev.shape[1]])
        h = self.block(self.eh_proj(torch.cat([h_prev, emb], dim=-1)))
        return h, self.out_head(self.final_norm(h))


class Renamed(torch.nn.Module):  # own attribute names: the reference weights cannot be loaded
    def __init__(self, cfg):
        super().__init__()
        self.inner = MTPDepth(cfg)

    def forward(self, h_prev, idx, k):
        return self.inner(h_prev, idx, k)


def test_25_1_accepts():
    assert_accepts("25.1", Right)


def test_25_1_rejects_embedding_first():
    assert_rejects("25.1", EmbeddingFirst)


def test_25_1_rejects_token_off_by_one():
    assert_rejects("25.1", PreviousToken)


def test_25_1_rejects_missing_parts():
    assert_rejects("25.1", NoHeadNorm)
    assert_rejects("25.1", NoBlock)
    assert_rejects("25.1", NoInputNorms)


def test_25_1_rejects_other_names():
    assert_rejects("25.1", Renamed, "attribute names")


# --- 25.2: greedy acceptance ------------------------------------------------------------------------


def right_accept(draft, logits):
    greedy = logits.argmax(dim=-1)
    n = 0
    while n < len(draft) and draft[n] == greedy[n]:
        n += 1
    return n, int(greedy[n])


def test_25_2_accepts():
    assert_accepts("25.2", right_accept)

    def vectorised(draft, logits):
        greedy = logits.argmax(-1)
        ok = (draft == greedy[:-1]).long().cumprod(0)
        n = int(ok.sum())
        return n, int(greedy[n])

    assert_accepts("25.2", vectorised)


def test_25_2_rejects_accepting_after_a_rejection():
    def count_matches(draft, logits):
        greedy = logits.argmax(-1)
        n = int((draft == greedy[:-1]).sum())
        first_bad = next((j for j in range(len(draft)) if draft[j] != greedy[j]), len(draft))
        return n, int(greedy[first_bad])

    assert_rejects("25.2", count_matches, "three drafts, second rejected")


def test_25_2_rejects_keeping_the_rejected_draft():
    def keep_draft(draft, logits):
        greedy = logits.argmax(-1)
        n = 0
        while n < len(draft) and draft[n] == greedy[n]:
            n += 1
        return n, int(draft[n]) if n < len(draft) else int(greedy[n])

    assert_rejects("25.2", keep_draft)


def test_25_2_rejects_off_by_one_rows():
    def shifted(draft, logits):  # compares draft j with row j + 1 (the prediction one position later)
        greedy = logits.argmax(-1)
        n = 0
        while n < len(draft) and draft[n] == greedy[n + 1]:
            n += 1
        return n, int(greedy[min(n + 1, len(draft))])

    assert_rejects("25.2", shifted)


def test_25_2_rejects_no_free_token():
    def last_draft(draft, logits):  # all accepted: returns the last draft again instead of row n's argmax
        greedy = logits.argmax(-1)
        n = 0
        while n < len(draft) and draft[n] == greedy[n]:
            n += 1
        return n, int(greedy[min(n, len(draft) - 1)])

    assert_rejects("25.2", last_draft)


def test_25_2_rejects_tensors():
    def tensors(draft, logits):
        greedy = logits.argmax(-1)
        n = 0
        while n < len(draft) and draft[n] == greedy[n]:
            n += 1
        return torch.tensor(n), greedy[n]

    assert_rejects("25.2", tensors, "int")


# --- 25.3: MTP targets -------------------------------------------------------------------------------


def right_targets(idx, depth):
    B, T = idx.shape
    n = T - depth
    out = torch.full((B, n, depth), -100, dtype=torch.long)
    for k in range(1, depth + 1):
        for i in range(n):
            if i + k + 1 < T:
                out[:, i, k - 1] = idx[:, i + k + 1]
    return out


def test_25_3_accepts():
    assert_accepts("25.3", right_targets)


def test_25_3_rejects_off_by_one():
    def next_token_only(idx, depth):  # depth k at position i gets t_{i+k} (the input token, not the target)
        B, T = idx.shape
        n = T - depth
        out = torch.full((B, n, depth), -100, dtype=torch.long)
        for k in range(1, depth + 1):
            out[:, :, k - 1] = idx[:, k:k + n]
        return out

    assert_rejects("25.3", next_token_only)


def test_25_3_rejects_wrap_around():
    def rolled(idx, depth):
        n = idx.shape[1] - depth
        return torch.stack([idx.roll(-(k + 1), dims=1)[:, :n] for k in range(1, depth + 1)], dim=2)

    assert_rejects("25.3", rolled)


def test_25_3_rejects_zero_padding():
    def zeros(idx, depth):
        return right_targets(idx, depth).clamp(min=0)

    assert_rejects("25.3", zeros)


def test_25_3_rejects_every_position():
    def all_positions(idx, depth):  # (B, T - 1, D): positions that lack some depth's input token kept
        B, T = idx.shape
        out = torch.full((B, T - 1, depth), -100, dtype=torch.long)
        for k in range(1, depth + 1):
            out[:, :T - k - 1, k - 1] = idx[:, k + 1:]
        return out

    assert_rejects("25.3", all_positions, "shape")

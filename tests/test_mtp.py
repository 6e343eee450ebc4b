"""Lecture 23: parallel multi-token heads (utils.mtp)."""

import pytest
import torch
import torch.nn.functional as F

from utils.gpt import GPTConfig, GPTModel
from utils.mtp import (IGNORE_INDEX, MultiTokenGPT, expected_tokens_per_step, multi_token_loss,
                       multi_token_targets, per_head_losses)
from utils.train import lm_loss

CFG = GPTConfig(vocab_size=50, context_length=16, d_model=16, n_heads=2, n_layers=3, dropout=0.0)


def _gpt(seed=0, cfg=CFG):
    torch.manual_seed(seed)
    return GPTModel(cfg).eval()


def test_targets_by_hand():
    idx = torch.tensor([[10, 11, 12, 13, 14]])
    X = IGNORE_INDEX
    expected = torch.tensor([[[11, 12, 13], [12, 13, 14], [13, 14, X], [14, X, X], [X, X, X]]])
    assert torch.equal(multi_token_targets(idx, 3), expected)
    assert torch.equal(multi_token_targets(idx, 1)[..., 0], torch.tensor([[11, 12, 13, 14, X]]))
    assert multi_token_targets(idx, 2, ignore_index=-1)[0, -1].tolist() == [-1, -1]


def test_targets_match_a_double_loop():
    idx = torch.randint(0, 9, (3, 7), generator=torch.Generator().manual_seed(1))
    got = multi_token_targets(idx, 4)
    for b in range(3):
        for t in range(7):
            for j in range(4):
                want = idx[b, t + 1 + j].item() if t + 1 + j < 7 else IGNORE_INDEX
                assert got[b, t, j].item() == want


def test_n1_equals_plain_gpt_next_token_loss():
    gpt = _gpt()
    ref = GPTModel(CFG).eval()
    ref.load_state_dict(gpt.state_dict())  # copied weights
    mtp = MultiTokenGPT(gpt, 1).eval()
    idx = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    logits = mtp(idx)
    assert logits.shape == (2, 12, 1, CFG.vocab_size)
    torch.testing.assert_close(logits[:, :, 0], ref(idx))
    torch.testing.assert_close(mtp.loss(idx), lm_loss(ref(idx)[:, :-1], idx[:, 1:]))


def test_head0_is_the_wrapped_gpt_and_heads_share_the_unembedding():
    gpt = _gpt(3)
    mtp = MultiTokenGPT(gpt, 3).eval()
    idx = torch.randint(0, CFG.vocab_size, (2, 10), generator=torch.Generator().manual_seed(4))
    logits = mtp(idx)
    assert logits.shape == (2, 10, 3, CFG.vocab_size)
    torch.testing.assert_close(logits[:, :, 0], gpt(idx))
    assert len(mtp.trunk) == CFG.n_layers - 1 and len(mtp.heads) == 3
    assert mtp.heads[0] is gpt.blocks[-1]
    shared = {id(p) for p in gpt.out_head.parameters()}
    assert sum(id(p) in shared for p in mtp.parameters()) == 1  # counted once, not copied
    n_block = sum(p.numel() for p in gpt.blocks[-1].parameters())
    assert sum(p.numel() for p in mtp.parameters()) == sum(p.numel() for p in gpt.parameters()) + 2 * n_block
    # head j by hand: trunk once, then block j, shared norm and head
    z = gpt.embed(idx)
    for block in gpt.blocks[:-1]:
        z = block(z)
    for j, head in enumerate(mtp.heads):
        torch.testing.assert_close(logits[:, :, j], gpt.out_head(gpt.final_norm(head(z))))
    assert not torch.allclose(logits[:, :, 1], logits[:, :, 2])  # independent heads


def test_loss_is_mean_of_per_head_cross_entropies():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 3, 7, generator=g)
    idx = torch.randint(0, 7, (2, 6), generator=g)
    targets = multi_token_targets(idx, 3)
    by_hand = []
    for j in range(3):
        terms = [F.cross_entropy(logits[b, t, j], idx[b, t + 1 + j]) for b in range(2) for t in range(6 - 1 - j)]
        by_hand.append(torch.stack(terms).mean())
    torch.testing.assert_close(per_head_losses(logits, targets), torch.stack(by_hand))
    torch.testing.assert_close(multi_token_loss(logits, targets), torch.stack(by_hand).mean())


def test_expected_tokens_per_step():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 4.0
    assert expected_tokens_per_step(0.5, 3) == pytest.approx(1.75)
    assert expected_tokens_per_step(0.8, 4) == pytest.approx((1 - 0.8 ** 4) / (1 - 0.8))


@pytest.mark.parametrize("call, fragment", [
    (lambda: multi_token_targets(torch.arange(5).unsqueeze(0), 0), "n_future"),
    (lambda: multi_token_targets(torch.arange(5).unsqueeze(0), 5), "at least"),
    (lambda: multi_token_targets(torch.arange(5), 2), "unsqueeze"),
    (lambda: multi_token_targets(torch.arange(5.0).unsqueeze(0), 2), "LongTensor"),
    (lambda: multi_token_loss(torch.zeros(2, 5, 7), torch.zeros(2, 5, 1, dtype=torch.long)), r"unsqueeze\(2\)"),
    (lambda: multi_token_loss(torch.zeros(2, 5, 3, 7), torch.zeros(2, 5, 2, dtype=torch.long)), "multi_token_targets"),
    (lambda: multi_token_loss(torch.zeros(1, 2, 2, 7), multi_token_targets(torch.tensor([[1, 2]]), 1).expand(1, 2, 2)
                              .clone().index_fill_(2, torch.tensor([1]), IGNORE_INDEX)), "no target"),
    (lambda: MultiTokenGPT(_gpt(), 0), "n_future"),
    (lambda: MultiTokenGPT(torch.nn.Linear(2, 2), 2), "GPTModel"),
    (lambda: MultiTokenGPT(_gpt(), 2)(torch.zeros(1, 17, dtype=torch.long)), "context_length"),
    (lambda: expected_tokens_per_step(1.5, 2), "probability"),
])
def test_bad_input(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()

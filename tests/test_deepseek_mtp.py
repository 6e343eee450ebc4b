"""Lecture 24: DeepSeek-V3's sequential MTP modules (utils.deepseek_mtp)."""

import pytest
import torch
import torch.nn.functional as F

from utils.deepseek_mtp import IGNORE_INDEX, DeepSeekMTP, MTPModule, mtp_loss, mtp_targets
from utils.gpt import GPTConfig, GPTModel


def lecture_model(depth=3, vocab=5000, d=8):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab, context_length=16, d_model=d, n_heads=2, n_layers=2, dropout=0.0)
    return DeepSeekMTP(GPTModel(cfg), depth).eval()


def test_lecture_shapes():
    m = lecture_model()
    idx = torch.randint(0, 5000, (1, 8), generator=torch.Generator().manual_seed(1))
    main, mtp = m(idx)
    assert main.shape == (1, 8, 5000)
    assert mtp.shape == (1, 5, 3, 5000)  # (B, T - D, D, V)
    assert mtp_targets(idx, 3).shape == (1, 5, 3)


def test_shared_tensors_are_the_main_models():
    m = lecture_model()
    assert m.embedding is m.model.tok_emb and m.shared_head is m.model.out_head
    own = {id(p) for p in m.mtp.parameters()}
    assert id(m.model.tok_emb.weight) not in own and id(m.model.out_head.weight) not in own
    d = 8
    block = sum(p.numel() for p in m.mtp[0].block.parameters())
    assert m.extra_parameters() == 3 * (2 * d + 2 * d * d + block)


def test_main_output_unchanged_and_modules_droppable():
    m = lecture_model()
    idx = torch.randint(0, 5000, (2, 8), generator=torch.Generator().manual_seed(2))
    main, _ = m(idx)
    torch.testing.assert_close(main, m.model(idx), rtol=0, atol=0)
    before = m.model(idx)
    m.mtp = torch.nn.ModuleList()  # dropped at inference
    torch.testing.assert_close(m.model(idx), before, rtol=0, atol=0)


def test_module_matches_equation():
    cfg = GPTConfig(vocab_size=10, context_length=8, d_model=8, n_heads=2, n_layers=1, dropout=0.0)
    torch.manual_seed(3)
    mod = MTPModule(cfg).eval()
    h, e = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    rms = lambda x: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # weights are ones
    expected = mod.block(torch.cat([rms(h), rms(e)], -1) @ mod.eh_proj.weight.T)
    torch.testing.assert_close(mod(h, e), expected)


def test_causal_chain():
    """Changing token j changes depth k's logits only at positions i >= j - k (it enters as t_{i+k})."""
    m = lecture_model()
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, 5000, (1, 8), generator=g)
    _, base = m(idx)
    for j in range(1, 8):
        other = idx.clone()
        other[0, j] = (other[0, j] + 1) % 5000
        _, new = m(other)
        for k in range(1, 4):
            changed = (new[0, :, k - 1] - base[0, :, k - 1]).abs().amax(-1) > 0
            first = max(j - k, 0)
            assert not changed[:first].any(), (j, k)
            if first < 5:
                assert changed[first:].all(), (j, k)


def test_targets_and_loss_by_hand():
    m = lecture_model()
    idx = torch.randint(0, 5000, (2, 8), generator=torch.Generator().manual_seed(5))
    _, logits = m(idx)
    t = mtp_targets(idx, 3)
    B, T, D = 2, 8, 3
    total = 0.0
    for k in range(1, D + 1):
        terms = []
        for b in range(B):
            for i in range(T - D):
                if i + k + 1 < T:
                    assert t[b, i, k - 1] == idx[b, i + k + 1]
                    terms.append(-torch.log_softmax(logits[b, i, k - 1], -1)[idx[b, i + k + 1]])
                else:
                    assert t[b, i, k - 1] == IGNORE_INDEX
        total = total + torch.stack(terms).mean()
    torch.testing.assert_close(mtp_loss(logits, t, lam=0.3), 0.3 / D * total)
    main_loss, l_mtp = m.loss(idx, lam=0.1)
    torch.testing.assert_close(l_mtp, 0.1 / D * total)
    main = m.model(idx)
    torch.testing.assert_close(main_loss, F.cross_entropy(main[:, :-1].reshape(-1, 5000), idx[:, 1:].reshape(-1)))


def test_gradients_reach_shared_and_module_weights():
    m = lecture_model(depth=1)
    idx = torch.randint(0, 5000, (1, 8), generator=torch.Generator().manual_seed(6))
    _, l_mtp = m.loss(idx)
    l_mtp.backward()
    assert m.model.out_head.weight.grad is not None and m.mtp[0].eh_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_bad_depth(depth):
    cfg = GPTConfig(vocab_size=10, context_length=8, d_model=8, n_heads=2, n_layers=1)
    with pytest.raises(ValueError, match="depth"):
        DeepSeekMTP(GPTModel(cfg), depth)


def test_bad_inputs():
    m = lecture_model()
    with pytest.raises(ValueError, match="too short"):
        m(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="too short"):
        mtp_targets(torch.zeros(1, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="unsqueeze"):
        m(torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="GPTModel"):
        DeepSeekMTP(torch.nn.Linear(2, 2), 1)
    g = lecture_model().model
    del g.out_head
    with pytest.raises(ValueError, match="shared output head"):
        DeepSeekMTP(g, 1)
    with pytest.raises(ValueError, match="targets"):
        mtp_loss(torch.zeros(1, 5, 3, 7), torch.zeros(1, 5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        MTPModule(GPTConfig(vocab_size=10, context_length=8, d_model=8, n_heads=2, n_layers=1))(
            torch.zeros(1, 3, 8), torch.zeros(1, 2, 8))

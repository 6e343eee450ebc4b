import pytest
import torch
import torch.nn.functional as F

from utils.data import make_loader
from utils.gpt import GPTConfig, GPTModel
from utils.train import cycle, evaluate_loss, lm_loss, train_steps

CFG = GPTConfig(vocab_size=12, context_length=8, d_model=16, n_heads=2, n_layers=1, dropout=0.0)


def _data():
    ids = torch.arange(300) % 12  # a repeating pattern: perfectly learnable
    return make_loader(ids, 8, batch_size=4), make_loader(ids, 8, batch_size=4, shuffle=False)


def test_lm_loss_is_flat_cross_entropy():
    logits, targets = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    manual = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).mean()
    torch.testing.assert_close(lm_loss(logits, targets), manual)


def test_training_learns_a_repeating_pattern_and_matches_a_hand_loop():
    train, val = _data()
    torch.manual_seed(0)
    model = GPTModel(CFG)
    reference = GPTModel(CFG)
    reference.load_state_dict(model.state_dict())
    before = evaluate_loss(model, val)
    log = train_steps(model, train, torch.optim.AdamW(model.parameters(), lr=1e-2), steps=60,
                      val_loader=val, eval_every=20, log=None)
    assert [s for s, _ in log.val_points] == [20, 40, 60] and len(log.train_losses) == 60
    assert log.val_points[-1][1] < before - 1.0
    # the same steps written by hand, on a fresh loader (same seed, same order), give the same losses
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    batches = cycle(_data()[0])
    for step in range(60):
        x, y = next(batches)
        loss = F.cross_entropy(reference(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert loss.item() == pytest.approx(log.train_losses[step], rel=1e-5)


def test_bad_arguments():
    train, val = _data()
    model = GPTModel(CFG)
    with pytest.raises(ValueError, match="steps"):
        train_steps(model, train, torch.optim.SGD(model.parameters(), lr=0.1), steps=0)
    with pytest.raises(ValueError, match="n_batches"):
        evaluate_loss(model, val, n_batches=0)
    with pytest.raises(ValueError, match="no batch"):
        next(cycle([]))


def test_scheduler_steps_once_per_optimizer_step():
    train, _ = _data()
    model = GPTModel(CFG)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (i + 1))
    train_steps(model, train, opt, steps=3, scheduler=sched, log=None)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0 / 4)

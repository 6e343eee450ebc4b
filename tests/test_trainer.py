"""Lecture 22's training loop: schedule, clipping, hooks, atomic checkpoints, exact resume, bad input."""

import math
import os

import pytest
import torch
from torch import nn

import utils.trainer as trainer_mod
from utils.data import make_loader
from utils.gpt import GPTConfig, GPTModel
from utils.trainer import (CheckpointError, TrainConfig, Trainer, default_loss, load_checkpoint, make_scheduler,
                           make_optimizer, save_checkpoint, train, warmup_cosine)

CFG = GPTConfig(vocab_size=12, context_length=8, d_model=16, n_heads=2, n_layers=1, dropout=0.1)
IDS = torch.arange(300) % 12  # 37 windows of 8 -> 9 batches of 4 per epoch


def _loaders(batch_size=4, val_shuffle=True):
    return (make_loader(IDS, 8, batch_size=batch_size, seed=1),
            make_loader(IDS, 8, batch_size=batch_size, shuffle=val_shuffle, seed=2))


class BiasedLM(nn.Module):
    """A tiny LM with a buffer updated by a hook (like DeepSeekMoE's correction bias) and an aux loss."""

    def __init__(self, vocab=12, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("bias", torch.zeros(vocab))
        self.last_counts = None

    def forward(self, x):
        logits = self.head(self.drop(self.emb(x))) + self.bias
        self.last_counts = torch.bincount(logits.argmax(-1).flatten(), minlength=logits.shape[-1]).float()
        return logits, 0.01 * logits.pow(2).mean()


def bias_update(step, model, history):
    """Push the bias against the over-used outputs (selection-only update, as in Lecture 21)."""
    c = model.last_counts
    model.bias -= 0.05 * torch.sign(c - c.mean())


def _config(tmp_path=None, **kw):
    base = dict(steps=24, lr=1e-2, warmup_steps=4, min_lr_ratio=0.1, grad_clip=0.5, eval_every=5,
                eval_batches=2, seed=7)
    if tmp_path is not None:
        base["checkpoint_path"] = str(tmp_path / "ckpt.pt")
    base.update(kw)
    return TrainConfig(**base)


def _model(kind):
    torch.manual_seed(0)
    return GPTModel(CFG) if kind == "gpt" else BiasedLM()


# ----------------------------------------------------------------------------------- schedule
def test_warmup_is_linear_and_cosine_ends_at_min():
    lrs = [warmup_cosine(s, 10, 4, 0.1) for s in range(10)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[-1] == pytest.approx(0.1)
    # halfway through the cosine part (3 of 6 steps): (1 + 0.1) / 2
    assert lrs[3 + 3] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))
    assert warmup_cosine(0, 5, 0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 5)))
    assert warmup_cosine(20, 10, 4, 0.1) == pytest.approx(0.1)  # kept after the end


def test_scheduler_and_history_follow_the_schedule():
    model = _model("gpt")
    cfg = _config(steps=10, eval_every=10)
    t = Trainer(model, _loaders()[0], None, cfg, log=None)
    hist = t.run()
    assert hist.lrs == pytest.approx([cfg.lr * warmup_cosine(s, 10, 4, 0.1) for s in range(10)])
    opt = make_optimizer(model, cfg)
    assert make_scheduler(opt, cfg).get_last_lr()[0] == pytest.approx(cfg.lr * 0.25)
    # matrices decay, vectors do not
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]
    assert all(p.dim() < 2 for p in opt.param_groups[1]["params"])


def test_gradient_clipping_is_applied():
    seen = []

    def grad_norm_after_step(step, model, history):  # grads are still there after optimizer.step
        seen.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())

    cfg = _config(steps=3, warmup_steps=1, grad_clip=1e-3, eval_every=3)
    hist = Trainer(_model("gpt"), _loaders()[0], None, cfg, hooks=[grad_norm_after_step], log=None).run()
    assert all(n > 1e-2 for n in hist.grad_norms)  # recorded before clipping
    assert seen == pytest.approx([1e-3] * 3, rel=1e-4)


def test_aux_losses_are_added_and_logged():
    model = BiasedLM()
    x, y = torch.randint(0, 12, (2, 8)), torch.randint(0, 12, (2, 8))
    torch.manual_seed(0)
    loss, metrics = default_loss(model, x, y)
    assert set(metrics) == {"lm", "aux_1"} and loss.item() == pytest.approx(metrics["lm"] + metrics["aux_1"])

    class DictLM(BiasedLM):
        def forward(self, x):
            logits, aux = super().forward(x)
            return {"logits": logits, "balance_loss": aux}

    loss, metrics = default_loss(DictLM(), x, y)
    assert set(metrics) == {"lm", "balance_loss"}
    hist = Trainer(BiasedLM(), *_loaders(), _config(steps=4, eval_every=2), log=None).run()
    assert len(hist.metrics["aux_1"]) == 4 and [s for s, _ in hist.val_points] == [2, 4]


# ------------------------------------------------------------------------------- exact resume
def _uninterrupted(kind, hooks=()):
    model = _model(kind)
    hist = Trainer(model, *_loaders(), _config(), hooks=hooks, log=None).run()
    return hist, model.state_dict()


@pytest.mark.parametrize("kind, stop, hooks", [
    ("gpt", 9, ()),                      # at an epoch boundary (9 batches per epoch)
    ("gpt", 13, ()),                     # mid-epoch
    ("biased", 13, (bias_update,)),      # mid-epoch, a hook updating a buffer, aux loss
], ids=["epoch-boundary", "mid-epoch", "buffer-hook"])
def test_resume_continues_with_bitwise_equal_losses(tmp_path, kind, stop, hooks):
    ref_hist, ref_state = _uninterrupted(kind, hooks)

    first = Trainer(_model(kind), *_loaders(), _config(tmp_path, checkpoint_every=stop), hooks=hooks, log=None)
    first.run(until=stop)
    torch.manual_seed(999)  # whatever happens in between must not matter
    second_model = _model(kind)
    second = Trainer(second_model, *_loaders(), _config(tmp_path, checkpoint_every=stop), hooks=hooks, log=None)
    assert second.resume() == stop
    hist = second.run()

    assert hist.train_losses == ref_hist.train_losses  # bitwise, every step
    assert hist.val_points == ref_hist.val_points and hist.lrs == ref_hist.lrs
    assert hist.metrics == ref_hist.metrics
    for k, v in second_model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    if kind == "biased":
        assert ref_state["bias"].abs().sum() > 0


def test_resume_after_a_crash_with_train(tmp_path):
    ref_hist, _ = _uninterrupted("biased", (bias_update,))
    calls = []

    def crash_at_17(step, model, history):
        bias_update(step, model, history)
        calls.append(step)
        if step == 17:
            raise KeyboardInterrupt  # killed after the step-15 checkpoint, mid-epoch

    cfg = _config(tmp_path, checkpoint_every=5)
    with pytest.raises(KeyboardInterrupt):
        train(_model("biased"), *_loaders(), cfg, hooks=[crash_at_17], log=None)
    assert load_checkpoint(cfg.checkpoint_path, BiasedLM())["step"] == 15
    with pytest.raises(FileExistsError, match="resume"):
        train(_model("biased"), *_loaders(), cfg, hooks=[bias_update], log=None)
    hist = train(_model("biased"), *_loaders(), cfg, hooks=[bias_update], resume=True, log=None)
    assert hist.train_losses == ref_hist.train_losses


def test_stateful_hooks_are_checkpointed(tmp_path):
    class Counter:
        def __init__(self):
            self.n = 0

        def after_step(self, step, model, history):
            self.n += 1

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, s):
            self.n = s["n"]

    cfg = _config(tmp_path, steps=6, checkpoint_every=3, eval_every=3)
    Trainer(_model("gpt"), *_loaders(), cfg, hooks=[Counter()], log=None).run(until=3)
    c = Counter()
    t = Trainer(_model("gpt"), *_loaders(), cfg, hooks=[c], log=None)
    t.resume()
    assert c.n == 3
    t.run()
    assert c.n == 6


# -------------------------------------------------------------------------------- checkpoints
def test_atomic_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    model = _model("gpt")
    save_checkpoint(path, model, step=1)
    before = path.read_bytes()

    def failing_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(trainer_mod.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path, model)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_bad_checkpoints_raise_clear_errors_and_load_nothing(tmp_path):
    cfg = _config(tmp_path, steps=4, eval_every=4)
    Trainer(_model("gpt"), *_loaders(), cfg, log=None).run()
    path = cfg.checkpoint_path

    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_checkpoint(tmp_path / "nope.pt", _model("gpt"))

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(path, "rb").read()[: os.path.getsize(path) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated, _model("gpt"))

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(foreign, _model("gpt"))

    other_model = GPTModel(GPTConfig(vocab_size=12, context_length=8, d_model=24, n_heads=2, n_layers=1))
    before = {k: v.clone() for k, v in other_model.state_dict().items()}
    with pytest.raises(CheckpointError, match="another model"):
        load_checkpoint(path, other_model)
    assert all(torch.equal(v, before[k]) for k, v in other_model.state_dict().items())

    model = _model("gpt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = Trainer(model, *_loaders(), _config(tmp_path, steps=4, eval_every=4, lr=5e-3), log=None)
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.01 vs now 0.005"):
        t.resume()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded

    t = Trainer(_model("gpt"), *_loaders(batch_size=2), cfg, log=None)
    with pytest.raises(CheckpointError, match="batches per epoch"):
        t.resume()


@pytest.mark.parametrize("kw, fragment", [
    (dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(warmup_steps=30), "warmup_steps"), (dict(warmup_steps=-1), "warmup_steps"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(betas=(0.9, 1.0)), "betas"), (dict(grad_clip=0.0), "grad_clip"), (dict(eval_every=0), "eval_every"),
    (dict(eval_batches=0), "eval_batches"), (dict(checkpoint_every=-1), "checkpoint_every"),
    (dict(checkpoint_every=5), "checkpoint_path"),
])
def test_bad_config_values(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        _config(**kw)


def test_bad_run_arguments_and_progress_bar(tmp_path):
    t = Trainer(_model("gpt"), *_loaders(), _config(steps=3, warmup_steps=1, eval_every=3, progress=True), log=None)
    with pytest.raises(ValueError, match="until"):
        t.run(until=4)
    assert len(t.run().train_losses) == 3
    with pytest.raises(ValueError, match="no batch"):
        Trainer(_model("gpt"), [], None, _config(steps=3, warmup_steps=1), log=None).run()
    with pytest.raises(TypeError, match="loss_fn"):
        default_loss(nn.Identity(), [1], None)

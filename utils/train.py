"""A plain language-model training loop (Lecture 03; Lecture 22 extends it in ``utils.trainer``).

Next-token cross-entropy, AdamW steps over a window loader that restarts each epoch, and a
validation loss measured on a fixed number of batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against target ids (B, T) (Lecture 03)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: Iterable, n_batches: int = 10,
                  logits_of: Callable = lambda output: output) -> float:
    """Mean :func:`lm_loss` over the first ``n_batches`` batches, dropout off (Lecture 03).

    ``logits_of`` picks the logits from the model's output (Lecture 22's models also return losses).
    """
    if n_batches <= 0:
        raise ValueError(f"n_batches must be positive, got {n_batches}.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = []
    for i, (x, y) in enumerate(loader):
        if i == n_batches:
            break
        losses.append(lm_loss(logits_of(model(x.to(device))), y.to(device)).item())
    model.train(was_training)
    if not losses:
        raise ValueError("The loader yielded no batch: use more data or a smaller batch size.")
    return sum(losses) / len(losses)


def cycle(loader: Iterable) -> Iterator:
    """Batches of ``loader`` forever, starting a new epoch (new shuffle) when one ends."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("The loader yielded no batch: use more data or a smaller batch size.")


@dataclass
class TrainLog:
    """Losses recorded by :func:`train_steps`: one per step, and (step, loss) validation points."""

    train_losses: list[float] = field(default_factory=list)
    val_points: list[tuple[int, float]] = field(default_factory=list)


def train_steps(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, steps: int,
                val_loader: Iterable | None = None, eval_every: int | None = None, eval_batches: int = 10,
                scheduler=None, log: Callable[[str], None] | None = print) -> TrainLog:
    """Run ``steps`` optimizer steps of next-token training (Lecture 03).

    ``scheduler`` (a ``torch.optim.lr_scheduler``) steps after every optimizer step. Every ``eval_every`` steps (and at the last step) the validation loss on ``eval_batches``
    batches of ``val_loader`` is recorded and a line is passed to ``log``.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}.")
    eval_every = eval_every or steps
    device = next(model.parameters()).device
    history = TrainLog()
    model.train()
    batches = cycle(loader)
    for step in range(1, steps + 1):
        x, y = next(batches)
        loss = lm_loss(model(x.to(device)), y.to(device))  # logits (B, T, V) vs targets (B, T)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        history.train_losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            recent = history.train_losses[-eval_every:]
            line = f"step {step:5d}  train loss (mean of last {len(recent)}) {sum(recent) / len(recent):.3f}"
            if val_loader is not None:
                history.val_points.append((step, evaluate_loss(model, val_loader, eval_batches)))
                model.train()
                line += f"  validation loss {history.val_points[-1][1]:.3f}"
            if log:
                log(line)
    return history

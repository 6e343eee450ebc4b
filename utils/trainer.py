"""The training loop used from Lecture 22 up to the capstone (Lecture 30).

Lecture 03's :func:`utils.train.train_steps` grown up: AdamW with decoupled weight decay, a linear
warmup followed by a cosine decay (:func:`warmup_cosine`), gradient clipping, periodic validation,
an optional tqdm progress bar, hooks (Lecture 21's DeepSeekMoE bias update, an MTP loss-weight
schedule), models whose forward returns auxiliary losses (via ``loss_fn``), atomic checkpoints and
an exact resume: a run interrupted at any step (also mid-epoch) and resumed from its checkpoint
continues with bit-for-bit the same losses as a run that was never interrupted.

What a checkpoint holds (Lecture 22): the model's ``state_dict`` (parameters and persistent buffers,
such as a MoE correction bias), the optimizer and scheduler states, the global random states
(torch, CUDA, Python, NumPy), the data position (the loader's private shuffling generator as it was
when the current epoch began, and how many batches of that epoch were used), the stateful hooks,
the history and the config. It is written to a temporary file in the same folder and then renamed
(``os.replace``), so a crash while saving leaves the previous checkpoint intact; it is read back with
``torch.load(..., weights_only=True)``, which never unpickles code.

Several processes (Lecture 30): pass a model wrapped in ``DistributedDataParallel`` and a training
loader that gives each rank its share of the global batch. The trainer then checkpoints, evaluates
and passes to hooks the wrapped module (:func:`unwrap`), records the loss averaged over the ranks
(the loss of the global batch), and only rank 0 evaluates, logs, shows the progress bar and writes
checkpoints; every rank resumes from that one checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from utils.train import TrainLog, evaluate_loss, lm_loss

CHECKPOINT_FORMAT = "llm-course-trainer-v1"
# Config fields that may change between a run and its resume (they do not change the losses).
RESUMABLE_FIELDS = ("progress", "checkpoint_path", "checkpoint_every", "eval_every", "eval_batches")


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` without one (Lecture 30)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper; any other model itself."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: truncated, not ours, or from another config (Lecture 22)."""


@dataclass
class TrainConfig:
    """Knobs of :class:`Trainer` (Lecture 22). Every value is checked when the config is built.

    ``steps`` optimizer steps in all; the learning rate rises linearly to ``lr`` over ``warmup_steps``
    steps, then follows a cosine down to ``lr * min_lr_ratio`` at the last step. ``weight_decay``
    applies to matrices only (biases, norms and 1-D parameters are not decayed). ``grad_clip`` is the
    maximum global gradient norm (``None``: no clipping). Every ``eval_every`` steps and at the last
    step the mean validation loss over ``eval_batches`` batches is recorded. With a
    ``checkpoint_path``, a checkpoint is written every ``checkpoint_every`` steps (0: only at the
    end). ``seed`` seeds torch's global generator when the trainer is built (dropout, noisy routers).
    """

    steps: int = 1000
    lr: float = 3e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_every: int = 100
    eval_batches: int = 10
    checkpoint_every: int = 0
    checkpoint_path: str | None = None
    seed: int = 123
    progress: bool = False

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(message)

        need(isinstance(self.steps, int) and self.steps > 0, f"steps must be a positive int, got {self.steps!r}.")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive finite number, got {self.lr!r}.")
        need(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= self.steps,
             f"warmup_steps must be an int between 0 and steps = {self.steps}, got {self.warmup_steps!r}.")
        need(0.0 <= self.min_lr_ratio <= 1.0,
             f"min_lr_ratio is the final lr as a fraction of lr: use a value in [0, 1], got {self.min_lr_ratio!r}.")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        self.betas = tuple(self.betas)
        need(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas!r}.")
        need(self.grad_clip is None or (self.grad_clip > 0 and math.isfinite(self.grad_clip)),
             f"grad_clip must be a positive max gradient norm, or None for no clipping; got {self.grad_clip!r}.")
        need(isinstance(self.eval_every, int) and self.eval_every > 0,
             f"eval_every must be a positive int (steps between validations), got {self.eval_every!r}.")
        need(isinstance(self.eval_batches, int) and self.eval_batches > 0,
             f"eval_batches must be a positive int, got {self.eval_batches!r}.")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
             f"checkpoint_every must be an int >= 0 (0: only at the end), got {self.checkpoint_every!r}.")
        need(self.checkpoint_every == 0 or self.checkpoint_path is not None,
             f"checkpoint_every = {self.checkpoint_every} needs a checkpoint_path to write to.")
        if self.checkpoint_path is not None:
            self.checkpoint_path = os.fspath(self.checkpoint_path)
        need(isinstance(self.seed, int), f"seed must be an int, got {self.seed!r}.")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """The learning-rate multiplier for optimizer step ``step`` (0-based) (Lecture 22).

    Warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, so the last warmup
    step uses the full rate. Then a cosine from 1 down to ``min_lr_ratio``, reached at the last step
    ``total_steps - 1`` (and kept after it). Use it with ``LambdaLR`` (see :func:`make_scheduler`).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step + 1 - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _WarmupCosine:
    """The ``LambdaLR`` multiplier as an object: its plain numbers go into the scheduler's state_dict."""

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only (Lecture 22)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`warmup_cosine`, stepped once after every optimizer step (Lecture 22)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _WarmupCosine(config.steps, config.warmup_steps, config.min_lr_ratio))


def split_output(out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split a model output into logits and named auxiliary losses (Lecture 22).

    Accepts logits; a tuple ``(logits, aux_1, ...)`` of scalar tensors (named ``aux_1``, ...); or a
    dict with a ``"logits"`` entry whose other scalar-tensor entries are auxiliary losses.
    """
    if isinstance(out, torch.Tensor):
        return out, {}
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], {f"aux_{i}": v for i, v in enumerate(out[1:], 1) if isinstance(v, torch.Tensor) and v.dim() == 0}
    if isinstance(out, dict) and "logits" in out:
        return out["logits"], {k: v for k, v in out.items()
                               if k != "logits" and isinstance(v, torch.Tensor) and v.dim() == 0}
    raise TypeError("The model returned neither logits, nor (logits, aux losses...), nor a dict with 'logits'; "
                    f"got {type(out).__name__}: pass a loss_fn(model, x, y) -> (loss, metrics) that handles it.")


def default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy plus any auxiliary losses the model returns (Lecture 22).

    Returns ``(loss, metrics)``: ``metrics["lm"]`` is the cross-entropy, and each auxiliary loss
    appears under its name (see :func:`split_output`). A custom ``loss_fn`` has the same signature.
    """
    logits, aux = split_output(model(x))
    lm = lm_loss(logits, y)
    loss = lm + sum(aux.values()) if aux else lm
    return loss, {"lm": lm.item(), **{k: v.item() for k, v in aux.items()}}


def evaluate_lm(model: nn.Module, loader: Iterable, n_batches: int = 10) -> float:
    """Mean next-token cross-entropy of the main logits over ``n_batches`` batches, dropout off (Lecture 22).

    :func:`utils.train.evaluate_loss` on the logits that :func:`split_output` picks, so it also
    works for models that return auxiliary losses.
    """
    return evaluate_loss(model, loader, n_batches, logits_of=lambda output: split_output(output)[0])


@dataclass
class TrainHistory(TrainLog):
    """What :class:`Trainer` records (Lecture 22): per step the loss, learning rate, gradient norm
    before clipping (when clipping is on) and the ``loss_fn`` metrics; ``(step, loss)`` validation points."""

    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- RNG
def _generators(loader) -> list[torch.Generator]:
    """The private generators a DataLoader shuffles with (loader, sampler, batch sampler), once each."""
    found: list[torch.Generator] = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def capture_rng() -> dict[str, Any]:
    """The global random states: torch, CUDA (if any), Python, NumPy (if installed) (Lecture 22)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_state_out(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))
    except ImportError:
        pass
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global random states saved by :func:`capture_rng` (Lecture 22)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_in(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, gauss))


def _python_state_out(s):
    return [s[0], list(s[1]), s[2]]


def _python_state_in(s):
    return (s[0], tuple(s[1]), s[2])


# ----------------------------------------------------------------------------------- checkpoints
def _signature(model: nn.Module) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()}


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over ``path``
    (``os.replace`` is atomic): a crash mid-write leaves the previous file intact (Lecture 22)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, step: int = 0, *, rng: dict | None = None, data: dict | None = None,
                    history: TrainHistory | None = None, config: TrainConfig | None = None,
                    hooks: dict | None = None) -> Path:
    """Write a checkpoint ATOMICALLY: to a temporary file in the same folder, then ``os.replace`` (Lecture 22).

    ``rng`` defaults to the current global states (:func:`capture_rng`); ``data`` is the data position
    (see :class:`Trainer`); ``hooks`` the states of stateful hooks. If anything fails while writing,
    the temporary file is removed and an earlier checkpoint at ``path`` is left as it was.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "model_signature": _signature(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng() if rng is None else rng,
        "data": data or {},
        "history": dataclasses.asdict(history) if history is not None else None,
        "config": dataclasses.asdict(config) if config is not None else None,
        "hooks": hooks or {},
    }
    return atomic_save(payload, path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, *, config: TrainConfig | None = None, map_location="cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and optimizer, scheduler) (Lecture 22).

    Everything is checked BEFORE anything is loaded, so a bad checkpoint never half-loads: a missing
    file raises ``FileNotFoundError``; an unreadable (truncated) file, a file that is not a course
    checkpoint, a model with other parameter names or shapes, or (when ``config`` is given) a config
    that differs in a field that changes training raise :class:`CheckpointError` (a ``ValueError``)
    naming the difference. Reads with ``weights_only=True``. Returns the whole payload (step, rng,
    data, history, config, hooks).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: check the path, or start a fresh run (resume=False).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage, a pickle with code in it
        raise CheckpointError(f"Checkpoint {path} cannot be read ({type(err).__name__}: {str(err)[:200]}); it is "
                              "probably truncated or corrupted: resume from an earlier one or start afresh.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by utils.trainer.save_checkpoint "
                              f"(format {CHECKPOINT_FORMAT!r}).")
    saved, mine = ckpt["model_signature"], _signature(model)
    if saved != mine:
        missing = sorted(set(mine) - set(saved))[:3]
        extra = sorted(set(saved) - set(mine))[:3]
        shapes = [f"{k}: checkpoint {saved[k]} vs model {mine[k]}" for k in mine if k in saved and saved[k] != mine[k]][:3]
        raise CheckpointError(f"Checkpoint {path} is from another model: not in checkpoint {missing}, "
                              f"not in model {extra}, different shape/dtype {shapes}. Build the model with "
                              "the config the checkpoint was trained with.")
    if config is not None:
        if ckpt["config"] is None:
            raise CheckpointError(f"Checkpoint {path} records no TrainConfig, so it cannot be checked against yours.")
        now = dataclasses.asdict(config)
        diff = [f"{k}: checkpoint {ckpt['config'].get(k)!r} vs now {now[k]!r}" for k in now
                if k not in RESUMABLE_FIELDS and _norm(ckpt["config"].get(k)) != _norm(now[k])]
        if diff:
            raise CheckpointError(f"Checkpoint {path} was written with another TrainConfig ({'; '.join(diff)}): "
                                  "resume with the same values, or start a fresh run.")
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None and ckpt[name] is None:
            raise CheckpointError(f"Checkpoint {path} holds no {name} state.")
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------------- the trainer
Hook = Callable[[int, nn.Module, TrainHistory], None]


class Trainer:
    """AdamW + warmup/cosine + clipping + validation + hooks + atomic checkpoints + exact resume (Lecture 22).

    ``loss_fn(model, x, y) -> (loss, metrics)`` computes the training loss (default :func:`default_loss`:
    cross-entropy plus the auxiliary losses the model returns). ``hooks`` are callables
    ``hook(step, model, history)`` run after every optimizer step (``step`` counts from 1), for
    example Lecture 21's bias update; or objects with optional ``before_step(step, model, history)``
    (run before step ``step``'s forward, for example an MTP loss-weight schedule) and
    ``after_step(...)`` methods, and optional ``state_dict()``/``load_state_dict()`` that checkpoints
    keep. State a hook changes in the model should live in a (persistent) buffer, so the checkpoint holds it.

    ``run(until=None)`` trains up to step ``until`` (default ``config.steps``) and can be called
    again to continue; ``resume(path)`` loads a checkpoint. With ``config.checkpoint_path`` set, a
    fresh run refuses to overwrite an existing checkpoint unless ``overwrite=True``.

    With ``DistributedDataParallel`` (Lecture 30): ``loss_fn`` gets the wrapper (so backward averages
    the gradients over the ranks), hooks, evaluation and checkpoints get :func:`unwrap` of it; only
    rank 0 evaluates, logs and saves (see the module docstring).
    """

    def __init__(self, model: nn.Module, train_loader: Iterable, val_loader: Iterable | None, config: TrainConfig,
                 *, loss_fn: Callable = default_loss, hooks: Sequence = (), log: Callable[[str], None] | None = print,
                 overwrite: bool = False):
        self.model, self.train_loader, self.val_loader, self.config = model, train_loader, val_loader, config
        self.loss_fn, self.hooks, self.log, self.overwrite = loss_fn, list(hooks), log, overwrite
        self.module = unwrap(model)  # what checkpoints, evaluation and hooks see
        self.rank, self.world_size = dist_rank_world()
        torch.manual_seed(config.seed)
        self.device = next(model.parameters()).device
        self.optimizer = make_optimizer(model, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.history = TrainHistory()
        self.step = 0
        # data position: epochs started, batches used in the current one, states when it began
        self._epoch, self._batch_in_epoch, self._epoch_start = 0, 0, None
        self._batches: Iterator | None = None

    # -- data ---------------------------------------------------------------------------------
    def _new_epoch(self) -> None:
        self._epoch_start = {"torch": torch.get_rng_state(),
                             "generators": [g.get_state() for g in _generators(self.train_loader)]}
        self._batches = iter(self.train_loader)
        self._epoch += 1
        self._batch_in_epoch = 0

    def _next_batch(self):
        if self._batches is None:
            self._new_epoch()
        try:
            batch = next(self._batches)
        except StopIteration:
            if self._batch_in_epoch == 0:
                raise ValueError("The training loader yielded no batch: use more data or a smaller batch size.") from None
            self._new_epoch()
            try:
                batch = next(self._batches)
            except StopIteration:
                raise ValueError("The training loader yielded no batch: use more data or a smaller batch size.") from None
        self._batch_in_epoch += 1
        return batch

    def _data_state(self) -> dict:
        n = len(self.train_loader) if hasattr(self.train_loader, "__len__") else -1
        return {"epoch": self._epoch, "batch_in_epoch": self._batch_in_epoch, "batches_per_epoch": n,
                "epoch_start": self._epoch_start,
                "generators": [g.get_state() for g in _generators(self.train_loader)],
                "val_generators": [g.get_state() for g in _generators(self.val_loader)] if self.val_loader is not None else []}

    def _restore_data(self, data: dict, path) -> None:
        n = len(self.train_loader) if hasattr(self.train_loader, "__len__") else -1
        if data["batches_per_epoch"] != n:
            raise CheckpointError(f"Checkpoint {path} was trained on a loader with {data['batches_per_epoch']} batches "
                                  f"per epoch, this one has {n}: resume with the same data and batch size.")
        gens = _generators(self.train_loader)
        if len(gens) != len(data["generators"]):
            raise CheckpointError(f"Checkpoint {path}: the training loader's shuffling generators differ "
                                  f"({len(data['generators'])} saved, {len(gens)} now).")
        self._epoch, self._batch_in_epoch, self._epoch_start = data["epoch"], data["batch_in_epoch"], data["epoch_start"]
        self._batches = None
        if self._epoch > 0:  # replay the current epoch's shuffle, then skip the batches already used
            now = torch.get_rng_state()
            torch.set_rng_state(self._epoch_start["torch"])
            for g, s in zip(gens, self._epoch_start["generators"]):
                g.set_state(s)
            self._batches = iter(self.train_loader)
            for _ in range(self._batch_in_epoch):
                next(self._batches)
            torch.set_rng_state(now)
        for g, s in zip(gens, data["generators"]):
            g.set_state(s)
        if self.val_loader is not None:
            for g, s in zip(_generators(self.val_loader), data["val_generators"]):
                g.set_state(s)

    # -- checkpoints -----------------------------------------------------------------------------
    def _hook_states(self) -> dict:
        return {str(i): h.state_dict() for i, h in enumerate(self.hooks) if hasattr(h, "state_dict")}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write a checkpoint of everything needed to continue exactly (default: ``config.checkpoint_path``)."""
        path = path or self.config.checkpoint_path
        if path is None:
            raise ValueError("No path given and config.checkpoint_path is None: say where to save.")
        return save_checkpoint(path, self.module, self.optimizer, self.scheduler, self.step, data=self._data_state(),
                               history=self.history, config=self.config, hooks=self._hook_states())

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load a checkpoint (default ``config.checkpoint_path``) and return its step (Lecture 22)."""
        path = path or self.config.checkpoint_path
        if path is None:
            raise ValueError("No path given and config.checkpoint_path is None: say which checkpoint to resume.")
        ckpt = load_checkpoint(path, self.module, self.optimizer, self.scheduler, config=self.config)
        self._restore_data(ckpt["data"], path)
        for i, h in enumerate(self.hooks):
            if hasattr(h, "load_state_dict") and str(i) in ckpt["hooks"]:
                h.load_state_dict(ckpt["hooks"][str(i)])
        self.history = TrainHistory(**{k: v for k, v in ckpt["history"].items()})
        self.history.val_points = [tuple(p) for p in self.history.val_points]
        self.step = ckpt["step"]
        restore_rng(ckpt["rng"])
        return self.step

    # -- training --------------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Mean validation cross-entropy over ``config.eval_batches`` batches (:func:`evaluate_lm`)."""
        if self.val_loader is None:
            raise ValueError("This trainer has no val_loader to evaluate on.")
        return evaluate_lm(self.module, self.val_loader, self.config.eval_batches)

    def _call_hooks(self, when: str, step: int) -> None:
        for h in self.hooks:
            fn = getattr(h, when, None) if not _is_plain_callable(h) else (h if when == "after_step" else None)
            if fn is not None:
                fn(step, self.module, self.history)

    def train_step(self) -> float:
        """One optimizer step on the next batch; returns its loss."""
        cfg, step = self.config, self.step + 1
        self._call_hooks("before_step", step)
        x, y = self._next_batch()
        loss, metrics = self.loss_fn(self.model, x.to(self.device), y.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.history.grad_norms.append(norm.item())
        self.history.lrs.append(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        self.step = step
        values = [loss.item()] + [float(v) for v in metrics.values()]
        if self.world_size > 1:  # record the global batch's loss: the mean over the ranks' equal shares
            values = _mean_over_ranks(values, self.device)
        self.history.train_losses.append(values[0])
        for k, v in zip(metrics, values[1:]):
            self.history.metrics.setdefault(k, []).append(v)
        self._call_hooks("after_step", step)
        return self.history.train_losses[-1]

    def run(self, until: int | None = None) -> TrainHistory:
        """Train up to step ``until`` (default and at most ``config.steps``); returns the history."""
        cfg = self.config
        until = cfg.steps if until is None else until
        if not 0 <= until <= cfg.steps:
            raise ValueError(f"until must lie between 0 and config.steps = {cfg.steps}, got {until}.")
        main = self.rank == 0  # with several processes only rank 0 evaluates, logs and saves
        if (self.step == 0 and cfg.checkpoint_path and not self.overwrite and Path(cfg.checkpoint_path).exists()):
            raise FileExistsError(f"{cfg.checkpoint_path} exists: resume from it (trainer.resume() or "
                                  "train(..., resume=True)), pass overwrite=True, or choose another checkpoint_path.")
        self.model.train()
        bar = None
        if cfg.progress and main and self.step < until:
            from tqdm.auto import tqdm
            bar = tqdm(total=until, initial=self.step, desc="training", file=sys.stderr, dynamic_ncols=True)
        write = (bar.write if bar is not None else self.log) if self.log and main else None
        try:
            while self.step < until:
                loss = self.train_step()
                step = self.step
                if main and (step % cfg.eval_every == 0 or step == cfg.steps):
                    recent = self.history.train_losses[-cfg.eval_every:]
                    line = f"step {step:5d}  train loss (mean of last {len(recent)}) {sum(recent) / len(recent):.3f}"
                    if self.val_loader is not None:
                        self.history.val_points.append((step, self.evaluate()))
                        self.model.train()
                        line += f"  validation loss {self.history.val_points[-1][1]:.3f}"
                    if write:
                        write(line + f"  lr {self.history.lrs[-1]:.2e}")
                if main and cfg.checkpoint_path and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                                            or step == cfg.steps):
                    self.save()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.history.lrs[-1]:.1e}")
        finally:
            if bar is not None:
                bar.close()
        return self.history


def _mean_over_ranks(values: list[float], device) -> list[float]:
    """All-reduce plain numbers to their mean over the ranks (Lecture 30)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return (t / torch.distributed.get_world_size()).tolist()


def _is_plain_callable(h) -> bool:
    return callable(h) and not (hasattr(h, "before_step") or hasattr(h, "after_step"))


def train(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None, config: TrainConfig, *,
          loss_fn: Callable = default_loss, hooks: Sequence = (), resume: bool | str | os.PathLike = False,
          log: Callable[[str], None] | None = print, overwrite: bool = False) -> TrainHistory:
    """Build a :class:`Trainer`, optionally resume (``True``: from ``config.checkpoint_path``; or a path),
    and run to ``config.steps`` (Lecture 22). Returns the :class:`TrainHistory`."""
    trainer = Trainer(model, train_loader, val_loader, config, loss_fn=loss_fn, hooks=hooks, log=log,
                      overwrite=overwrite)
    if resume:
        trainer.resume(None if resume is True else resume)
    return trainer.run()

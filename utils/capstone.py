"""The capstone from the command line, on one process or several (Lecture 30).

Train the mini DeepSeek (:class:`utils.model.DeepSeekModel`: MLA + DeepSeekMoE + MTP) on the shipped
TinyStories sample with Lecture 22's :class:`utils.trainer.Trainer`, without Jupyter::

    python -m utils.capstone train --config small                    # writes runs/small/checkpoint.pt
    python -m utils.capstone train --config small --resume           # continue an interrupted run
    python -m utils.capstone sample --checkpoint runs/small/checkpoint.pt --prompt "Once upon a time"
    python -m utils.capstone export --checkpoint runs/small/checkpoint.pt --to exported/small
    python -m utils.capstone ship --checkpoint runs/small/checkpoint.pt --to weights/capstone_small
    torchrun --nproc_per_node=8 -m utils.capstone train --config small   # DistributedDataParallel

The data: the TinyStories sample, split by stories (:func:`utils.data.split_stories`), the compact
GPT-2 vocabulary built from the training stories (:class:`utils.tokenizer.CompactTokenizer`). The
vocabulary, the model config and a hash of the token ids travel inside every checkpoint (a
:class:`RunRecord`), so ``sample``, ``export`` and ``--resume`` use exactly the vocabulary the model
was trained with, and a resume on other data, another vocabulary or another config is refused.

Several processes (``torchrun`` sets ``WORLD_SIZE``): gloo on CPU, nccl on CUDA. Each rank takes an
equal slice of every global batch (:class:`ShardedBatches`: the same global batches whatever the
number of ranks), ``DistributedDataParallel`` averages the gradients, the experts' loads are summed
over the ranks before the bias update (:class:`SyncedBiasUpdate`, so every rank keeps the same
bias), and rank 0 alone logs, evaluates and writes the (atomic) checkpoints that every rank resumes
from. Experts that no token of a rank's slice picks get no gradient on that rank, so DDP is built
with ``find_unused_parameters=True``: after each forward it walks the autograd graph and marks those
parameters ready, instead of waiting forever for their gradients (the price: one graph walk per step).

Early stopping: after every validation whose loss is the lowest so far, :class:`BestWeights` writes
the model's weights (atomically) to ``best.pt`` beside the checkpoint; ``ship`` writes those best
weights as ``model.safetensors`` (float32) with a ``run.json`` that says how they were made (the
command, commit, data hash, config, vocabulary, losses, wall time, machine), and
:func:`load_shipped` reads them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from utils.data import STORY_SEPARATOR, WindowDataset, encode_stories, load_corpus, make_loader, split_stories
from utils.model import DeepSeekConfig, DeepSeekModel, MTPLambdaSchedule, deepseek_loss
from utils.moe.deepseek import DeepSeekMoE, moe_layers, update_moe_biases
from utils.tokenizer import END_OF_TEXT, CompactTokenizer, CompactVocab
from utils.trainer import (CheckpointError, TrainConfig, TrainHistory, Trainer, atomic_save, dist_rank_world,
                           load_checkpoint)

RUN_FORMAT = "capstone-run-v1"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"  # the weights at the best validation loss so far, beside the checkpoint
BEST_FORMAT = "capstone-best-v1"
SHIPPED_FORMAT = "capstone-shipped-v1"
SHIPPED_WEIGHTS = "model.safetensors"
SHIPPED_RUN = "run.json"
MAX_SHIPPED_BYTES = 16 * 1024 * 1024
VOCAB_FILE = "compact_vocab.json"
SHIPPED_SMALL = Path(__file__).resolve().parents[1] / "weights" / "capstone_small"  # in the repository


# ------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class DataConfig:
    """The data of a run: corpus, story-level split, window length and the GLOBAL batch size."""

    corpus: str = "tinystories"
    val_fraction: float = 0.1
    context_length: int = 128
    batch_size: int = 16  # the global batch: every rank takes batch_size / world_size windows of it
    seed: int = 1  # the training windows' shuffle

    def __post_init__(self):
        if self.context_length <= 0 or self.batch_size <= 0:
            raise ValueError(f"context_length and batch_size must be positive, got {self.context_length} "
                             f"and {self.batch_size}.")


@dataclass(frozen=True)
class CapstoneConfig:
    """A named run: model sizes (``DeepSeekConfig.<model>``), data, Trainer knobs, the MTP schedule."""

    name: str
    model: str  # the DeepSeekConfig classmethod: "small" or "tiny"
    model_overrides: dict
    data: DataConfig
    train: TrainConfig
    mtp_switch_fraction: float = 0.7  # MTP weight 0.3, then 0.1 from this fraction of the steps on (V3: ~2/3)

    def model_config(self, vocab_size: int) -> DeepSeekConfig:
        return getattr(DeepSeekConfig, self.model)(vocab_size=vocab_size, context_length=self.data.context_length,
                                                   **self.model_overrides)

    def mtp_switch_step(self) -> int:
        return max(1, round(self.mtp_switch_fraction * self.train.steps))


def _small() -> CapstoneConfig:
    # 1,200 steps x 16 x 128 = 2.5M tokens, about 5.8 epochs of the 0.43M training tokens (validation loss
    # turns up after about 6-7 epochs); Lecture 30 measures and discusses the schedule. Validation: the first
    # 10 batches of the validation windows (20,480 tokens of the 75,549), the same at every validation, so the
    # shipped weights' loss is re-evaluated in seconds (tests/test_shipped_weights.py)
    return CapstoneConfig("small", "small", {}, DataConfig(context_length=128, batch_size=16),
                          TrainConfig(steps=1200, lr=2e-3, warmup_steps=100, min_lr_ratio=0.1, weight_decay=0.1,
                                      grad_clip=1.0, eval_every=100, eval_batches=10, checkpoint_every=100,
                                      checkpoint_path="runs/small/checkpoint.pt", seed=123, progress=True))


def _tiny() -> CapstoneConfig:
    # seconds: for checks of the command line, resume and several processes
    return CapstoneConfig("tiny", "tiny", {}, DataConfig(context_length=32, batch_size=8),
                          TrainConfig(steps=20, lr=3e-3, warmup_steps=2, min_lr_ratio=0.1, weight_decay=0.1,
                                      grad_clip=1.0, eval_every=10, eval_batches=2, checkpoint_every=10,
                                      checkpoint_path="runs/tiny/checkpoint.pt", seed=123, progress=True))


def dense_d_ff(model: str, **overrides) -> int:
    """The dense FFN width that gives a dense-only twin of ``DeepSeekConfig.<model>`` the same ACTIVATED
    parameters (embedding included, MTP not counted) as the MoE model (Lecture 30's baseline)."""
    from utils.model import count_parameters

    moe = getattr(DeepSeekConfig, model)(vocab_size=1000, **overrides)
    want = count_parameters(moe).activated

    def activated(d_ff: int) -> int:
        dense = dataclasses.replace(moe, first_k_dense=moe.n_layers, d_ff=d_ff)
        return count_parameters(dense).activated

    per_unit = activated(2) - activated(1)  # 3 * d_model * n_layers per hidden unit
    return max(1, round((want - (activated(1) - per_unit)) / per_unit))


def _dense(base) -> Callable:
    def make() -> CapstoneConfig:
        cfg = base()
        d_ff = dense_d_ff(cfg.model, **cfg.model_overrides)
        overrides = {**cfg.model_overrides, "first_k_dense": getattr(DeepSeekConfig, cfg.model)(vocab_size=1).n_layers,
                     "d_ff": d_ff}
        path = cfg.train.checkpoint_path.replace(f"/{cfg.name}/", f"/{cfg.name}-dense/")
        return dataclasses.replace(cfg, name=f"{cfg.name}-dense", model_overrides=overrides,
                                   train=dataclasses.replace(cfg.train, checkpoint_path=path))
    return make


# "<name>-dense": the same run with a dense-only model of equal activated parameters (Lecture 30's baseline)
CONFIGS = {"small": _small, "tiny": _tiny, "small-dense": _dense(_small), "tiny-dense": _dense(_tiny)}


def get_config(name: str, *, steps: int | None = None, checkpoint_every: int | None = None,
               val_fraction: float | None = None, progress: bool | None = None) -> CapstoneConfig:
    """The named config, with ``steps`` (warmup scaled along), ``checkpoint_every``... replaced (Lecture 30)."""
    if name not in CONFIGS:
        raise ValueError(f"Unknown config {name!r}: choose one of {', '.join(CONFIGS)}.")
    cfg = CONFIGS[name]()
    train = cfg.train
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise ValueError(f"--steps must be a positive integer, got {steps!r}.")
        warmup = min(steps, round(train.warmup_steps * steps / train.steps))
        train = dataclasses.replace(train, steps=steps, warmup_steps=warmup)
    if checkpoint_every is not None:
        train = dataclasses.replace(train, checkpoint_every=checkpoint_every)
    if progress is not None:
        train = dataclasses.replace(train, progress=progress)
    data = cfg.data if val_fraction is None else dataclasses.replace(cfg.data, val_fraction=val_fraction)
    return dataclasses.replace(cfg, train=train, data=data)


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Data:
    tokenizer: CompactTokenizer
    train_ids: list[int]
    val_ids: list[int]
    sha256: str  # of the vocabulary and both id sequences


@lru_cache(maxsize=4)
def prepare_data(corpus: str = "tinystories", val_fraction: float = 0.1) -> Data:
    """Story-level split, compact vocabulary of the training stories, token ids (as in Lecture 03)."""
    train_stories, val_stories = split_stories(load_corpus(corpus), val_fraction)
    tokenizer = CompactTokenizer.from_text(STORY_SEPARATOR.join(train_stories) + STORY_SEPARATOR)
    return _data(tokenizer, train_stories, val_stories)


def _data(tokenizer: CompactTokenizer, train_stories, val_stories) -> Data:
    end_id = tokenizer.encode(END_OF_TEXT)[0]
    train_ids = encode_stories(train_stories, tokenizer.encode, end_id)
    val_ids = encode_stories(val_stories, tokenizer.encode, end_id)
    h = hashlib.sha256()
    for seq in (tokenizer.vocab.gpt2_ids, train_ids, val_ids):
        h.update(torch.tensor(seq, dtype=torch.int64).numpy().tobytes())
    return Data(tokenizer, train_ids, val_ids, h.hexdigest())


class ShardedBatches:
    """A batch sampler for several processes (Lecture 30): global batches of ``global_batch`` windows
    from a seeded shuffle, each cut into ``world_size`` equal slices; rank ``r`` yields slice ``r``.

    The global batches are the same whatever ``world_size`` is, so 2 ranks see together exactly the
    batches 1 process sees. The shuffle's generator is ``self.sampler.generator``, where the Trainer
    finds it to checkpoint and restore the data order.
    """

    def __init__(self, n_windows: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 1):
        if global_batch % world_size:
            raise ValueError(f"the global batch size {global_batch} must be divisible by the number of processes "
                             f"{world_size}: use another --nproc_per_node or batch size.")
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.sampler = RandomSampler(range(n_windows), generator=torch.Generator().manual_seed(seed))
        self.batches = BatchSampler(self.sampler, global_batch, drop_last=True)

    def __iter__(self):
        per = self.global_batch // self.world_size
        for batch in self.batches:
            yield batch[self.rank * per:(self.rank + 1) * per]

    def __len__(self) -> int:
        return len(self.batches)


def make_loaders(cfg: CapstoneConfig, data: Data, rank: int = 0, world_size: int = 1):
    """This rank's training loader (its slice of every global batch) and the validation loader."""
    dataset = WindowDataset(data.train_ids, cfg.data.context_length)
    batches = ShardedBatches(len(dataset), cfg.data.batch_size, rank, world_size, cfg.data.seed)
    if len(batches) == 0:
        raise ValueError(f"{len(dataset)} training windows make no batch of {cfg.data.batch_size}.")
    train_loader = DataLoader(dataset, batch_sampler=batches, generator=torch.Generator().manual_seed(cfg.data.seed))
    val_loader = make_loader(data.val_ids, cfg.data.context_length, cfg.data.batch_size, shuffle=False)
    return train_loader, val_loader


# ---------------------------------------------------------------------------------------------- hooks
class RunRecord:
    """A Trainer hook that only travels in checkpoints: config name, model config, vocabulary, data hash.

    ``load_state_dict`` refuses a checkpoint from another config, vocabulary or data (CheckpointError).
    """

    def __init__(self, record: dict):
        self.record = record

    def state_dict(self) -> dict:
        return dict(self.record)

    def load_state_dict(self, state: dict) -> None:
        check_record(state, self.record, "the checkpoint")


def make_record(cfg: CapstoneConfig, model_cfg: DeepSeekConfig, data: Data) -> dict:
    return {"format": RUN_FORMAT, "config": cfg.name, "model_config": dataclasses.asdict(model_cfg),
            "data_config": dataclasses.asdict(cfg.data), "vocab_gpt2_ids": list(data.tokenizer.vocab.gpt2_ids),
            "data_sha256": data.sha256}


def check_record(saved: dict, now: dict, where) -> None:
    """Raise :class:`CheckpointError` naming what differs between a saved run record and this run's."""
    if saved.get("config") != now["config"]:
        raise CheckpointError(f"{where} was trained with config {saved.get('config')!r}, not {now['config']!r}: "
                              f"resume with --config {saved.get('config')}, or start a fresh run in another --out.")
    if saved["data_config"] != now["data_config"] or saved["vocab_gpt2_ids"] != now["vocab_gpt2_ids"] \
            or saved["data_sha256"] != now["data_sha256"]:
        raise CheckpointError(f"{where} was trained on other data or another vocabulary (data {saved['data_config']}, "
                              f"{len(saved['vocab_gpt2_ids'])} ids; now {now['data_config']}, "
                              f"{len(now['vocab_gpt2_ids'])} ids): resume with the same data, or start a fresh run.")
    diff = [k for k in now["model_config"] if saved["model_config"].get(k) != now["model_config"][k]]
    if diff:
        raise CheckpointError(f"{where} holds a model with other sizes ({', '.join(diff[:4])}): start a fresh run.")


class SyncedBiasUpdate:
    """Lecture 21's bias update for several processes (Lecture 30): each DeepSeekMoE layer's expert loads
    (tokens per expert since the last update) are summed over all ranks first, so every rank applies
    the same update to the same bias. On one process it is :func:`utils.moe.update_moe_biases`."""

    def after_step(self, step: int, model, history=None) -> None:
        layers = moe_layers(model, DeepSeekMoE)
        if layers and dist_rank_world()[1] > 1:
            device = layers[0].e_score_correction_bias.device  # nccl reduces CUDA tensors only
            loads = torch.stack([layer.step_load for layer in layers]).to(device)  # (layers, E), one all-reduce
            dist.all_reduce(loads)
            for layer, load in zip(layers, loads.cpu()):
                layer.step_load = load
        update_moe_biases(step, model, history)


class BestWeights:
    """Early stopping's memory (Lecture 30): a Trainer hook that keeps the weights of the best validation.

    The Trainer validates right after a step's update, so before the NEXT step's forward the model still
    holds exactly the weights that were just validated: :meth:`before_step` (and :meth:`update`, called
    once more after the last step) looks at the newest validation point and, if its loss is the lowest so
    far, writes ``{"step", "val_loss", "model", "record"}`` atomically to ``path`` (only rank 0 validates,
    so only rank 0 writes). Its state (best step and loss, points seen) travels in the checkpoint, so a
    resumed run keeps the same best file.
    """

    def __init__(self, path: str | os.PathLike, record: dict):
        self.path, self.record = Path(path), record
        self.best_step, self.best_loss, self.seen = 0, math.inf, 0

    def before_step(self, step: int, model, history) -> None:
        self.update(model, history)

    def update(self, model, history) -> None:
        points = history.val_points
        if len(points) <= self.seen:
            return
        self.seen = len(points)
        step, loss = points[-1]  # the newest point: the weights the model holds now
        if loss < self.best_loss:
            self.best_step, self.best_loss = int(step), float(loss)
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            atomic_save({"format": BEST_FORMAT, "step": self.best_step, "val_loss": self.best_loss,
                          "model": state, "record": self.record}, self.path)

    def state_dict(self) -> dict:
        return {"best_step": self.best_step, "best_loss": self.best_loss, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.best_step, self.best_loss, self.seen = state["best_step"], state["best_loss"], state["seen"]


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _machine(device, world: int) -> str:
    cpu = platform.processor() or platform.machine()
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores "
             f"({cpu}), {torch.get_num_threads()} torch threads")
    return f"{platform.system()} {platform.machine()}, {where}, {world} process(es), torch {torch.__version__}"


class RunLog:
    """A Trainer hook that travels in checkpoints (Lecture 30): the wall-clock seconds of the run (steps,
    validations and checkpoints, over all its launches) and each launch's command, commit and machine."""

    def __init__(self, launch: dict):
        self.launches, self.seconds, self._t = [launch], 0.0, None

    def before_step(self, step: int, model, history) -> None:
        if self._t is None:
            self._t = time.perf_counter()

    def after_step(self, step: int, model, history) -> None:
        self.stop()

    def stop(self) -> None:
        """Count the time since the last step (call once after the run: its last validation and checkpoint)."""
        if self._t is not None:
            now = time.perf_counter()
            self.seconds += now - self._t
            self._t = now

    def state_dict(self) -> dict:
        return {"seconds": self.seconds, "launches": list(self.launches)}

    def load_state_dict(self, state: dict) -> None:
        self.seconds, self.launches = float(state["seconds"]), list(state["launches"]) + self.launches[-1:]


class ExpertLoads:
    """A Trainer hook for watching the balance (Lecture 30): the tokens each routed expert of each
    DeepSeekMoE layer (the MTP block's included) received, summed over every ``every`` training steps.

    ``steps[i]`` is the last step of interval i, ``loads[i]`` its (layers, experts) counts;
    :meth:`max_violation` gives MaxVio (max load / mean load - 1) per interval and layer.
    """

    def __init__(self, every: int = 10):
        if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
            raise ValueError(f"every must be a positive number of steps, got {every!r}.")
        self.every, self.steps, self.loads, self._sum = every, [], [], None

    def after_step(self, step: int, model, history=None) -> None:
        load = torch.stack([layer.last_load for layer in moe_layers(model, DeepSeekMoE)])  # (layers, E)
        self._sum = load if self._sum is None else self._sum + load
        if step % self.every == 0:
            self.steps.append(step)
            self.loads.append(self._sum)
            self._sum = None

    def max_violation(self) -> torch.Tensor:
        """(intervals, layers) MaxVio of each interval's summed loads."""
        from utils.moe.deepseek import max_violation

        return torch.tensor([[max_violation(row) for row in load] for load in self.loads])


# ------------------------------------------------------------------------------------- checkpoints
def read_run(checkpoint: str | os.PathLike) -> tuple[dict, dict]:
    """``(payload, run record)`` of a capstone checkpoint; FileNotFoundError / CheckpointError if it is not one."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: train first (python -m utils.capstone train ...).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"Checkpoint {path} cannot be read ({type(err).__name__}); it is probably truncated "
                              "or corrupted: resume from an earlier one or train afresh.") from None
    hooks = payload.get("hooks", {}) if isinstance(payload, dict) else {}
    records = [h for h in hooks.values() if isinstance(h, dict) and h.get("format") == RUN_FORMAT]
    if not records:
        raise CheckpointError(f"{path} is not a checkpoint of `python -m utils.capstone train` (no run record).")
    return payload, records[0]


def tokenizer_of(record: dict) -> CompactTokenizer:
    ids = record["vocab_gpt2_ids"]
    return CompactTokenizer(CompactVocab(ids[1:], unk_gpt2_id=ids[0]))


def load_model(checkpoint: str | os.PathLike, device="cpu") -> tuple[DeepSeekModel, CompactTokenizer, dict]:
    """The trained model (eval mode), its tokenizer and run record from a capstone checkpoint (Lecture 30)."""
    _, record = read_run(checkpoint)
    model = DeepSeekModel(DeepSeekConfig(**record["model_config"]))
    load_checkpoint(checkpoint, model)  # checks names and shapes before loading
    return model.to(device).eval(), tokenizer_of(record), record


# -------------------------------------------------------------------------------------------- train
def setup_distributed(device: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU.

    Returns ``(rank, world_size, device)``; one process without torchrun: ``(0, 1, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist_rank_world()
    return rank, world, device


def train_run(config: str, *, steps: int | None = None, out: str | os.PathLike | None = None, resume: bool = False,
              overwrite: bool = False, stop_at: int | None = None, checkpoint_every: int | None = None,
              val_fraction: float | None = None, device: str | None = None, progress: bool = True,
              log=print, hooks: Sequence = (), command: str | None = None) -> TrainHistory:
    """Train (or resume) a named config; checkpoints go to ``out/checkpoint.pt`` (Lecture 30).

    Refuses to overwrite an existing checkpoint unless ``overwrite`` (or ``resume``). ``stop_at``
    stops after that step without saving, as if the run were killed there (resume from the last
    checkpoint). Under torchrun every rank calls this with the same arguments.

    The weights at the best validation loss go to ``out/best.pt`` (:class:`BestWeights`). ``hooks``:
    more Trainer hooks, run after the built-in ones (for example a recorder of the experts' loads).
    ``command``: how the run was started, for the record (default: this call, written as Python).
    """
    cfg = get_config(config, steps=steps, checkpoint_every=checkpoint_every, val_fraction=val_fraction,
                     progress=progress)
    out = Path(out if out is not None else Path("runs") / cfg.name)
    ckpt = out / CHECKPOINT_NAME
    if resume and not ckpt.is_file():
        raise FileNotFoundError(f"Nothing to resume: no checkpoint at {ckpt}. Drop --resume to start a run.")
    if not resume and (ckpt.exists() or (out / BEST_NAME).exists()) and not overwrite:
        raise FileExistsError(f"{ckpt} exists: pass --resume to continue it, --overwrite to start afresh "
                              "(the old checkpoint is replaced), or choose another --out.")
    if stop_at is not None and not 0 < stop_at <= cfg.train.steps:
        raise ValueError(f"--stop-at must lie in [1, steps = {cfg.train.steps}], got {stop_at}.")
    data = prepare_data(cfg.data.corpus, cfg.data.val_fraction)
    model_cfg = cfg.model_config(data.tokenizer.vocab_size)
    record = make_record(cfg, model_cfg, data)
    if resume:  # refuse other configs, vocabularies or data before anything is built
        check_record(read_run(ckpt)[1], record, ckpt)
    rank, world, device = setup_distributed(device)
    main = rank == 0
    say = log if (main and log) else (lambda *_: None)
    train_cfg = dataclasses.replace(cfg.train, checkpoint_path=str(ckpt))
    torch.manual_seed(train_cfg.seed)
    model = DeepSeekModel(model_cfg).to(device)
    if world > 1:
        # unused experts (no token routed to them on this rank) get no gradient: see the module docstring;
        # every rank keeps the same bias buffer itself (SyncedBiasUpdate), so buffers are not re-broadcast
        # before every forward (they are once, when DDP is built, with the parameters)
        ddp = torch.nn.parallel.DistributedDataParallel
        no_resync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                     else {"broadcast_buffers": False})  # the older name (torch < 2.13)
        model = ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=True, **no_resync)
    train_loader, val_loader = make_loaders(cfg, data, rank, world)
    if command is None:
        given = {"steps": steps, "out": None if out is None else str(out), "resume": resume, "overwrite": overwrite,
                 "stop_at": stop_at, "checkpoint_every": checkpoint_every, "val_fraction": val_fraction}
        command = f"utils.capstone.train_run({config!r}" + "".join(
            f", {k}={v!r}" for k, v in given.items() if v not in (None, False)) + ")"
    best = BestWeights(out / BEST_NAME, record)
    clock = RunLog({"command": command, "git_commit": _git_commit(), "machine": _machine(device, world)})
    all_hooks = [RunRecord(record), MTPLambdaSchedule(cfg.mtp_switch_step()), SyncedBiasUpdate(), best, clock,
                 *hooks]
    trainer = Trainer(model, train_loader, val_loader, train_cfg, loss_fn=deepseek_loss, hooks=all_hooks,
                      log=log, overwrite=overwrite or resume)
    if resume:
        trainer.resume(ckpt)
        say(f"resumed {ckpt} at step {trainer.step} of {train_cfg.steps}")
    else:
        n = sum(p.numel() for p in trainer.module.parameters())
        say(f"config {cfg.name!r}: {n:,} parameters, vocabulary {data.tokenizer.vocab_size:,}, "
            f"{len(data.train_ids):,} training tokens, global batch {cfg.data.batch_size} x "
            f"{cfg.data.context_length} on {world} process(es) ({device.type}), {train_cfg.steps} steps -> {ckpt}")
    history = trainer.run(until=stop_at)
    clock.stop()
    if main:
        best.update(trainer.module, trainer.history)  # the last validation (no next step looks at it)
    if world > 1:
        dist.barrier()  # rank 0 may still be writing the last checkpoint
    if trainer.history.val_points:
        say(f"step {trainer.step}: last validation loss {trainer.history.val_points[-1][1]:.4f}, "
            f"best {best.best_loss:.4f} at step {best.best_step} (its weights: {out / BEST_NAME})")
    if trainer.step < train_cfg.steps:
        say(f"stopped at step {trainer.step}; continue with --resume (from the last checkpoint in {out}).")
    else:
        say(f"done. Next: python -m utils.capstone sample --checkpoint {ckpt}")
    return history


# ------------------------------------------------------------------------------------ sample, export
def sample(checkpoint, prompt: str = "Once upon a time", max_new_tokens: int = 100, temperature: float = 0.8,
           top_k: int | None = 20, seed: int = 123, device: str = "cpu") -> str:
    """Continue ``prompt`` with a trained checkpoint (greedy when ``temperature`` is 0) (Lecture 30)."""
    from utils.generation import generate

    model, tokenizer, _ = load_model(checkpoint, device)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("The prompt is empty: give at least one word, e.g. --prompt 'Once upon a time'.")
    ids = ids[-model.cfg.context_length:]
    idx = torch.tensor([ids], device=device)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                   generator=torch.Generator(device=device).manual_seed(seed), use_cache=True)
    return tokenizer.decode(out[0].tolist())


def export(checkpoint, directory, overwrite: bool = False) -> Path:
    """Write a checkpoint's model in the Hugging Face format (:func:`utils.hf_interop.export_hf`), plus
    its compact vocabulary as ``compact_vocab.json`` (Lecture 30). Refuses a non-empty directory
    unless ``overwrite``."""
    from utils.hf_interop import export_hf

    model, _, record = load_model(checkpoint)
    target = Path(directory)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} is not empty: pass --overwrite (overwrite=True) to replace its contents, "
                              "or choose a new directory.")
    target = export_hf(model, target, overwrite=overwrite)
    vocab = {"format": "compact-gpt2-vocab-v1", "unk_gpt2_id": record["vocab_gpt2_ids"][0],
             "gpt2_ids": record["vocab_gpt2_ids"][1:], "config": record["config"]}
    (Path(target) / VOCAB_FILE).write_text(json.dumps(vocab) + "\n")
    return Path(target)


# ---------------------------------------------------------------------------------------------- ship
def validation_loss(model: DeepSeekModel, config: str, data: Data | None = None, val_fraction: float | None = None,
                    n_batches: int | None = None) -> float:
    """The run's own validation (Lecture 30): :func:`utils.trainer.evaluate_lm` on the FIRST ``n_batches``
    (default: the config's ``eval_batches``) batches of the validation windows, in order (not shuffled),
    exactly what the Trainer evaluated at every validation of a run of ``config``."""
    from utils.trainer import evaluate_lm

    cfg = get_config(config, val_fraction=val_fraction)
    data = data or prepare_data(cfg.data.corpus, cfg.data.val_fraction)
    _, val_loader = make_loaders(cfg, data)
    return evaluate_lm(model, val_loader, n_batches or cfg.train.eval_batches)


def read_best(checkpoint: str | os.PathLike) -> dict:
    """The best-validation weights beside a capstone checkpoint (``best.pt``), checked against its run."""
    _, record = read_run(checkpoint)
    path = Path(checkpoint).with_name(BEST_NAME)
    if not path.is_file():
        raise FileNotFoundError(f"No {BEST_NAME} beside {checkpoint}: it is written at the first validation "
                                "(train at least eval_every steps).")
    try:
        best = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}); it is probably truncated.") from None
    if not isinstance(best, dict) or best.get("format") != BEST_FORMAT:
        raise CheckpointError(f"{path} is not a best-weights file of `python -m utils.capstone train`.")
    check_record(best["record"], record, path)
    return best


def ship(checkpoint, directory, overwrite: bool = False, note: str = "") -> Path:
    """Write the BEST weights of a run (``best.pt`` beside ``checkpoint``) for shipping (Lecture 30):
    ``model.safetensors`` (float32, at most 16 MB) and ``run.json`` (how they were made: the commands,
    commit, data hash, model/data/train config, vocabulary, every validation, best step and loss,
    wall time, machine, and the validation loss of the written weights, re-evaluated). Refuses to
    replace an earlier shipment unless ``overwrite``."""
    from safetensors.torch import save_file

    payload, record = read_run(checkpoint)
    best = read_best(checkpoint)
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory; choose another path.")
    found = [n for n in (SHIPPED_WEIGHTS, SHIPPED_RUN) if (target / n).exists()]
    if found and not overwrite:
        raise FileExistsError(f"{target} already holds {', '.join(found)}: pass --overwrite (overwrite=True) to "
                              "replace them, or choose another directory.")
    model = DeepSeekModel(DeepSeekConfig(**record["model_config"]))
    model.load_state_dict(best["model"])
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    n_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if n_bytes > MAX_SHIPPED_BYTES:
        raise ValueError(f"the weights take {n_bytes / 2**20:.1f} MiB, more than the {MAX_SHIPPED_BYTES // 2**20} MiB "
                         "allowed in the repository: ship a smaller config.")
    cfg = get_config(record["config"], val_fraction=record["data_config"]["val_fraction"])
    data = prepare_data(cfg.data.corpus, cfg.data.val_fraction)
    if data.sha256 != record["data_sha256"]:
        raise CheckpointError(f"{checkpoint} was trained on other data than the shipped sample holds now "
                              "(its sha256 differs): retrain before shipping.")
    train_cfg = payload["config"]
    shipped_loss = validation_loss(model, record["config"], data, cfg.data.val_fraction, train_cfg["eval_batches"])
    log = next((h for h in payload["hooks"].values() if isinstance(h, dict) and "launches" in h), None)
    history = payload["history"]
    every = train_cfg["eval_every"]
    val_points = [[int(s), float(v)] for s, v in history["val_points"]]
    train_means = [sum(history["train_losses"][max(0, s - every):s]) / len(history["train_losses"][max(0, s - every):s])
                   for s, _ in val_points]
    run = {
        "format": SHIPPED_FORMAT,
        "note": note,
        "config": record["config"],
        "complete": payload["step"] == train_cfg["steps"],
        "steps_trained": payload["step"],
        "steps_planned": train_cfg["steps"],
        "config_steps": get_config(record["config"]).train.steps,  # the named config's own schedule
        "commands": [launch["command"] for launch in log["launches"]] if log else [],
        "ship_command": f"python -m utils.capstone ship --checkpoint {checkpoint} --to {directory}",
        "git_commit": log["launches"][0]["git_commit"] if log else "unknown",
        "machine": log["launches"][-1]["machine"] if log else "unknown",
        "wall_seconds": round(log["seconds"], 1) if log else None,
        "data_sha256": record["data_sha256"],
        "data_config": record["data_config"],
        "model_config": record["model_config"],
        "train_config": train_cfg,
        "mtp_switch_step": next((h["switch_step"] for h in payload["hooks"].values()
                                 if isinstance(h, dict) and "switch_step" in h), None),
        "evaluation": {"batches": train_cfg["eval_batches"], "batch_size": cfg.data.batch_size,
                       "context_length": cfg.data.context_length,
                       "which": "the first `batches` batches of the validation windows in order (not shuffled), "
                                "the mean of their cross-entropies (utils.trainer.evaluate_lm), as at every "
                                "validation of the run"},
        "val_points": val_points,
        "train_loss_means": [round(v, 4) for v in train_means],
        "best_step": best["step"],
        "best_val_loss": best["val_loss"],
        "shipped_val_loss": shipped_loss,
        "weights": {"file": SHIPPED_WEIGHTS, "dtype": "float32", "bytes": n_bytes,
                    "parameters": sum(t.numel() for t in tensors.values())},
        "vocabulary": {"format": "compact-gpt2-vocab-v1", "unk_gpt2_id": record["vocab_gpt2_ids"][0],
                       "gpt2_ids": record["vocab_gpt2_ids"][1:]},
    }
    target.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_r = target / f".{SHIPPED_WEIGHTS}.tmp", target / f".{SHIPPED_RUN}.tmp"
    try:
        save_file(tensors, str(tmp_w), metadata={"format": "pt", "what": SHIPPED_FORMAT})
        vocab = run.pop("vocabulary")  # one line, not one line per id
        text = json.dumps({**run, "vocabulary": "VOCAB"}, indent=1).replace('"VOCAB"', json.dumps(vocab))
        tmp_r.write_text(text + "\n")
        os.chmod(tmp_w, 0o644)
        os.replace(tmp_w, target / SHIPPED_WEIGHTS)
        os.replace(tmp_r, target / SHIPPED_RUN)
    finally:
        for tmp in (tmp_w, tmp_r):
            if tmp.exists():
                tmp.unlink()
    return target


def load_shipped(directory, device="cpu") -> tuple[DeepSeekModel, CompactTokenizer, dict]:
    """The shipped model (eval mode), its tokenizer and its ``run.json`` (Lecture 30)."""
    from safetensors.torch import load_file

    target = Path(directory)
    for name in (SHIPPED_WEIGHTS, SHIPPED_RUN):
        if not (target / name).is_file():
            raise FileNotFoundError(f"No {name} in {target}: ship a run first (python -m utils.capstone ship ...).")
    run = json.loads((target / SHIPPED_RUN).read_text())
    if run.get("format") != SHIPPED_FORMAT:
        raise ValueError(f"{target / SHIPPED_RUN} is not a run.json written by `python -m utils.capstone ship`.")
    model = DeepSeekModel(DeepSeekConfig(**run["model_config"]))
    model.load_state_dict(load_file(str(target / SHIPPED_WEIGHTS)))
    vocab = run["vocabulary"]
    tokenizer = CompactTokenizer(CompactVocab(vocab["gpt2_ids"], unk_gpt2_id=vocab["unk_gpt2_id"]))
    return model.to(device).eval(), tokenizer, run


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m utils.capstone",
                                description="Train, sample and export the course's mini DeepSeek (Lecture 30).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train or resume a named config (also under torchrun)")
    t.add_argument("--config", required=True, help=f"one of: {', '.join(CONFIGS)}")
    t.add_argument("--steps", type=int, help="optimizer steps (default: the config's; warmup scales along)")
    t.add_argument("--out", help="run folder (default runs/<config>); the checkpoint is <out>/checkpoint.pt")
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if <out>/checkpoint.pt exists")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: the config's)")
    t.add_argument("--stop-at", type=int, help="stop after this step without saving, as if killed")
    t.add_argument("--val-fraction", type=float, help="share of the stories held out (default 0.1)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: this rank's GPU if any, else cpu)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = sub.add_parser("sample", help="continue a prompt with a trained checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--prompt", default="Once upon a time")
    s.add_argument("--max-new-tokens", type=int, default=100)
    s.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    s.add_argument("--top-k", type=int, default=20)
    s.add_argument("--seed", type=int, default=123)
    e = sub.add_parser("export", help="write the Hugging Face format (config.json + safetensors)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--to", required=True, help="target directory (refused if not empty, unless --overwrite)")
    e.add_argument("--overwrite", action="store_true")
    h = sub.add_parser("ship", help="write the best weights (model.safetensors) and run.json for the repository")
    h.add_argument("--checkpoint", required=True, help="the run's checkpoint; best.pt beside it is shipped")
    h.add_argument("--to", required=True, help="target directory, e.g. weights/capstone_small")
    h.add_argument("--overwrite", action="store_true", help="replace an earlier shipment there")
    h.add_argument("--note", default="", help="what this run is, written into run.json")
    return p


def main(argv=None) -> int:
    """The command line (see the module docstring). Returns the exit status; errors print one clear line."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            train_run(args.config, steps=args.steps, out=args.out, resume=args.resume, overwrite=args.overwrite,
                      stop_at=args.stop_at, checkpoint_every=args.checkpoint_every, val_fraction=args.val_fraction,
                      device=args.device, progress=not args.no_progress,
                      command=shlex.join(["python", "-m", "utils.capstone", *(sys.argv[1:] if argv is None else argv)]))
        elif args.command == "sample":
            print(sample(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed))
        elif args.command == "ship":
            print(f"shipped to {ship(args.checkpoint, args.to, args.overwrite, args.note)}")
        else:
            print(f"exported to {export(args.checkpoint, args.to, args.overwrite)}")
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # CheckpointError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Exercises of Lecture 22: an MoE language model trained from scratch.

22.1 the active parameters of one MoE feed-forward layer (router + shared + the top-k routed experts),
22.2 the trainer hook that applies DeepSeek's bias update to every DeepSeekMoE layer after each step.
Expected values come from :mod:`utils.moe`; inputs come from private generators.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise
from utils.gpt import GPTConfig, GPTModel
from utils.moe.deepseek import DeepSeekMoE, moe_layers, update_moe_biases
from utils.trainer import TrainConfig, Trainer


# --- 22.1: active parameters of an MoE layer --------------------------------------------------------------

def _active(d_model: int, expert_hidden: int, n_routed: int, n_shared: int, top_k: int) -> int:
    return d_model * n_routed + (n_shared + top_k) * 3 * d_model * expert_hidden


_ACTIVE = [  # (label, d_model, expert_hidden, n_routed, n_shared, top_k)
    ("this lecture's top-2 MoE: 4 experts of width 96, d_model 64", 64, 96, 4, 0, 2),
    ("this lecture's DeepSeekMoE: 1 shared + top-3 of 8 experts of width 48", 64, 48, 8, 1, 3),
    ("top-1 of 8 (Switch Transformer), no shared expert", 32, 64, 8, 0, 1),
    ("DeepSeek-V3's layer: 1 shared + top-8 of 256, d_model 7168, width 2048", 7168, 2048, 256, 1, 8),
    ("two shared experts, top-6 of 64 (DeepSeekMoE 16B)", 2048, 1408, 64, 2, 6),
]


@exercise("22.1", "active parameters of an MoE layer: router + shared experts + top-k routed experts")
def _cases_active():
    return [Case(label, tuple(args), _active(*args)) for label, *args in _ACTIVE]


# --- 22.2: the bias-update hook ----------------------------------------------------------------------------

def _tiny_model(n_layers: int, n_routed: int, top_k: int, gamma: float, seed: int) -> GPTModel:
    cfg = GPTConfig(vocab_size=17, context_length=8, d_model=16, n_heads=2, n_layers=n_layers, dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPTModel(cfg, feed_forward=DeepSeekMoE.factory(expert_hidden=8, n_routed=n_routed, n_shared=1,
                                                              top_k=top_k, gamma=gamma))


def _batches(seed: int, n: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 17, (n, 4, 9), generator=gen)
    return [(b[:, :-1], b[:, 1:]) for b in ids]


def _train_with(hook, spec) -> tuple:
    """Train the tiny model ``spec`` describes for ``steps`` steps with ``hook``; return every layer's bias."""
    n_layers, n_routed, top_k, gamma, steps, seed = spec
    model = _tiny_model(n_layers, n_routed, top_k, gamma, seed)
    config = TrainConfig(steps=steps, lr=1e-2, warmup_steps=0, eval_every=steps, seed=seed)
    trainer = Trainer(model, _batches(seed + 1, steps), None, config, hooks=[hook], log=None)
    trainer.run()
    return tuple(layer.e_score_correction_bias.clone() for layer in moe_layers(model, DeepSeekMoE))


def _run_hook(hook, args: tuple) -> tuple:
    return _train_with(hook, args[0])


_HOOK = [  # (label, (n_layers, n_routed, top_k, gamma, steps, seed))
    ("one DeepSeekMoE layer, 4 experts, 3 steps", (1, 4, 2, 0.01, 3, 2201)),
    ("two layers: each layer is updated with its own load", (2, 4, 2, 0.01, 4, 2202)),
    ("three layers, 8 experts top-3, 6 steps", (3, 8, 3, 0.05, 6, 2203)),
]


@exercise("22.2", "a trainer hook that applies DeepSeek's bias update to every DeepSeekMoE layer",
          call=_run_hook, replayable=False)
def _cases_hook():
    return [Case(label, (spec,), _train_with(update_moe_biases, spec)) for label, spec in _HOOK]

"""Exercises of Lecture 03: the journey of a token through a GPT.

Expected values come from the course's reference code: :class:`utils.data.WindowDataset`
(03.1), ``nn.LayerNorm`` (03.2), :class:`utils.gpt.TransformerBlock` (03.3) and
:func:`utils.generation.generate` (03.4). In 03.2 and 03.3 the learner writes a module; the
checker copies the reference's weights into it (:func:`utils.exercises.module_case`).

Every random draw here comes from a private ``torch.Generator`` or happens inside
``torch.random.fork_rng``, so building the cases leaves the global random state alone.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.data import WindowDataset
from utils.exercises import Case, exercise, module_case, run_module
from utils.generation import generate
from utils.gpt import FeedForward, GPTConfig, GPTModel, TransformerBlock, default_attention


# --- 03.1: input/target windows -------------------------------------------------------------------

def _windows(ids: list[int], context_length: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = WindowDataset(ids, context_length, stride)
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)  # (n_windows, T), (n_windows, T), both torch.long


@exercise("03.1", "input/target windows with a context length and a stride")
def _cases_windows():
    g = torch.Generator().manual_seed(301)
    settings = [
        ("'A true friend accepts you', context 4: one window", [32, 2081, 1545, 18178, 345], 4, 1),
        ("9 ids, context 4, stride 1 (the lecture's setting)",
         torch.randint(0, 50257, (9,), generator=g).tolist(), 4, 1),
        ("stride = context length: no overlap", torch.randint(0, 50257, (20,), generator=g).tolist(), 4, 4),
        ("a leftover tail too short for a window is dropped",
         torch.randint(0, 1000, (23,), generator=g).tolist(), 5, 3),
        ("stride > context length: ids are skipped", torch.randint(0, 1000, (12,), generator=g).tolist(), 3, 5),
        ("exactly context_length + 1 ids", list(range(7)), 6, 2),
    ]
    cases = []
    for label, ids, T, stride in settings:
        expected = _windows(ids, T, stride)
        assert all(t.dtype == torch.long for t in expected)
        cases.append(Case(label, (ids, T, stride), expected))
    return cases


# --- 03.2: LayerNorm from its formula -------------------------------------------------------------

def _layer_norm(d: int, g: torch.Generator, eps: float = 1e-5, affine: bool = True) -> nn.LayerNorm:
    norm = nn.LayerNorm(d, eps=eps)
    if affine:  # non-trivial gamma and beta, so forgetting either one shows
        with torch.no_grad():
            norm.weight.copy_(1.0 + 0.5 * torch.randn(d, generator=g))
            norm.bias.copy_(0.5 * torch.randn(d, generator=g))
    return norm


@exercise("03.2", "LayerNorm from its formula", call=run_module)
def _cases_layer_norm():
    g = torch.Generator().manual_seed(302)
    x = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return [
        module_case("fresh LayerNorm (gamma = 1, beta = 0), 5 tokens of width 8",
                    _layer_norm(8, g, affine=False), (8,), (x(1, 5, 8),)),
        module_case("non-trivial gamma and beta", _layer_norm(8, g), (8,), (x(1, 5, 8),)),
        module_case("rows far from 0 (offsets up to 50): subtract each row's mean",
                    _layer_norm(6, g), (6,), (x(1, 4, 6) + 50.0 * x(1, 4, 1),)),
        module_case("width 4, where the biased (1/d) and unbiased (1/(d-1)) variances differ most",
                    _layer_norm(4, g), (4,), (x(3, 4),)),
        module_case("a batch (B, T, d) = (2, 3, 16)", _layer_norm(16, g), (16,), (x(2, 3, 16),)),
        module_case("tiny variance, eps = 1e-3: eps inside the square root",
                    _layer_norm(8, g, eps=1e-3), (8,), (0.01 * x(2, 3, 8),), init_kwargs={"eps": 1e-3}),
    ]


# --- 03.3: one transformer block ------------------------------------------------------------------

def _block_config(d_model: int, n_heads: int, dropout: float) -> GPTConfig:
    return GPTConfig(vocab_size=1, context_length=8, d_model=d_model, n_heads=n_heads, n_layers=2,
                     dropout=dropout)


def _block_case(label: str, cfg: GPTConfig, shape: tuple, seed: int, train: bool = False) -> Case:
    """A TransformerBlock with O(1) weights (so each half changes the output visibly) on random inputs."""
    with torch.random.fork_rng(devices=[]):  # module construction draws from the global generator
        torch.manual_seed(seed)
        reference = TransformerBlock(cfg, default_attention(cfg), FeedForward(cfg))
        init_args = (cfg, default_attention(cfg), FeedForward(cfg))  # fresh modules for the learner's block
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.startswith("norm"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    x = 2.0 * torch.randn(*shape, generator=g) + 1.0  # not already normalised
    return module_case(label, reference, init_args, (x,), train=train, seed=seed)


@exercise("03.3", "one pre-norm transformer block", call=run_module)
def _cases_block():
    return [
        _block_case("eval mode, (1, 5, 8) as the lecture's demo block", _block_config(8, 2, 0.1), (1, 5, 8), 331),
        _block_case("eval mode, a batch (2, 6, 16), 4 heads", _block_config(16, 4, 0.1), (2, 6, 16), 332),
        _block_case("training mode: dropout p = 0.1 (masks replayed from a seed)",
                    _block_config(8, 2, 0.1), (2, 5, 8), 333, train=True),
        _block_case("training mode: dropout p = 0.5, (1, 8, 16)",
                    _block_config(16, 2, 0.5), (1, 8, 16), 334, train=True),
    ]


# --- 03.4: greedy generation ----------------------------------------------------------------------

def _tiny_model(vocab_size: int, context_length: int, seed: int) -> GPTModel:
    cfg = GPTConfig(vocab_size=vocab_size, context_length=context_length, d_model=16, n_heads=2,
                    n_layers=2, dropout=0.0)
    with torch.random.fork_rng(devices=[]):  # GPTModel's init draws from the global generator
        torch.manual_seed(seed)
        model = GPTModel(cfg).eval()
    with torch.no_grad():  # larger head weights than the N(0, 0.02^2) init, so the argmax changes each step
        model.out_head.weight.mul_(50.0)
    return model


@exercise("03.4", "greedy generation: crop, predict, append")
def _cases_greedy():
    settings = [  # (label, vocab, context_length, batch, prompt length, new tokens)
        ("one prompt of 3 ids, 4 new tokens", 50, 8, 1, 3, 4),
        ("a batch of 2 growing past the context length: crop to the last 8", 50, 8, 2, 5, 6),
        ("the prompt itself is longer than the context", 30, 4, 3, 6, 5),
        ("zero new tokens: the prompt comes back unchanged", 20, 6, 1, 2, 0),
    ]
    cases = []
    for i, (label, V, T, B, n_prompt, n_new) in enumerate(settings):
        model = _tiny_model(V, T, seed=330 + i)
        g = torch.Generator().manual_seed(340 + i)
        prompt = torch.randint(0, V, (B, n_prompt), generator=g)
        cases.append(Case(label, (model, prompt, n_new), generate(model, prompt, n_new)))
    return cases

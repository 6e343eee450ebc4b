"""Exercises of Lecture 03: the journey of a token through a GPT.

Expected values come from the course's reference code: :class:`utils.data.WindowDataset`
(03.1), the parameters of a real :class:`utils.gpt.TransformerBlock` (03.2) and
:func:`utils.generation.generate` (03.3).
"""

from __future__ import annotations

import torch

from utils.data import WindowDataset
from utils.exercises import exercise
from utils.generation import generate
from utils.gpt import FeedForward, GPTConfig, GPTModel, TransformerBlock, default_attention


def _windows(ids: list[int], context_length: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = WindowDataset(ids, context_length, stride)
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)  # (n_windows, T), (n_windows, T)


@exercise("03.1", "input/target windows with a context length and a stride")
def _cases_windows():
    g = torch.Generator().manual_seed(301)
    settings = [
        ([32, 2081, 1545, 18178, 345], 4, 1),  # "A true friend accepts you": one window
        (torch.randint(0, 50257, (9,), generator=g).tolist(), 4, 1),  # the lecture's context 4, stride 1
        (torch.randint(0, 50257, (20,), generator=g).tolist(), 4, 4),  # stride = context: no overlap
        (torch.randint(0, 1000, (23,), generator=g).tolist(), 5, 3),  # a leftover tail is dropped
        (torch.randint(0, 1000, (12,), generator=g).tolist(), 3, 5),  # stride > context: ids skipped
        (list(range(7)), 6, 2),  # exactly context_length + 1 ids
    ]
    return [((ids, T, s), _windows(ids, T, s)) for ids, T, s in settings]


def _block_parameters(d_model: int, d_ff: int, qkv_bias: bool) -> int:
    cfg = GPTConfig(vocab_size=1, context_length=1, d_model=d_model, n_heads=1, n_layers=1, d_ff=d_ff,
                    qkv_bias=qkv_bias)
    with torch.device("meta"):  # shapes only: no memory is allocated
        block = TransformerBlock(cfg, default_attention(cfg), FeedForward(cfg))
    return sum(p.numel() for p in block.parameters())


@exercise("03.2", "parameters of one transformer block", atol=0)
def _cases_block_parameters():
    settings = [
        (768, 3072, True),  # GPT-2 small: 7,087,872
        (768, 3072, False),
        (8, 32, False),  # the notebook's demo model
        (128, 512, False),  # the notebook's TinyStories model
        (1024, 4096, True),  # GPT-2 medium
        (12288, 49152, True),  # GPT-3 175B
        (6, 10, True),  # d_ff is not always 4 * d_model
    ]
    return [(s, _block_parameters(*s)) for s in settings]


def _tiny_model(vocab_size: int, context_length: int, seed: int) -> GPTModel:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, context_length=context_length, d_model=16, n_heads=2,
                    n_layers=2, dropout=0.0)
    model = GPTModel(cfg).eval()
    with torch.no_grad():  # larger head weights than the N(0, 0.02) init, so the argmax changes each step
        model.out_head.weight.mul_(50.0)
    return model


@exercise("03.3", "greedy generation: crop, predict, append")
def _cases_greedy():
    cases = []
    settings = [  # (vocab, context_length, batch, prompt length, new tokens)
        (50, 8, 1, 3, 4),
        (50, 8, 2, 5, 6),  # the sequence grows past the context length: crop to the last 8
        (30, 4, 3, 6, 5),  # the prompt itself is longer than the context
        (20, 6, 1, 2, 0),  # zero new tokens: the prompt comes back unchanged
    ]
    for i, (V, T, B, n_prompt, n_new) in enumerate(settings):
        model = _tiny_model(V, T, seed=330 + i)
        g = torch.Generator().manual_seed(340 + i)
        prompt = torch.randint(0, V, (B, n_prompt), generator=g)
        cases.append(((model, prompt, n_new), generate(model, prompt, n_new)))
    return cases

"""Shipped corpora, story splits and sliding-window loaders (Lecture 03).

Everything reads ``data/``; nothing is downloaded. Each corpus file is checked against
its recorded sha256, so a truncated or edited file fails loudly instead of training on junk.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from utils import DATA_DIR

STORY_SEPARATOR = "\n<|endoftext|>\n"


@dataclass(frozen=True)
class Corpus:
    """A text file shipped in ``data/corpora`` (Lecture 03)."""

    path: Path
    sha256: str
    license: str


CORPORA: dict[str, Corpus] = {
    "tinystories": Corpus(DATA_DIR / "corpora/tinystories/tinystories_train_head_2MiB.txt",
                          "5352b299dcb1a32898b2d779b145b5a05f3e1265953fd21c264c9f9f9c9ae33d",
                          "CDLA-Sharing-1.0 (Eldan and Li 2023)"),
    "tinyshakespeare": Corpus(DATA_DIR / "corpora/tinyshakespeare/input.txt",
                              "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                              "public domain text (karpathy/char-rnn, MIT repository)"),
}


@lru_cache(maxsize=None)
def load_corpus(name: str) -> str:
    """Return the text of a shipped corpus, checked against its sha256 (Lecture 03)."""
    if name not in CORPORA:
        raise ValueError(f"Unknown corpus {name!r}. Available: {', '.join(sorted(CORPORA))}.")
    corpus = CORPORA[name]
    restore = f"restore it with `git checkout -- {os.path.relpath(corpus.path, DATA_DIR.parent)}`"
    if not corpus.path.is_file():
        raise FileNotFoundError(f"Corpus file {corpus.path} is missing: {restore}.")
    raw = corpus.path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != corpus.sha256:
        raise ValueError(f"Corpus file {corpus.path} is corrupted (sha256 differs from data/README.md): {restore}.")
    return raw.decode("utf-8")


def split_stories(text: str, val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Split TinyStories text into whole stories, then into train and validation (Lecture 03).

    Stories are separated by ``<|endoftext|>`` lines; the unfinished story after the last
    separator is dropped. The last ``val_fraction`` of the stories (rounded up) is validation,
    so the split is the same on every machine and never cuts a story in two.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}.")
    pieces = text.split(STORY_SEPARATOR)
    stories = [s.strip() for s in pieces[:-1] if s.strip()]  # pieces[-1] follows the last separator
    if len(stories) < 2:
        raise ValueError("Need at least two complete stories separated by '<|endoftext|>' lines.")
    n_val = min(max(1, math.ceil(len(stories) * val_fraction)), len(stories) - 1)
    return stories[:-n_val], stories[-n_val:]


def encode_stories(stories: Sequence[str], encode, end_id: int) -> list[int]:
    """Concatenate the token ids of ``stories``, each followed by ``end_id`` (Lecture 03)."""
    ids: list[int] = []
    for story in stories:
        ids.extend(encode(story))
        ids.append(end_id)
    return ids


class WindowDataset(Dataset):
    """Input/target windows over a token sequence: target = input shifted by one (Lecture 03).

    Window ``i`` starts at ``i * stride``; ``x`` holds ``context_length`` ids and ``y`` the
    ``context_length`` ids that follow each of them.
    """

    def __init__(self, ids: Sequence[int] | torch.Tensor, context_length: int, stride: int | None = None):
        stride = context_length if stride is None else stride
        if context_length <= 0 or stride <= 0:
            raise ValueError(f"context_length and stride must be positive, got {context_length} and {stride}.")
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        if len(self.ids) < context_length + 1:
            raise ValueError(f"Need at least context_length + 1 = {context_length + 1} tokens, "
                             f"got {len(self.ids)}; use more text or a shorter context.")
        self.context_length, self.stride = context_length, stride
        self.n_windows = (len(self.ids) - context_length - 1) // stride + 1

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n_windows:
            raise IndexError(f"window {i} out of range [0, {self.n_windows})")
        start = i * self.stride
        chunk = self.ids[start:start + self.context_length + 1]
        return chunk[:-1], chunk[1:]  # (T,), (T,)


def make_loader(ids: Sequence[int] | torch.Tensor, context_length: int, batch_size: int,
                stride: int | None = None, shuffle: bool = True, drop_last: bool = True,
                seed: int = 123) -> DataLoader:
    """A DataLoader of ``(x, y)`` batches of shape ``(batch_size, context_length)`` (Lecture 03).

    Shuffling uses its own seeded generator, so the batch order repeats run to run.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    dataset = WindowDataset(ids, context_length, stride)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=generator)

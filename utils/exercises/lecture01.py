"""Exercises of Lecture 01: the course map and reproducible runs."""

from __future__ import annotations

import json
import re

import torch

from utils import ROOT
from utils.exercises import exercise
from utils.runtime import set_seed


def _course_lectures() -> list[dict]:
    return json.loads((ROOT / "course.json").read_text(encoding="utf-8"))["lectures"]


def _lectures_using(lectures: list[dict], module: str) -> list[int]:
    """Reference: numbers of the lectures whose ``utils`` text names ``module`` in backticks."""
    pattern = re.compile(rf"`{re.escape(module)}(`|\.)")
    return sorted(lec["number"] for lec in lectures if pattern.search(lec["utils"]))


@exercise("01.1", "lectures that extend a utils module")
def _cases_lectures_using():
    lectures = _course_lectures()
    toy = [
        {"number": 3, "utils": "`moe`: router"},
        {"number": 1, "utils": "`moe.DeepSeekMoE`: shared experts"},
        {"number": 2, "utils": "`moe_extra`: not the same module; plain moe text does not count"},
        {"number": 4, "utils": "`remove()`: a function, not a module"},
    ]
    cases = [((lectures, name), _lectures_using(lectures, name))
             for name in ("attention", "mla", "moe", "runtime", "positional", "quantization", "kv_cache")]
    cases.append(((lectures, "transformer"), []))
    cases.append(((toy, "moe"), [1, 3]))
    return cases


def tiny_experiment() -> torch.Tensor:
    """A stand-in for one training run: random init, random data, dropout (Lecture 01 exercise).

    Returns a (2, 3) tensor that depends on every random draw PyTorch makes in between.
    """
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with torch.no_grad():
        return torch.nn.functional.dropout(layer(x), p=0.5, training=True)


@exercise("01.2", "two identical runs")
def _cases_run_twice():
    cases = []
    for seed in (0, 7, 123):
        runs = []
        for _ in range(2):
            set_seed(seed)
            runs.append(tiny_experiment())
        cases.append(((seed,), tuple(runs)))
    return cases


@exercise("01.3", "a private shuffle")
def _cases_shuffle_then_init():
    cases = []
    for n, seed in ((5, 0), (10, 123), (10, 124), (1, 7), (50, 2024)):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        set_seed(seed)  # the model a run that never shuffles would build
        weight = torch.nn.Linear(2, 2).weight.detach()
        cases.append(((n, seed), (order, weight)))
    return cases

"""Exercises of Lecture 01: the course map and reproducible runs."""

from __future__ import annotations

import json
import re

import torch

from utils import ROOT
from utils.exercises import Case, exercise


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
    named = {
        "attention": "attention: `attention` and `attention.X` (lecture 07 adds a class)",
        "plotting": "plotting: named beside `attention` in lecture 04",
        "mla": "mla: `mla` and `mla.MultiHeadLatentAttention`",
        "moe": "moe: `moe` and `moe.DeepSeekMoE`",
        "train": "train: lecture 30 'trains' in plain words, which does not count",
        "model": "model: 'language model' in plain words does not count",
        "runtime": "runtime: a module followed by functions in backticks",
        "kv_cache": "kv_cache: a name with an underscore",
    }
    cases = [Case(label, (lectures, name), _lectures_using(lectures, name)) for name, label in named.items()]
    cases.append(Case("transformer: a module no lecture builds", (lectures, "transformer"), []))
    cases.append(Case("toy list: unsorted input, `moe_extra` and plain words", (toy, "moe"), [1, 3]))
    return cases


def tiny_experiment() -> torch.Tensor:
    """A stand-in for one training run: random init, random data, dropout (Lecture 01 exercise).

    Returns a (2, 3) tensor that depends on every random draw PyTorch makes in between.
    """
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with torch.no_grad():
        return torch.nn.functional.dropout(layer(x), p=0.5, training=True)


def _seeded_experiment(seed: int) -> torch.Tensor:
    """Reference: ``tiny_experiment()`` right after seeding, without touching the global state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tiny_experiment()


@exercise("01.2", "two identical runs")
def _cases_run_twice():
    cases = []
    for seed in (0, 7, 123):
        run = _seeded_experiment(seed)
        cases.append(Case(f"seed {seed}: both runs equal a run seeded with {seed}", (seed,), (run, run.clone())))
    return cases


def _never_shuffled_weight(model_seed: int) -> torch.Tensor:
    """Reference: the weight of ``Linear(2, 2)`` built right after seeding with ``model_seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed)
        return torch.nn.Linear(2, 2).weight.detach()


@exercise("01.3", "a private shuffle")
def _cases_shuffle_then_init():
    cases = []
    for n, data_seed, model_seed in ((5, 0, 123), (10, 1, 123), (10, 2, 7), (50, 2024, 42), (8, 5, 5)):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed))
        label = f"{n} windows, data seed {data_seed}, model seed {model_seed}"
        if data_seed == model_seed:
            label += " (the same number)"
        cases.append(Case(label, (n, data_seed), (order, _never_shuffled_weight(model_seed)), seed=model_seed))
    return cases

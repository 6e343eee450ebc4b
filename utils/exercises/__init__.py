"""Exercise checkers used at the end of every notebook (Lecture 01 onwards).

``check("05.1", my_function)`` runs the learner's function on a few cases whose expected
results come from the course's reference code and prints either a pass or what differs.
Each lecture keeps its exercises in ``utils/exercises/lectureNN.py``, registered with
:func:`exercise`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Exercise:
    """One exercise: a title and a function that yields ``(args, expected)`` cases."""

    key: str
    title: str
    cases: Callable[[], list[tuple[tuple, Any]]]
    atol: float = 1e-5


_REGISTRY: dict[str, Exercise] = {}


def exercise(key: str, title: str, atol: float = 1e-5):
    """Decorator: register a cases function as exercise ``key`` (e.g. ``"05.1"``)."""

    def register(cases: Callable[[], list[tuple[tuple, Any]]]):
        _REGISTRY[key] = Exercise(key, title, cases, atol)
        return cases

    return register


def get_exercise(key: str) -> Exercise:
    """Find exercise ``key``, importing its lecture's module on first use."""
    lecture = key.split(".")[0]
    try:
        importlib.import_module(f"utils.exercises.lecture{lecture}")
    except ModuleNotFoundError:
        pass
    if key not in _REGISTRY:
        raise ValueError(f"Unknown exercise {key!r}. Known: {', '.join(sorted(_REGISTRY)) or 'none yet'}.")
    return _REGISTRY[key]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    return repr(value)


def compare(got: Any, expected: Any, atol: float) -> str | None:
    """None if ``got`` matches ``expected`` (tensors within ``atol``), else what differs."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor, got {_describe(got)}"
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        if expected.dtype == torch.bool or not expected.is_floating_point():
            wrong = int((got != expected).sum())
            return None if wrong == 0 else f"{wrong} of {expected.numel()} entries differ"
        if not torch.isfinite(got).eq(torch.isfinite(expected)).all():
            return "infinite or NaN entries where the expected result has none (or the reverse)"
        finite = torch.isfinite(expected)
        if (got[~finite] != expected[~finite]).any():
            return "infinite entries differ"
        diff = (got[finite].double() - expected[finite].double()).abs().max().item() if finite.any() else 0.0
        return None if diff <= atol else f"largest difference {diff:.4g} (tolerance {atol:g})"
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected {len(expected)} results, got {_describe(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare(g, e, atol)
            if problem:
                return f"result {i}: {problem}"
        return None
    if isinstance(expected, float):
        ok = isinstance(got, (int, float)) and abs(got - expected) <= atol * max(1.0, abs(expected))
        return None if ok else f"expected {expected:.6g}, got {_describe(got)}"
    return None if got == expected else f"expected {expected!r}, got {_describe(got)}"


class CheckResult:
    """What :func:`check` returns: true when every case passed. Shows nothing in a notebook,
    where the printed message is the answer."""

    def __init__(self, passed: bool):
        self.passed = passed

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"CheckResult(passed={self.passed})"

    def _ipython_display_(self) -> None:
        pass


def check(key: str, fn: Callable) -> CheckResult:
    """Run ``fn`` on exercise ``key``'s cases; print a pass or the first difference."""
    ex = get_exercise(key)
    cases = ex.cases()
    for n, (args, expected) in enumerate(cases, start=1):
        try:
            got = fn(*args)
        except NotImplementedError:
            print(f"Exercise {key} ({ex.title}): not attempted yet. Replace `raise NotImplementedError` with your code.")
            return CheckResult(False)
        except Exception as err:  # the learner's code failed: say where, not a traceback
            print(f"Exercise {key} ({ex.title}): case {n} raised {type(err).__name__}: {err}")
            return CheckResult(False)
        problem = compare(got, expected, ex.atol)
        if problem:
            print(f"Exercise {key} ({ex.title}): case {n} is wrong: {problem}.")
            return CheckResult(False)
    print(f"Exercise {key} ({ex.title}): all {len(cases)} cases pass.")
    return CheckResult(True)

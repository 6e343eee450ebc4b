"""Exercise checkers used at the end of every notebook (Lecture 01 onwards).

``check("05.1", my_function)`` runs the learner's function on a few cases whose expected
results come from the course's reference code and prints either a pass or, for the first
failing case, what the case is and what differs. Each lecture keeps its exercises in
``utils/exercises/lectureNN.py``, registered with :func:`exercise`.

Rules every checker follows (see CONTRIBUTING.md):

- each :class:`Case` says what it is (``"T_q != T_k, d_v != d_k"``), so a failure names it;
- expected values come from ``utils`` reference code, never from the learner's code;
- dtypes are compared, and an ``int`` answer must be an ``int``;
- the global random state is left as it was (:func:`check` runs inside ``torch.random.fork_rng``);
- exercises where the learner writes a module (:func:`module_case`) copy the weights of the
  ``utils`` module into the learner's, so both compute with the same numbers.
"""

from __future__ import annotations

import importlib
import numbers
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

_LIBRARY_DIRS = (str(Path(__file__).resolve().parent.parent), str(Path(torch.__file__).resolve().parent))


@dataclass(frozen=True)
class Case:
    """One checked call: ``label`` says what the case is, ``args`` go to the learner's function.

    With ``seed``, the global generator is seeded (inside a fork, so the learner's own random
    state is untouched) right before the learner's code runs.
    """

    label: str
    args: tuple
    expected: Any
    seed: int | None = None


def _call(fn: Callable, args: tuple) -> Any:
    return fn(*args)


@dataclass(frozen=True)
class Exercise:
    """One exercise: a title, a function that returns its :class:`Case` list, and how to call."""

    key: str
    title: str
    cases: Callable[[], list[Case]]
    atol: float = 1e-5
    call: Callable[[Callable, tuple], Any] = field(default=_call)
    replayable: bool = True  # False when an expected value cannot be handed back as an answer (a class is asked)


_REGISTRY: dict[str, Exercise] = {}


def exercise(key: str, title: str, atol: float = 1e-5, call: Callable[[Callable, tuple], Any] = _call,
             replayable: bool | None = None):
    """Decorator: register a cases function as exercise ``key`` (e.g. ``"05.1"``).

    ``call(fn, args)`` runs the learner's answer on one case (default ``fn(*args)``);
    exercises built with :func:`module_case` pass ``call=run_module``. ``replayable=False``
    says the expected values cannot be handed back as an answer (the default for ``run_module``);
    such a checker's right and wrong answers are tested in its lecture's test file only.
    """

    def register(cases: Callable[[], list[Case]]):
        _REGISTRY[key] = Exercise(key, title, cases, atol, call,
                                  replayable if replayable is not None else call is not run_module)
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


# --- building cases without touching the global random state ---------------------------------------

def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """``scale * torch.randn(*shape)`` from a private generator seeded with ``seed``."""
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def seeded(factory: Callable[..., Any], *args, seed: int, **kwargs) -> Any:
    """``factory(*args, **kwargs)`` (e.g. a module whose init draws weights) with the global generator
    seeded to ``seed`` inside ``torch.random.fork_rng``, so the caller's random state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(*args, **kwargs)


# --- exercises in which the learner writes a module ------------------------------------------------

@dataclass(frozen=True)
class ModuleCall:
    """How to build the learner's module and what to feed it (see :func:`module_case`)."""

    init_args: tuple
    init_kwargs: dict
    state_dict: dict
    inputs: tuple
    train: bool
    seed: int


def module_case(label: str, reference: nn.Module, init_args: tuple, inputs: tuple,
                init_kwargs: dict | None = None, train: bool = False, seed: int = 0) -> Case:
    """A case for an exercise where the learner writes a module class.

    ``reference`` is the ``utils`` module built with ``init_args``/``init_kwargs``; its output
    on ``inputs`` (in training mode if ``train``, after ``torch.manual_seed(seed)``, so dropout
    draws the same masks) is the expected value. :func:`run_module` builds the learner's class
    with the same arguments, loads the reference's weights into it and runs it the same way.
    """
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        reference.train(train)
        torch.manual_seed(seed)
        expected = reference(*inputs)
    call = ModuleCall(tuple(init_args), dict(init_kwargs or {}), state, tuple(inputs), train, seed)
    return Case(label, (call,), expected)


def module_cases(reference_cls: Callable[..., nn.Module], specs: list[tuple], example: torch.Tensor,
                 seed: int) -> list[Case]:
    """Cases for a module exercise from ``(label, init_args, init_kwargs, input_shape, train)`` specs.

    Case ``i`` builds ``reference_cls(*init_args, **init_kwargs)`` with weights drawn under seed
    ``seed + i``, feeds it ``example`` (when ``input_shape`` is None) or :func:`randn` of that shape
    (seed ``seed + 10 + i``), and replays dropout from seed ``seed + 20 + i``.
    """
    cases = []
    for i, (label, init_args, init_kwargs, shape, train) in enumerate(specs):
        reference = seeded(reference_cls, *init_args, seed=seed + i, **init_kwargs)
        x = example if shape is None else randn(*shape, seed=seed + 10 + i)
        cases.append(module_case(label, reference, init_args, (x,), init_kwargs=init_kwargs, train=train,
                                 seed=seed + 20 + i))
    return cases


def run_in_chunks(layer: nn.Module, x: torch.Tensor, chunks: tuple | None):
    """Feed ``x`` (B, T, d) to a cached attention layer ``chunks`` tokens at a time (prefill, then steps).

    Returns ``layer(x)`` when ``chunks`` is None, else (outputs (B, T, d_out), the cached latent rows).
    Used by the checkers of the decoding exercises (Lectures 13 and 17).
    """
    if chunks is None:
        return layer(x)
    cache, outs, start = layer.new_cache(x.shape[0]), [], 0
    for n in chunks:
        outs.append(layer(x[:, start:start + n], cache=cache))
        start += n
    return torch.cat(outs, dim=1), cache.latent.clone()


def run_module(cls: Callable[..., nn.Module], args: tuple) -> Any:
    """Build the learner's module, copy the reference weights into it, run it (the ``call`` of module exercises)."""
    (spec,) = args
    module = cls(*spec.init_args, **spec.init_kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{getattr(cls, '__name__', cls)} must build an nn.Module, got {type(module).__name__}")
    theirs, ours = set(module.state_dict()), set(spec.state_dict)
    if theirs != ours:
        raise KeyError(f"your module's parameters are {sorted(theirs)}, the reference's are {sorted(ours)}: "
                       "keep the attribute names of the exercise's template")
    for name, tensor in module.state_dict().items():
        if tensor.shape != spec.state_dict[name].shape:
            raise ValueError(f"parameter {name} has shape {tuple(tensor.shape)}, the reference's "
                             f"{tuple(spec.state_dict[name].shape)}: check the layer sizes in __init__")
    module.load_state_dict(spec.state_dict)
    module.train(spec.train)
    torch.manual_seed(spec.seed)
    with torch.no_grad():
        return module(*spec.inputs)


# --- comparing ------------------------------------------------------------------------------------

def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def compare(got: Any, expected: Any, atol: float) -> str | None:
    """None if ``got`` matches ``expected`` (tensors within ``atol``, same dtype), else what differs."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor, got {_describe(got)}"
        got = got.detach()
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        if got.dtype != expected.dtype:
            return f"expected dtype {expected.dtype}, got {got.dtype}"
        if expected.dtype == torch.bool or not expected.is_floating_point():
            wrong = int((got.cpu() != expected).sum())
            return None if wrong == 0 else f"{wrong} of {expected.numel()} entries differ"
        got = got.cpu()
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
    if isinstance(expected, bool):
        return None if got is expected else f"expected {expected}, got {_describe(got)}"
    if isinstance(expected, int):
        if not isinstance(got, numbers.Integral) or isinstance(got, bool):
            return f"expected the int {expected}, got {_describe(got)}: return an int (// or int())"
        return None if got == expected else f"expected {expected}, got {got}"
    if isinstance(expected, float):
        ok = isinstance(got, numbers.Real) and not isinstance(got, bool) \
            and abs(got - expected) <= atol * max(1.0, abs(expected))
        return None if ok else f"expected {expected:.6g}, got {_describe(got)}"
    return None if got == expected else f"expected {expected!r}, got {_describe(got)}"


# --- checking -------------------------------------------------------------------------------------

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


def _learner_line(err: BaseException) -> str:
    """The last line of the traceback that is the learner's code (not utils, not torch)."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if not frame.filename.startswith(_LIBRARY_DIRS) and frame.line:
            return f"\n    in your code, line {frame.lineno}: {frame.line.strip()}"
    return ""


def check(key: str, fn: Callable) -> CheckResult:
    """Run ``fn`` on exercise ``key``'s cases; print a pass or the first failing case and why.

    Runs inside ``torch.random.fork_rng``: the caller's global random state is left untouched.
    """
    ex = get_exercise(key)
    with torch.random.fork_rng(devices=[]):
        cases = ex.cases()
        for n, case in enumerate(cases, start=1):
            if not isinstance(case, Case):
                raise TypeError(f"exercise {key}: cases must be Case(label, args, expected), got {case!r}")
            name = f"case {n} ({case.label})"
            if case.seed is not None:
                torch.manual_seed(case.seed)
            try:
                got = ex.call(fn, case.args)
            except NotImplementedError:
                print(f"Exercise {key} ({ex.title}): not attempted yet. "
                      "Replace `raise NotImplementedError` with your code.")
                return CheckResult(False)
            except Exception as err:  # the learner's code failed: say which case and which line
                print(f"Exercise {key} ({ex.title}): {name} raised {type(err).__name__}: {err}{_learner_line(err)}")
                return CheckResult(False)
            problem = compare(got, case.expected, ex.atol)
            if problem:
                print(f"Exercise {key} ({ex.title}): {name} is wrong: {problem}.")
                return CheckResult(False)
    print(f"Exercise {key} ({ex.title}): all {len(cases)} cases pass.")
    return CheckResult(True)

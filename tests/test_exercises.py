"""The checker machinery (utils.exercises) and the hygiene every registered checker must keep.

Each lecture's wrong answers (the mistakes learners really make) are tested in
tests/test_exercises_lectureNN.py with the helpers of tests/checker_tools.py.
"""

import importlib
import pkgutil

import pytest
import torch
from torch import nn

import utils.exercises as package
from utils.exercises import _REGISTRY, Case, check, compare, exercise, get_exercise, module_case, run_module


@exercise("99.1", "double a tensor")
def _cases():
    x = torch.arange(4.0)
    return [Case("four values", (x,), 2 * x), Case("negative values", (-x,), -2 * x)]


class _Scale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(x * self.weight)


@exercise("99.2", "a module with weights and dropout", call=run_module)
def _module_cases():
    return [module_case("eval mode", _Scale(3), (3,), (torch.ones(2, 3),)),
            module_case("training mode: dropout", _Scale(3), (3,), (torch.ones(4, 3),), train=True, seed=5)]


def test_correct_function_passes(capsys):
    assert check("99.1", lambda x: 2 * x)
    assert "all 2 cases pass" in capsys.readouterr().out


def test_wrong_function_names_the_case(capsys):
    assert not check("99.1", lambda x: 3 * x)
    assert "case 1 (four values) is wrong: largest difference 3" in capsys.readouterr().out


def test_not_attempted_and_crashing_show_the_learners_line(capsys):
    def stub(x):
        raise NotImplementedError

    assert not check("99.1", stub)
    assert "not attempted yet" in capsys.readouterr().out

    def crashes(x):
        y = x @ torch.ones(3)
        return y

    assert not check("99.1", crashes)
    out = capsys.readouterr().out
    assert "case 1 (four values) raised RuntimeError" in out
    assert "in your code, line" in out and "y = x @ torch.ones(3)" in out


def test_module_exercise_copies_weights_and_replays_dropout(capsys):
    assert check("99.2", _Scale)

    class Undropped(_Scale):
        def forward(self, x):
            return x * self.weight

    assert not check("99.2", Undropped)
    assert "case 2 (training mode: dropout) is wrong" in capsys.readouterr().out

    class Renamed(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.w = nn.Parameter(torch.randn(d))

        def forward(self, x):
            return x * self.w

    assert not check("99.2", Renamed)
    assert "keep the attribute names" in capsys.readouterr().out


def test_unknown_exercise():
    with pytest.raises(ValueError, match="Unknown exercise '99.9'"):
        get_exercise("99.9")


@pytest.mark.parametrize("got, expected, fragment", [
    (torch.zeros(2, 3), torch.zeros(3, 2), "expected shape (3, 2)"),
    ([1, 2], torch.zeros(2), "expected a tensor"),
    (torch.tensor([1, 2]), torch.tensor([1, 3]), "1 of 2 entries differ"),
    (torch.tensor([1.0, 2.0]), torch.tensor([1, 2]), "expected dtype torch.int64, got torch.float32"),
    (torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1, 2]), "expected dtype torch.int64"),
    (torch.tensor([0.0, float("inf")]), torch.tensor([0.0, 1.0]), "infinite"),
    (3, 4, "expected 4"),
    (4.0, 4, "expected the int 4, got float"),
    (True, 1, "expected the int 1, got bool"),
    (1, True, "expected True"),
    (0.5, 0.25, "expected 0.25"),
    ((torch.ones(1),), (torch.ones(1), torch.ones(1)), "expected 2 results"),
])
def test_compare_reports_what_differs(got, expected, fragment):
    assert fragment in compare(got, expected, 1e-6)


def test_compare_accepts_matches():
    assert compare(torch.tensor([1.0, float("-inf")]), torch.tensor([1.0, float("-inf")]), 1e-6) is None
    assert compare((1, torch.ones(2)), [1, torch.ones(2)], 1e-6) is None
    assert compare(torch.ones(2, requires_grad=True) * 1, torch.ones(2), 1e-6) is None


def _perturb(value):
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            return ~value
        finite = torch.isfinite(value) if value.is_floating_point() else torch.ones_like(value, dtype=torch.bool)
        return torch.where(finite, value + 1, value)
    if isinstance(value, (tuple, list)):
        return type(value)([_perturb(value[0]), *value[1:]] if value else [0])
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return object()


def _all_exercises():
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"utils.exercises.{info.name}")
    return sorted(k for k in _REGISTRY if not k.startswith("99."))


def _answering(values):
    """A learner's function that returns the given answers in turn, whatever it is called with."""
    answers = iter(values)
    return lambda *args: next(answers)


@pytest.mark.parametrize("key", _all_exercises())
def test_each_checker_labels_its_cases_and_keeps_the_global_random_state(key, capsys):
    ex = get_exercise(key)
    cases = ex.cases()
    assert cases and all(isinstance(c, Case) and isinstance(c.args, tuple) and c.label for c in cases)
    assert len({c.label for c in cases}) == len(cases), "each case needs its own label"
    torch.manual_seed(2024)
    before = torch.random.get_rng_state()
    expected = [c.expected for c in cases]
    if not ex.replayable:  # e.g. the learner writes a class: tests/test_exercises_lectureNN.py checks it
        assert not check(key, lambda *args: None)
    else:
        assert check(key, _answering(expected))
        assert not check(key, _answering([_perturb(e) for e in expected]))
        assert "is wrong" in capsys.readouterr().out
    assert torch.equal(torch.random.get_rng_state(), before), f"check({key!r}) changed the global random state"

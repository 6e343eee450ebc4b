import pytest
import torch

from utils.exercises import _REGISTRY, check, compare, exercise, get_exercise


@exercise("99.1", "double a tensor")
def _cases():
    x = torch.arange(4.0)
    return [((x,), 2 * x), ((-x,), -2 * x)]


def test_correct_function_passes(capsys):
    assert check("99.1", lambda x: 2 * x)
    assert "all 2 cases pass" in capsys.readouterr().out


def test_wrong_function_is_explained(capsys):
    assert not check("99.1", lambda x: 3 * x)
    assert "case 1 is wrong: largest difference 3" in capsys.readouterr().out


def test_not_attempted_and_crashing(capsys):
    def stub(x):
        raise NotImplementedError

    assert not check("99.1", stub)
    assert "not attempted yet" in capsys.readouterr().out
    assert not check("99.1", lambda x: x @ torch.ones(3))
    assert "case 1 raised RuntimeError" in capsys.readouterr().out


def test_unknown_exercise():
    with pytest.raises(ValueError, match="Unknown exercise '99.9'"):
        get_exercise("99.9")


@pytest.mark.parametrize("got, expected, fragment", [
    (torch.zeros(2, 3), torch.zeros(3, 2), "expected shape (3, 2)"),
    ([1, 2], torch.zeros(2), "expected a tensor"),
    (torch.tensor([1, 2]), torch.tensor([1, 3]), "1 of 2 entries differ"),
    (torch.tensor([0.0, float("inf")]), torch.tensor([0.0, 1.0]), "infinite"),
    (3, 4, "expected 4"),
    (0.5, 0.25, "expected 0.25"),
    ((torch.ones(1),), (torch.ones(1), torch.ones(1)), "expected 2 results"),
])
def test_compare_reports_what_differs(got, expected, fragment):
    assert fragment in compare(got, expected, 1e-6)


def test_compare_accepts_matches():
    assert compare(torch.tensor([1.0, float("-inf")]), torch.tensor([1.0, float("-inf")]), 1e-6) is None
    assert compare((1, torch.ones(2)), [1, torch.ones(2)], 1e-6) is None


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
    import importlib
    import pkgutil

    import utils.exercises as package
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"utils.exercises.{info.name}")
    return sorted(k for k in _REGISTRY if not k.startswith("99."))


@pytest.mark.parametrize("key", _all_exercises())
def test_each_checker_accepts_its_answers_and_rejects_perturbed_ones(key, capsys):
    cases = get_exercise(key).cases()
    assert cases and all(isinstance(args, tuple) for args, _ in cases)
    answers = iter([expected for _, expected in cases])
    assert check(key, lambda *args: next(answers))
    wrong = iter([_perturb(expected) for _, expected in cases])
    assert not check(key, lambda *args: next(wrong))
    assert "is wrong" in capsys.readouterr().out

"""Helpers for the per-lecture checker tests (tests/test_exercises_lectureNN.py).

Each lecture's test file lists the right answer and the wrong answers learners really write
(a global instead of a row max, a float count, a transposed weight, ...) and asserts that the
checker accepts the first, rejects each of the others and leaves the global random state alone.
"""

from __future__ import annotations

import contextlib
import io

import torch

from utils.exercises import check


def run_check(key: str, answer) -> tuple[bool, str]:
    """``check(key, answer)``: whether it passed and what it printed; asserts the random state is kept."""
    before = torch.random.get_rng_state()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        passed = bool(check(key, answer))
    assert torch.equal(torch.random.get_rng_state(), before), f"check({key!r}) changed the global random state"
    return passed, out.getvalue()


def assert_accepts(key: str, answer) -> None:
    passed, text = run_check(key, answer)
    assert passed, text


def assert_rejects(key: str, answer, fragment: str = "") -> str:
    """The checker must reject ``answer``, and its message must contain ``fragment``."""
    passed, text = run_check(key, answer)
    assert not passed, f"check({key!r}) accepted a wrong answer"
    assert "not attempted" not in text, text
    assert fragment in text, text
    return text

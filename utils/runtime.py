"""Runtime helpers: device, seeding and the CI-mode switch (Lecture 01)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

CI_ENV_VAR = "COURSE_CI"
"""Set ``COURSE_CI=1`` to run every notebook in CI mode (short training, same lesson)."""

MPS_ENV_VAR = "COURSE_ALLOW_MPS"
"""Set ``COURSE_ALLOW_MPS=1`` to let :func:`get_device` pick Apple's MPS backend."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not understood: set it to 1 (on) or 0 (off).")


def is_ci_mode() -> bool:
    """True when ``COURSE_CI`` is set to 1: notebooks shorten their training loops (Lecture 01)."""
    return _env_flag(CI_ENV_VAR)


def ci_or_full(ci, full):
    """Return ``ci`` in CI mode and ``full`` otherwise; only training-length knobs use this (Lecture 01)."""
    return ci if is_ci_mode() else full


def get_device(allow_mps: bool | None = None) -> torch.device:
    """Pick the device: CUDA if present, then MPS only if opted in, else CPU (Lecture 01).

    MPS is opt-in (``allow_mps=True`` or ``COURSE_ALLOW_MPS=1``) because some operations the
    course uses are missing or slower there.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    if allow_mps is None:
        allow_mps = _env_flag(MPS_ENV_VAR)
    if allow_mps and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int = 123) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so runs repeat (Lecture 01)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment_report() -> dict[str, str]:
    """Versions and device, for the environment check in Lecture 01."""
    import platform

    import matplotlib
    import tiktoken

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "tiktoken": tiktoken.__version__,
        "device": str(get_device()),
        "threads": str(torch.get_num_threads()),
        "ci_mode": str(is_ci_mode()),
    }


FULL_RUN_RECORD = "docs/full_mode.json"
"""Where ``tools/full_run.py`` records each notebook's full-mode wall time and key results."""


def show_full_run(lecture: int) -> None:
    """Print what this lecture's notebook gave in full mode on a 2-core CPU (Lecture 01).

    The saved outputs of a notebook come from the short run; this quotes the recorded full
    run (``docs/full_mode.json``, written by ``tools/full_run.py``) beside them.
    """
    import json

    from utils import ROOT

    path = ROOT / FULL_RUN_RECORD
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"notebooks": {}}
    entry = record["notebooks"].get(f"{lecture:02d}")
    if entry is None:
        print(f"No full run of lecture {lecture:02d} is recorded yet: run `python tools/full_run.py {lecture:02d}`.")
        return
    print(f"Full run (COURSE_CI=0) of this notebook on {record['machine']}, {record['date']}: "
          f"{entry['wall_s']} s in all.")
    for text in entry["results"]:
        print("\n" + text)

#!/usr/bin/env bash
# Create .venv (once) and install the course with the versions CI tests (constraints.txt).
# The pinned CPU build of torch goes first, so pip never pulls a multi-GB CUDA build.
# Sourced by tools/start.sh and tools/test.sh; re-installs only when a requirements file changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=$(cat requirements.txt requirements-colab.txt requirements-dev.txt constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.installed 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==$(sed -n 's/^torch==//p' constraints.txt)"
    .venv/bin/python -m pip install -q -c constraints.txt -r requirements-dev.txt
    echo "$stamp" > .venv/.installed
fi

#!/usr/bin/env bash
# Install (first run) and run the whole test suite: unit tests, parity tests and strict nbval
# over every notebook. Extra arguments go to pytest, e.g. `bash tools/test.sh tests/test_gpt.py -n 0`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
exec .venv/bin/python -m pytest "$@"

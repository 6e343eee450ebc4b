#!/usr/bin/env bash
# Install (first run) and open the course in JupyterLab. Extra arguments go to JupyterLab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
exec .venv/bin/jupyter lab notebooks/01_series_introduction.ipynb "$@"

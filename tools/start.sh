#!/usr/bin/env bash
# Install (first run) and open the course in JupyterLab, serving the repository root (so the
# README, utils/ and data/ are browsable) with lecture 01 open. Extra arguments go to JupyterLab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
exec .venv/bin/jupyter lab --ServerApp.root_dir="$PWD" \
    --LabApp.default_url="/lab/tree/notebooks/01_series_introduction.ipynb" "$@"

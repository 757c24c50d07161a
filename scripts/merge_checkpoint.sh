#!/usr/bin/env bash
# A training checkpoint -> a Hugging Face model folder (verl's model merger), ready for evaluation.
#   bash scripts/merge_checkpoint.sh CKPT OUT_DIR [--dry-run]
# CKPT: the run's checkpoint folder (latest step), a global_step_N folder, or its actor folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then PY="$VIRTUAL_ENV/bin/python"
elif [[ -x "$root/.venv/bin/python" ]]; then PY="$root/.venv/bin/python"
else PY=python3; fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m recipe.lte.tools.merge "$@"

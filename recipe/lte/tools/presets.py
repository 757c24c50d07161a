"""The paper's runs as hydra presets: ``recipe/lte/config/preset/<name>.yaml``, selected by ``+preset=<name>``.

Files starting with ``_`` are shared parts (the paper's settings, a model's GPU layout), not runnable presets.
``check_layout`` refuses layouts that would only fail once training is under way (a token budget smaller than
one sequence fails verl's micro-batching at the first update, after a full generation phase).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

PRESET_DIR = Path(__file__).resolve().parents[1] / "config" / "preset"

# With no --preset on a machine with CUDA GPUs, run_lte.sh runs this one.
DEFAULT_GPU_PRESET = "qwen3-4b-lte"


def list_presets() -> list[str]:
    """Names of the runnable presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def preset_description(name: str) -> str:
    """The preset file's leading comment (after the ``@package`` header), joined into one line."""
    lines = []
    for line in (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def preset_overrides(name: str | None, overrides: list[str] | None = None) -> list[str]:
    """Hydra overrides selecting preset ``name`` (None: the recipe config alone), followed by ``overrides``."""
    overrides = list(overrides or [])
    if name is None:
        return overrides
    if name not in list_presets():
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(list_presets())} (see --list)")
    if any(o.lstrip("+~").startswith("preset=") for o in overrides):
        raise ValueError("give the preset once, with --preset NAME, not also as a preset= override")
    return [f"+preset={name}", *overrides]


def _budget_keys(config: DictConfig) -> dict[str, int | None]:
    arr = config.actor_rollout_ref
    keys = {"actor_rollout_ref.actor.ppo_max_token_len_per_gpu": arr.actor.ppo_max_token_len_per_gpu}
    if arr.rollout.get("log_prob_use_dynamic_bsz", False):
        keys["actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu"] = arr.rollout.log_prob_max_token_len_per_gpu
    if arr.ref.get("log_prob_use_dynamic_bsz", False):
        keys["actor_rollout_ref.ref.log_prob_max_token_len_per_gpu"] = arr.ref.log_prob_max_token_len_per_gpu
    return keys


def check_layout(config: DictConfig) -> None:
    """Refuse GPU layouts that cannot work, naming the key and the fix.

    - With dynamic batch sizes, every token budget must hold one longest sequence
      (``rollout.prompt_length + rollout.response_length``: hinted prompts are up to ``prompt_length`` long).
    - A vLLM replica (``tensor_model_parallel_size`` GPUs) must fit inside one node.
    """
    errors = []
    rollout = config.actor_rollout_ref.rollout
    longest = int(rollout.prompt_length) + int(rollout.response_length)
    if config.actor_rollout_ref.actor.use_dynamic_bsz:
        for key, budget in _budget_keys(config).items():
            if budget is not None and int(budget) < longest:
                errors.append(
                    f"{key}={budget} is smaller than one sequence (rollout.prompt_length + rollout.response_length = "
                    f"{longest}): verl would stop at the first update; set it to at least {longest}"
                )
    tp, per_node = int(rollout.tensor_model_parallel_size), int(config.trainer.n_gpus_per_node)
    if tp < 1 or per_node % tp:
        errors.append(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} does not divide "
            f"trainer.n_gpus_per_node={per_node}: a vLLM replica must fit in one node; choose a divisor"
        )
    if errors:
        raise ValueError("GPU layout cannot run:\n  - " + "\n  - ".join(errors))


def data_files(config: DictConfig) -> list[str]:
    """The resolved training and validation parquet paths of a composed config (train first)."""
    files: list[str] = []
    for key in ("train_files", "val_files"):
        value = config.data[key]
        files.extend([value] if isinstance(value, str) else list(value))
    return [str(Path(f).expanduser()) for f in files]

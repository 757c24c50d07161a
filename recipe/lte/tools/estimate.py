"""Sizes of a run, computed from its config before anything is downloaded or started.

- ``count_parameters``: the model's parameter count, from its ``config.json`` (the model is built on PyTorch's
  meta device: no weights, no memory, exact for any architecture transformers knows);
- ``checkpoint_bytes``: what one verl FSDP checkpoint of the actor takes on disk;
- ``checkpoints_on_disk``: how many of them the run holds at once (verl's retention rule);
- ``gpu_memory``: the per-GPU peak of each training phase (rollout, old log-probs, update), an estimate good to
  about +-30%: it is the arithmetic of ``/work/shared/docs/gpu-preset-review.md`` as code, not a measurement
  (``bash run_lte.sh --smoke`` prints measured peaks beside it).

Used by ``recipe.lte.tools.preflight`` (disk and GPU checks) and ``recipe.lte.tools.smoke``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
# What an 80 GB A100/H100 reports (nvidia-smi: 81559 MiB): the GPUs the presets are sized for.
NOMINAL_GPU_BYTES = 81559 * 1024**2

# The architecture fields of the paper's base models, as in their config.json on the Hugging Face hub, so the
# disk and memory estimates work before the weights are downloaded (Qwen3-4B ties its embeddings, 8B does not).
KNOWN_MODEL_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen3-4B-Base": {
        "model_type": "qwen3",
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-8B-Base": {
        "model_type": "qwen3",
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
    },
}

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


def hub_cache_dir(env) -> str | None:
    """The Hugging Face hub cache folder ``env`` selects (HF_HUB_CACHE, else HF_HOME/hub); None: the default."""
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    return str(Path(env["HF_HOME"]) / "hub") if env.get("HF_HOME") else None


def find_model_config(path: str, cache_dir: str | None = None) -> tuple[dict, str]:
    """The model's ``config.json`` as a dict, and where it came from; never downloads.

    Looked up in order: a local folder, the Hugging Face cache (a hub id downloaded before), the built-in copy
    of the paper's models. Raises FileNotFoundError when none has it.
    """
    local = Path(path).expanduser()
    if (local / "config.json").is_file():
        return json.loads((local / "config.json").read_text()), str(local / "config.json")
    cached = cached_hub_file(path, "config.json", cache_dir)
    if cached:
        return json.loads(Path(cached).read_text()), cached
    if path in KNOWN_MODEL_CONFIGS:
        return dict(KNOWN_MODEL_CONFIGS[path]), f"built-in copy of {path}'s config.json"
    raise FileNotFoundError(f"no config.json for {path!r}: not a local folder, not in the Hugging Face cache")


def cached_hub_file(repo_id: str, filename: str, cache_dir: str | None = None) -> str | None:
    """The path of ``filename`` of hub model ``repo_id`` in the local Hugging Face cache, or None (no network)."""
    if repo_id.startswith(("/", ".", "~")) or repo_id.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def count_parameters(model_config: dict) -> int:
    """Parameters of the causal LM described by ``model_config`` (a config.json dict), tied weights once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in model_config.items() if k not in ("architectures", "auto_map")}
    config = AutoConfig.for_model(**fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def checkpoint_bytes(num_params: int, save_contents: list[str], model_dtype: str = "fp32") -> int:
    """Bytes of one verl FSDP actor checkpoint (all ranks' shards), without its small extras.

    verl's ``FSDPCheckpointManager`` writes, per ``checkpoint.save_contents`` entry: ``model`` = the FSDP
    parameters in ``fsdp_config.model_dtype`` (fp32: 4 bytes each); ``optimizer`` = AdamW's two moments, in
    the parameters' dtype (8 bytes); ``hf_model`` = a bfloat16 Hugging Face copy (2 bytes). ``extra`` (the
    learning-rate scheduler and RNG states) and the tokenizer copy are a few MB.
    """
    width = DTYPE_BYTES[str(model_dtype).lower()]
    per_param = {"model": width, "optimizer": 2 * width, "hf_model": 2}
    return num_params * sum(per_param.get(c, 0) for c in save_contents)


def number_of_saves(total_steps: int, save_freq: int) -> int:
    """verl saves every ``save_freq`` steps and at the last step (trainer_base.py ``fit``); none if <= 0."""
    if save_freq <= 0 or total_steps <= 0:
        return 0
    return total_steps // save_freq + (1 if total_steps % save_freq else 0)


def checkpoints_on_disk(saves: int, max_to_keep: int | None) -> int:
    """The most actor checkpoints on disk at once during a run of ``saves`` saves.

    verl 0.9.1 (``BaseCheckpointManager.ensure_checkpoint_capacity`` / ``register_checkpoint``): with
    ``max_to_keep`` >= 2 it deletes down to ``max_to_keep - 1`` before writing the next one; with 1 it keeps the
    old one until the new save completes (so 2 at the peak); with None or <= 0 it keeps everything.
    """
    if not max_to_keep or max_to_keep <= 0:
        return saves
    return min(saves, max(max_to_keep, 2))


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs of an architecture."""

    params: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, model_config: dict, params: int | None = None) -> ModelShape:
        heads = model_config["num_attention_heads"]
        return cls(
            params=count_parameters(model_config) if params is None else params,
            hidden=model_config["hidden_size"],
            layers=model_config["num_hidden_layers"],
            intermediate=model_config["intermediate_size"],
            vocab=model_config["vocab_size"],
            kv_heads=model_config.get("num_key_value_heads") or heads,
            head_dim=model_config.get("head_dim") or model_config["hidden_size"] // heads,
        )


@dataclass(frozen=True)
class Layout:
    """The memory-relevant settings of a run (``layout_from_config`` reads them from the composed config)."""

    world_size: int  # GPUs of the run (FSDP shards over all of them)
    tensor_parallel: int  # GPUs per vLLM replica
    vllm_fraction: float  # rollout.gpu_memory_utilization
    update_tokens: int  # tokens per GPU micro-batch in the update
    log_prob_tokens: int  # tokens per GPU micro-batch in the old-log-prob pass
    entropy_in_update: bool  # entropy bonus (or calculate_entropy): entropy under autograd in the update
    gradient_checkpointing: bool = True
    param_offload: bool = False
    optimizer_offload: bool = False
    model_dtype: str = "fp32"


def layout_from_config(config) -> Layout:
    """The ``Layout`` of a composed run config (``recipe.lte.tools.dry_run.compose_and_check``)."""
    arr = config.actor_rollout_ref
    actor, rollout = arr.actor, arr.rollout
    longest = int(rollout.prompt_length) + int(rollout.response_length)
    if actor.use_dynamic_bsz:
        update_tokens = int(actor.ppo_max_token_len_per_gpu)
    else:
        update_tokens = int(actor.ppo_micro_batch_size_per_gpu) * longest
    if rollout.get("log_prob_use_dynamic_bsz", actor.use_dynamic_bsz):
        log_prob_tokens = int(rollout.log_prob_max_token_len_per_gpu)
    else:
        log_prob_tokens = int(rollout.log_prob_micro_batch_size_per_gpu) * longest
    fsdp = actor.fsdp_config
    return Layout(
        world_size=int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node),
        tensor_parallel=int(rollout.tensor_model_parallel_size),
        vllm_fraction=float(rollout.gpu_memory_utilization),
        update_tokens=update_tokens,
        log_prob_tokens=log_prob_tokens,
        entropy_in_update=bool(float(actor.entropy_coeff) != 0 or actor.get("calculate_entropy", False)),
        gradient_checkpointing=bool(arr.model.get("enable_gradient_checkpointing", False)),
        param_offload=bool(fsdp.get("param_offload", False)),
        optimizer_offload=bool(fsdp.get("optimizer_offload", False)),
        model_dtype=str(fsdp.get("model_dtype", "fp32")),
    )


# Bytes per logit entry (tokens x vocabulary) alive at a pass's peak. Forward only: the bfloat16 logits.
# Update: the logits, the log-softmax kept for backward, its gradient. Entropy computed eagerly (torch.compile
# may fall back to eager without saying so: the estimate assumes it did) adds the bfloat16 softmax and its
# product with the logits, and under autograd their gradient too. verl computes the entropy in every
# old-log-prob pass (for the actor/entropy metric) and in the update when there is an entropy bonus.
LOGIT_BYTES = {"forward": 2, "update": 6}
ENTROPY_BYTES = {"forward": 4, "update": 6}


def gpu_memory(shape: ModelShape, layout: Layout, gpu_bytes: int = NOMINAL_GPU_BYTES) -> dict[str, int]:
    """Estimated peak bytes per GPU of each training phase, for GPUs of ``gpu_bytes``.

    - ``rollout``: the actor's resident FSDP state (fp32 parameters + AdamW moments, sharded over all GPUs;
      gradients are freed) + vLLM's share (``gpu_memory_utilization`` x the GPU: weights, KV cache, graphs).
    - ``old_log_prob``: resident state + one gathered layer + the micro-batch's logits (and eager entropy) +
      one decoder layer's activations, no autograd.
    - ``update``: state with gradients + the checkpointed layer inputs (bf16, every layer) + one layer
      recomputed with its gradients + the logits with autograd (and the entropy bonus's).
    """
    p, h, i, v = shape.params, shape.hidden, shape.intermediate, shape.vocab
    width = DTYPE_BYTES[layout.model_dtype.lower()]
    param_b = 0 if layout.param_offload else p * width / layout.world_size
    optim_b = 0 if layout.optimizer_offload else p * 2 * width / layout.world_size
    grads_b = p * width / layout.world_size
    gathered = 2 * p * 2 / shape.layers  # two bf16 layers unsharded at a time (FSDP prefetch)
    layer_act = (4 * h + 3 * i) * 2  # bytes per token of one decoder layer's activations (attention + MLP)

    t = layout.log_prob_tokens
    log_prob = param_b + optim_b + gathered + t * (v * (LOGIT_BYTES["forward"] + ENTROPY_BYTES["forward"]) + layer_act)

    t = layout.update_tokens
    kept = h * 2 * shape.layers if layout.gradient_checkpointing else layer_act * shape.layers
    logits = v * (LOGIT_BYTES["update"] + (ENTROPY_BYTES["update"] if layout.entropy_in_update else 0))
    update = param_b + optim_b + grads_b + gathered + t * (kept + 2 * layer_act + logits)

    rollout = param_b + optim_b + layout.vllm_fraction * gpu_bytes
    return {"rollout": int(rollout), "old_log_prob": int(log_prob), "update": int(update)}


def vllm_kv_tokens(shape: ModelShape, layout: Layout, gpu_bytes: int = NOMINAL_GPU_BYTES) -> int:
    """Tokens of KV cache one vLLM replica holds: its GPUs' share minus the bf16 weights, at 2 x layers x
    kv_heads x head_dim bf16 values per token (vLLM also reserves activations and graphs: a little less)."""
    share = layout.vllm_fraction * gpu_bytes * layout.tensor_parallel - shape.params * 2
    per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * 2
    return max(0, int(share // per_token))


def si(n: float, unit: str, prefixes: tuple[str, str, str] = ("k", "M", "G")) -> str:
    """``n`` with three significant digits and a decimal prefix: ``si(98.3e9, "B") == "98.3 GB"``; counts use
    ``prefixes=("K", "M", "B")`` and no unit: ``"8.19B"``, ``"1.3M"``."""
    for factor, prefix in zip((1e9, 1e6, 1e3), reversed(prefixes), strict=True):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{' ' if unit else ''}{prefix}{unit}"
    return f"{n:.3g}{' ' if unit else ''}{unit}"


def params_text(n: int) -> str:
    """A parameter count as people write it: ``8.19B``, ``1.3M``."""
    return si(n, "", ("K", "M", "B"))


def gib(n: float) -> str:
    """``n`` bytes as GiB with one decimal."""
    return f"{n / GIB:.1f} GiB"

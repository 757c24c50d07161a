"""Preflight checks of the node's accelerators: its GPUs against the layout's estimated memory peaks, and
flash-attn importable against this torch (``recipe.lte.tools.preflight`` runs them with the other checks)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from recipe.lte.tools import estimate
from recipe.lte.tools.checklist import FAIL, OK, SKIP, WARN, Check
from recipe.lte.tools.gpus import Gpu

# The attention override that needs no flash-attn ("++" adds the key or replaces a value already there).
SDPA_OVERRIDE = "++actor_rollout_ref.model.override_config.attn_implementation=sdpa"
# A GPU may reach this share of its memory at the estimated peak before the check warns (the CUDA context,
# NCCL buffers and allocator fragmentation take the rest).
GPU_WARN_SHARE = 0.9
# Memory another process already holds on a GPU before the check warns.
GPU_BUSY_BYTES = 2 * 1024**3
PHASE_NAMES = {"rollout": "rollout", "old_log_prob": "old log-prob", "update": "update"}
PHASE_FIXES = {
    "rollout": "lower actor_rollout_ref.rollout.gpu_memory_utilization (vLLM's share of each GPU)",
    "old_log_prob": "lower actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu",
    "update": "lower actor_rollout_ref.actor.ppo_max_token_len_per_gpu (>= one prompt + response), or set "
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=true",
}


# ---------------------------------------------------------------------------------------------------- GPUs


def check_gpus(
    gpus: list[Gpu] | None,
    per_node: int,
    shape: estimate.ModelShape | None,
    layout: estimate.Layout | None,
    *,
    query_error: str = "",
    cpu_platform: bool = False,
) -> Check:
    """This node's GPUs against the layout: ``trainer.n_gpus_per_node`` of them, each holding the estimated peak."""
    name = "gpus"
    if cpu_platform:
        return Check(name, SKIP, "verl's CPU platform (VERL_PLATFORM=cpu): no GPU used")
    need = ""
    if shape and layout:
        peaks = estimate.gpu_memory(shape, layout)
        need = f" of >= {estimate.gib(max(peaks.values()))} each (estimated peak for 80 GB GPUs)"
    if not gpus:
        return Check(
            name,
            FAIL,
            f"no CUDA GPU: {query_error or 'none found'}",
            f"run on a node with {per_node} GPUs{need}; without a GPU: `bash run_lte.sh` (the CPU demo) or "
            "`bash run_lte.sh --smoke` (the smoke run on the demo model)",
        )
    if len(gpus) < per_node:
        return Check(
            name,
            FAIL,
            f"{len(gpus)} GPU(s) visible, the layout needs trainer.n_gpus_per_node={per_node}",
            f"use a node with {per_node} GPUs, or set trainer.n_gpus_per_node={len(gpus)} (it must stay a multiple "
            "of actor_rollout_ref.rollout.tensor_model_parallel_size; fewer GPUs also means more memory per GPU)",
        )
    smallest = min(gpus, key=lambda g: g.total_bytes)
    kind = f"{len(gpus)} x {smallest.name} ({estimate.gib(smallest.total_bytes)})"
    if not (shape and layout):
        return Check(
            name, WARN, f"{kind}; memory not estimated (the model's config.json is not readable)", "see the model check"
        )
    peaks = estimate.gpu_memory(shape, layout, smallest.total_bytes)
    phase, peak = max(peaks.items(), key=lambda kv: kv[1])
    listed = ", ".join(f"{PHASE_NAMES[k]} {estimate.gib(v)}" for k, v in peaks.items())
    kv = estimate.vllm_kv_tokens(shape, layout, smallest.total_bytes)
    message = f"{kind}; estimated peak per GPU: {listed}; vLLM KV cache ~{kv // 1000}k tokens per replica"
    over = [k for k, v in peaks.items() if v > smallest.total_bytes]
    if over:
        return Check(
            name,
            FAIL,
            message + f": {', '.join(PHASE_NAMES[k] for k in over)} do(es) not fit",
            "; ".join(PHASE_FIXES[k] for k in over),
        )
    if kv <= 0:
        return Check(
            name,
            FAIL,
            message + ": vLLM's share does not hold the weights",
            "raise actor_rollout_ref.rollout.gpu_memory_utilization or tensor_model_parallel_size",
        )
    busy = [g for g in gpus if g.used_bytes > GPU_BUSY_BYTES]
    if busy:
        used = ", ".join(f"GPU {g.index} {estimate.gib(g.used_bytes)}" for g in busy)
        return Check(
            name,
            WARN,
            message + f"; already in use by other processes: {used}",
            "free those GPUs (nvidia-smi shows who holds them) or pick others with CUDA_VISIBLE_DEVICES",
        )
    if peak > GPU_WARN_SHARE * smallest.total_bytes:
        return Check(
            name, WARN, message + f": {PHASE_NAMES[phase]} is within 10% of the GPU's memory", PHASE_FIXES[phase]
        )
    return Check(name, OK, message)


# ---------------------------------------------------------------------------------------------- flash-attn


@dataclass(frozen=True)
class FlashAttnProbe:
    """What importing flash-attn (and its CUDA extension) did in this environment."""

    imported: bool
    version: str = ""
    torch: str = ""
    cuda: str | None = None
    error: str = ""


def probe_flash_attn() -> FlashAttnProbe:
    """Import flash-attn for real: a wheel built for another torch or CUDA fails here (undefined symbol)."""
    import torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if importlib.util.find_spec("flash_attn") is None:
        return FlashAttnProbe(False, error="flash_attn is not installed", **versions)
    try:
        import flash_attn
        import flash_attn.flash_attn_interface  # noqa: F401  (loads the compiled flash_attn_2_cuda extension)
    except (ImportError, OSError, RuntimeError) as e:
        return FlashAttnProbe(False, error=f"{type(e).__name__}: {str(e)[:300]}", **versions)
    return FlashAttnProbe(True, version=getattr(flash_attn, "__version__", "?"), **versions)


def check_flash_attn(attn_implementation: str, probe: Callable[[], FlashAttnProbe]) -> Check:
    """flash-attn importable against this torch when the model uses it (verl's default attention)."""
    name = "flash-attn"
    if not attn_implementation.startswith("flash_attention"):
        return Check(name, SKIP, f"attn_implementation={attn_implementation}: flash-attn is not used")
    found = probe()
    if found.imported:
        return Check(name, OK, f"flash-attn {found.version} imports with torch {found.torch} (CUDA {found.cuda})")
    if found.cuda is None:
        here = f"torch {found.torch} has no CUDA"
        install = "install the GPU environment (pip install -r requirements/gpu.txt: a CUDA torch and flash-attn)"
    else:
        here = f"torch {found.torch}, CUDA {found.cuda}"
        install = f"install a flash-attn wheel built for torch {found.torch} and CUDA {found.cuda} (or verl's image)"
    return Check(
        name,
        FAIL,
        f"{attn_implementation} needs flash-attn, which does not import here ({found.error}; {here}): "
        "the actor would fail to load",
        f"{install}, or run with {SDPA_OVERRIDE} (PyTorch attention: same results, slower on long sequences)",
    )

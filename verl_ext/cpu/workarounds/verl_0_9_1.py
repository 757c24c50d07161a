"""Workarounds for verl 0.9.1 on a machine without an accelerator (see the package docstring)."""

from __future__ import annotations

import functools

from verl_ext.cpu.workarounds import Workaround

UPSTREAM, VERSION = "verl", "0.9.1"


def cpu_process_group_backend(backend: str | None) -> str:
    """The torch.distributed backend string for CPU: verl's default would name the cpu device twice.

    verl builds ``f"cpu:gloo,{device}:{backend}"``, which is ``"cpu:gloo,cpu:gloo"`` here and torch rejects it
    ("Duplicate device type cpu"). Any explicit backend is kept as given.
    """
    return backend if backend else "cpu:gloo"


def patch_process_group_backend() -> None:
    """Replace ``verl.utils.distributed.initialize_global_process_group_ray`` by one with a CPU backend string.

    Runs inside ``import verl`` (``VERL_USE_EXTERNAL_MODULES``), before ``verl.workers.engine_workers`` binds the
    name with ``from verl.utils.distributed import ...``, so the workers get the patched function.
    """
    import verl.utils.distributed as dist_utils

    original = dist_utils.initialize_global_process_group_ray
    if getattr(original, "_lte_cpu_patched", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=cpu_process_group_backend(backend))

    initialize_global_process_group_ray._lte_cpu_patched = True
    dist_utils.initialize_global_process_group_ray = initialize_global_process_group_ray


WORKAROUNDS = (
    Workaround(
        UPSTREAM,
        VERSION,
        target="verl.plugin.platform (platform selection)",
        symptom='no CPU platform: verl falls back to "nvidia" and fails with "Distributed package doesn\'t have NCCL"',
        fix="register verl_ext.cpu.platform.PlatformCPU through verl's own plugin mechanism and select it",
        delete_when="verl ships a CPU platform",
        env={"VERL_PLATFORM": "cpu"},  # VERL_USE_EXTERNAL_MODULES is merged by verl_ext.cpu.env.cpu_env
        overrides=("trainer.device=cpu",),
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="verl/utils/distributed.py: initialize_global_process_group_ray",
        symptom='torch rejects the backend "cpu:gloo,cpu:gloo" ("Duplicate device type cpu")',
        fix='pass the backend "cpu:gloo" explicitly',
        delete_when="verl de-duplicates the device types of its backend string",
        patch=patch_process_group_backend,
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="verl's engine registry (FSDP engines register for cuda/npu only)",
        symptom="\"No engine registered for device='cpu'\"",
        fix="VERL_ENGINE_DEVICE=cuda selects the FSDP engine, which then runs on CPU tensors",
        delete_when="verl registers its FSDP engine for cpu",
        env={"VERL_ENGINE_DEVICE": "cuda"},
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="actor_rollout_ref.{actor,ref}.strategy",
        symptom="FSDP1 (verl's default strategy) needs an accelerator",
        fix="train the actor and the reference with FSDP2",
        delete_when="never needed on GPU; FSDP1 works without an accelerator",
        overrides=("actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.ref.strategy=fsdp2"),
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="actor_rollout_ref.model.override_config.attn_implementation",
        symptom="verl turns FlashAttention on, and flash-attn cannot be built without nvcc",
        fix="PyTorch sdpa attention",
        delete_when="never needed on GPU with flash-attn installed",
        overrides=("+actor_rollout_ref.model.override_config.attn_implementation=sdpa",),
    ),
    Workaround(
        UPSTREAM,
        VERSION,
        target="actor_rollout_ref.{actor,ref}.fsdp_config.use_torch_compile",
        symptom="the FSDP engine torch.compiles its entropy function: on CPU, inductor builds C++ with the system "
        "compiler at the first step (tens of seconds on 2 cores, half a GB for the compiler, and a compiler must "
        "exist)",
        fix="no torch.compile on CPU",
        delete_when="never needed on GPU",
        overrides=(
            "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
            "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        ),
    ),
)

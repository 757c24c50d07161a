"""The arms of the paper's comparison, by name: what each one changes on top of the shared run.

An arm is a name (``--arms``), a table label, the ``lte.mode`` it trains with, extra hydra overrides, and the GPU
preset suffix that trains it at the paper's scale (``qwen3-4b-<suffix>``). A new arm is one more entry in
``ARMS``: e.g. ``Arm("luffy", "LUFFY", mode="luffy", preset_suffix="luffy")`` once ``lte.mode=luffy`` exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# LTE-dagger's entropy bonus: the value of recipe/lte/config/preset/qwen3-*-lte-dagger.yaml (ctx).
ENTROPY_BONUS = 0.001


@dataclass(frozen=True)
class Arm:
    """One arm: trained from the same base model, data order and step budget as every other arm of a seed."""

    name: str  # --arms name, folder name
    label: str  # row label of the tables and figures
    mode: str  # lte.mode (the CPU demo launcher's --mode)
    overrides: tuple[str, ...] = ()  # hydra overrides on top of the shared settings
    preset_suffix: str | None = None  # GPU: the preset is f"{family}-{preset_suffix}"; None: no GPU preset
    description: str = ""


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("grpo", "GRPO", "grpo", preset_suffix="grpo", description="plain GRPO, G rollouts per prompt"),
        Arm(
            "grpo_extra",
            "GRPO+Extra",
            "grpo_extra",
            preset_suffix="grpo-extra",
            description="none-pass groups get G unhinted extra rollouts; correct ones replace failures (on-policy)",
        ),
        Arm(
            "lte",
            "LTE",
            "lte",
            preset_suffix="lte",
            description="none-pass groups get G hinted extra rollouts; correct ones replace failures (off-policy)",
        ),
        Arm(
            "lte_dagger",
            "LTE†",
            "lte",
            overrides=(f"actor_rollout_ref.actor.entropy_coeff={ENTROPY_BONUS}",),
            preset_suffix="lte-dagger",
            description=f"LTE plus an entropy bonus of {ENTROPY_BONUS}",
        ),
    )
}
# The paper's main comparison. LTE† is optional (on CPU it adds a fourth training run per seed).
DEFAULT_ARMS = ("grpo", "grpo_extra", "lte")
# The base model is evaluated as row 0 of every table under this name.
BASE = "base"


def parse_arms(names: str | Iterable[str]) -> list[Arm]:
    """Arms from a comma-separated string or a list of names, in the given order, each once."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"--arms is empty; choose from {', '.join(ARMS)}")
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)} (recipe/lte/reproduce/arms.py)")
    if len(set(names)) != len(names):
        raise ValueError(f"--arms names an arm twice: {names}")
    return [ARMS[n] for n in names]


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"0,1,2"`` or a count ``"3"`` (= 0, 1, 2)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give a count (3) or a comma-separated list (0,1,2)") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise ValueError(f"--seeds {text!r}: a count must be >= 1")
        return list(range(values[0]))
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"--seeds {text!r}: seeds must be distinct non-negative integers")
    return values

"""The `lte.loss` config block and the start-up checks of a run that trains with LTE's mixed-policy loss.

Every field is an open choice of the paper with the paper's reading as default; `check_loss_config` refuses, before
anything starts, settings under which hinted rows would silently be trained wrong. No verl or torch import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

LOSS_MODE = "lte_mixed"  # actor_rollout_ref.actor.policy_loss.loss_mode
OFF_POLICY_MODES = ("behavior_ratio", "luffy_prob", "on_policy")
AGGREGATIONS = ("global", "separate")
NORMALISING_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass
class LTELossConfig:
    """The `lte.loss` config block. Every field is an open choice of the paper, defaulting to the paper's reading."""

    # gamma of f(x) = x / (x + gamma): 0.1 in LUFFY (arXiv 2504.14945) and the same authors' ICPO code
    gamma: float = 0.1
    # denominator of the off-policy ratio: the paper's pi_theta(o|q) / pi_behaviour(o|hint(q)) ("behavior_ratio"),
    # LUFFY/ICPO's shortcut with denominator 1 ("luffy_prob"), or the ablation "on_policy" (plain PPO for hinted rows)
    off_policy_mode: str = "behavior_ratio"
    # "global": one verl token-mean over all tokens (LUFFY's 1/Z); "separate": the paper's 1/Z' (hinted tokens) and
    # 1/Z (on-policy tokens) normalisers
    aggregation: str = "global"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the `lte.loss.*` key and the fix."""
        g = self.gamma
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g <= 0:
            raise ValueError(
                f"lte.loss.gamma must be a finite number > 0 (got {g!r}): it is gamma of f(x) = x / (x + gamma); "
                "set lte.loss.gamma=0.1 (the value of LUFFY/ICPO)"
            )
        if self.off_policy_mode not in OFF_POLICY_MODES:
            raise ValueError(
                f"lte.loss.off_policy_mode={self.off_policy_mode!r} is unknown: use one of {list(OFF_POLICY_MODES)} "
                "(behavior_ratio = the paper's ratio)"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"lte.loss.aggregation={self.aggregation!r} is unknown: use one of {list(AGGREGATIONS)} "
                "(global = verl's token-mean over the whole batch)"
            )

    @classmethod
    def from_config(cls, cfg: LTELossConfig | Mapping | None) -> LTELossConfig:
        """Build from the `lte.loss` block (a dict or an omegaconf DictConfig); unknown keys are an error."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            cfg.validate()
            return cfg
        if not isinstance(cfg, Mapping):
            try:  # omegaconf DictConfig is not a Mapping subclass in every version
                from omegaconf import DictConfig, OmegaConf

                if isinstance(cfg, DictConfig):
                    cfg = OmegaConf.to_container(cfg, resolve=True)
            except ImportError:  # pragma: no cover - omegaconf ships with verl
                pass
        if not isinstance(cfg, Mapping):
            raise ValueError(f"lte.loss must be a mapping of {[f.name for f in fields(cls)]}, got {type(cfg).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {['lte.loss.' + k for k in unknown]}: the keys are {sorted(known)}")
        return cls(**dict(cfg))


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """Read `a.b.c` from nested dicts / DictConfigs / dataclasses; `default` when a level is missing."""
    node = cfg
    for key in dotted.split("."):
        if node is None:
            return default
        if hasattr(node, "get"):  # dict, DictConfig, verl's BaseConfig
            node = node.get(key, None)
        else:
            node = getattr(node, key, None)
    return default if node is None else node


def check_loss_config(
    lte_loss_cfg: LTELossConfig | Mapping | None, actor_rollout_ref_cfg: Any, algorithm_cfg: Any = None
) -> LTELossConfig:
    """Start-up check for a run that installs the LTE loss; returns the validated `LTELossConfig`.

    Refuses: bad `lte.loss` values; `policy_loss.loss_mode` other than `lte_mixed`; `behavior_ratio` without
    rollout log-probs; `aggregation=separate` with `loss_agg_mode=token-sum` (nothing to normalise). With
    `algorithm_cfg`, also verl's rollout correction modes that would defeat the loss: rejection sampling (rejects
    hinted rows) and bypass mode (replaces the loss mode).
    """
    cfg = LTELossConfig.from_config(lte_loss_cfg)
    loss_mode = _get(actor_rollout_ref_cfg, "actor.policy_loss.loss_mode", "vanilla")
    if loss_mode != LOSS_MODE:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode!r}, but the LTE loss is installed: set "
            f"actor_rollout_ref.actor.policy_loss.loss_mode={LOSS_MODE} (otherwise hinted rows train as on-policy)"
        )
    if cfg.off_policy_mode == "behavior_ratio" and not _get(actor_rollout_ref_cfg, "rollout.calculate_log_probs"):
        raise ValueError(
            "lte.loss.off_policy_mode=behavior_ratio needs the behaviour (hinted-prompt) log-probs: set "
            "actor_rollout_ref.rollout.calculate_log_probs=true, or choose lte.loss.off_policy_mode=luffy_prob"
        )
    agg_mode = _get(actor_rollout_ref_cfg, "actor.loss_agg_mode", "token-mean")
    if cfg.aggregation == "separate" and agg_mode not in NORMALISING_AGG_MODES:
        raise ValueError(
            f"lte.loss.aggregation=separate needs a normalising actor_rollout_ref.actor.loss_agg_mode "
            f"({list(NORMALISING_AGG_MODES)}), got {agg_mode!r}: change one of the two"
        )
    clip_c = _get(actor_rollout_ref_cfg, "actor.clip_ratio_c", 3.0)
    if not clip_c > 1.0:
        raise ValueError(f"actor_rollout_ref.actor.clip_ratio_c must be > 1 (dual-clip PPO), got {clip_c}")
    if algorithm_cfg is not None:
        if _get(algorithm_cfg, "rollout_correction.bypass_mode", False):
            raise ValueError(
                "algorithm.rollout_correction.bypass_mode=true replaces the policy loss mode, so hinted rows would "
                "not get the LTE loss: set algorithm.rollout_correction.bypass_mode=false"
            )
        if _get(algorithm_cfg, "rollout_correction.rollout_rs") is not None:
            raise ValueError(
                "algorithm.rollout_correction.rollout_rs rejects tokens whose rollout and training log-probs differ, "
                "which hinted rows always do: set algorithm.rollout_correction.rollout_rs=null"
            )
    return cfg

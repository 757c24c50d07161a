"""The `lte.loss` settings and the loss's start-up checks (verl_ext/loss/config.py): each bad value names its key
and the fix."""

from __future__ import annotations

import pytest

from verl_ext.loss.config import LOSS_MODE, LTELossConfig, check_loss_config


@pytest.mark.parametrize("gamma", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_gamma_names_the_key(gamma):
    with pytest.raises(ValueError, match=r"lte\.loss\.gamma.*set lte\.loss\.gamma=0\.1"):
        LTELossConfig(gamma=gamma)


def test_bad_mode_and_aggregation_name_the_key():
    with pytest.raises(ValueError, match=r"lte\.loss\.off_policy_mode='ratio' is unknown.*behavior_ratio"):
        LTELossConfig(off_policy_mode="ratio")
    with pytest.raises(ValueError, match=r"lte\.loss\.aggregation='mean' is unknown"):
        LTELossConfig(aggregation="mean")
    with pytest.raises(ValueError, match=r"lte\.loss\.gama"):
        LTELossConfig.from_config({"gama": 0.1})


def test_defaults_are_the_papers():
    cfg = LTELossConfig.from_config(None)
    assert (cfg.gamma, cfg.off_policy_mode, cfg.aggregation) == (0.1, "behavior_ratio", "global")


def _arr_cfg(loss_mode=LOSS_MODE, calculate_log_probs=True, loss_agg_mode="token-mean"):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "actor": {"policy_loss": {"loss_mode": loss_mode}, "loss_agg_mode": loss_agg_mode, "clip_ratio_c": 3.0},
            "rollout": {"calculate_log_probs": calculate_log_probs},
        }
    )


def test_check_loss_config_accepts_a_good_config():
    from omegaconf import OmegaConf

    lte = OmegaConf.create({"gamma": 0.2, "off_policy_mode": "behavior_ratio", "aggregation": "separate"})
    algo = OmegaConf.create({"rollout_correction": {"bypass_mode": False, "rollout_rs": None}})
    assert check_loss_config(lte, _arr_cfg(), algo) == LTELossConfig(0.2, "behavior_ratio", "separate")


def test_check_loss_config_refusals():
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match=r"calculate_log_probs=true.*luffy_prob"):
        check_loss_config({}, _arr_cfg(calculate_log_probs=False))
    assert check_loss_config({"off_policy_mode": "luffy_prob"}, _arr_cfg(calculate_log_probs=False)).gamma == 0.1
    with pytest.raises(ValueError, match=r"loss_mode=lte_mixed"):
        check_loss_config({}, _arr_cfg(loss_mode="vanilla"))
    with pytest.raises(ValueError, match=r"aggregation=separate.*token-sum"):
        check_loss_config({"aggregation": "separate"}, _arr_cfg(loss_agg_mode="token-sum"))
    with pytest.raises(ValueError, match=r"lte\.loss\.gamma"):
        check_loss_config({"gamma": 0.0}, _arr_cfg())
    with pytest.raises(ValueError, match=r"bypass_mode=false"):
        check_loss_config({}, _arr_cfg(), OmegaConf.create({"rollout_correction": {"bypass_mode": True}}))
    with pytest.raises(ValueError, match=r"rollout_rs=null"):
        check_loss_config({}, _arr_cfg(), {"rollout_correction": {"rollout_rs": "token_k1"}})

"""Reward for the CPU trainer smoke run (stand-in until verl_ext/reward_math.py is wired in).

1.0 when the last ``\\boxed{...}`` equals the ground truth. Otherwise 0.1 when the ground-truth digit appears
anywhere in the response, else 0.0: a random-weight model never boxes the right answer, and a reward that is
constant within every group gives all-zero GRPO advantages, so the smoke run could not show a real update.
Loaded by file path inside verl's reward workers (``reward.custom_reward_function.path``).
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    boxed = _BOXED.findall(solution_str)
    if boxed and boxed[-1].strip() == str(ground_truth).strip():
        score = 1.0
    elif str(ground_truth) in solution_str:
        score = 0.1
    else:
        score = 0.0
    return {"score": score, "acc": float(score == 1.0)}

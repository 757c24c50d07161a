"""Advantage estimators registered in verl's registry (``algorithm.adv_estimator``).

- ``grpo_on_policy_stats``: GRPO advantages whose group mean and std come from the on-policy rows only, applied to
  every row of the group, off-policy ones included (LUFFY's ``grpo_split``).
"""

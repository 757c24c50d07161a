"""Extensions to verl 0.9.1 that the LTE recipe uses, one subpackage each:

- ``verl_ext.loss``: the mixed-policy loss (on-policy PPO-clip + regularised importance sampling off-policy);
- ``verl_ext.advantage``: GRPO advantages with group statistics over the on-policy rows only (LUFFY's variant);
- ``verl_ext.reward``: the math reward (math-verify, bounded in time, reports the model's final answer);
- ``verl_ext.cpu``: a CPU platform for verl and the upstream workarounds that let verl's real trainer run without
  an accelerator (tests, CI, the CPU demo).

Nothing here imports ``recipe``: the recipe builds on these, never the other way round.
"""

"""LTE's mixed-policy loss for verl (step 7 of the method), in three parts read in this order:

- ``mixed_policy``: the tensor math -- per-token loss, its gradient, its statistics (torch only, no verl);
- ``config``: the ``lte.loss`` block and the start-up checks (no verl, no torch);
- ``ppo_loss``: the verl glue -- verl's ``ppo_loss`` with the per-row off-policy flag, and the registered
  ``lte_mixed`` policy loss.
"""

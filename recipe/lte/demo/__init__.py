"""A CPU demo for LTE: a synthetic task and a tiny warmed-up model on which every LTE branch happens.

``build_demo(out_root)`` builds (or reuses) the model, tokenizer and RL parquet; ``python -m recipe.lte.demo``
does the same from the command line and prints what the model does under LTE's rules.
"""

from recipe.lte.demo.warmup import build_demo

__all__ = ["build_demo"]

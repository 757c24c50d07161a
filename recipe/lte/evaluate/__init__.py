"""Evaluation on the six math benchmarks: generation (vLLM), scoring, Pass@1 / Pass@k, tables and plots.

``python -m recipe.lte.evaluate --help`` for the commands.
"""

from .metrics import k_values, mean_pass_at_k, pass_at_k

__all__ = ["k_values", "mean_pass_at_k", "pass_at_k"]

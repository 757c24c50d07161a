"""The math reward: binary correctness through math-verify, plus the answer the model wrote (LTE's hints list it).

- ``math_reward``: the verl custom reward function (``compute_score``), loaded by verl by file path;
- ``math_verify_worker``: the math-verify calls, run in worker processes;
- ``bounded_pool``: the worker processes, each call bounded in wall-clock time (sympy can hang in C code).
"""

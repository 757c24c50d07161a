"""Builders of verl RL parquet files for LTE training sets and the six math benchmarks (`python -m data_prep`).

- `templates`: the one prompt template (`PROMPT_TEMPLATES`, `DEFAULT_TEMPLATE`, `build_prompt`).
- `sources`: hub ids and column layouts: Openr1-Math-46k-8192 and DAPO-Math-17k (verl rows: chat `prompt`,
  `reward_model.ground_truth`); MATH-500 (problem/answer), Minerva (question/answer), OlympiadBench
  (question/final_answer list), AMC'23 (question/answer), AIME'24 (problem/answer), AIME'25 (question/answer).
- `build`: read (hub or local json/jsonl/parquet), validate, normalise, write parquet + a report of every drop.
"""

from data_prep.templates import DEFAULT_TEMPLATE, PROMPT_TEMPLATES, build_prompt, render_problem

__all__ = ["DEFAULT_TEMPLATE", "PROMPT_TEMPLATES", "build_prompt", "render_problem"]

"""The public sources the builders read, with their Hugging Face ids and column layouts.

Each source says where its problem and its answer live; a local json/jsonl/parquet file or folder in the same
column layout can stand in for the hub (`--local name=PATH`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    name: str  # CLI name and output file stem
    hub_id: str
    split: str
    problem_column: str  # a string column, or a verl chat list (the last user turn is the problem)
    answer_column: str  # dotted path into struct columns, e.g. "reward_model.ground_truth"
    data_source: str  # the `data_source` written (the names the shared benchmark parquet uses)
    configs: tuple[str, ...] = (None,)  # type: ignore[assignment]  # hub configs to concatenate
    expected_rows: int | None = None  # a count differing from this is reported (not an error)
    dedupe: bool = True
    note: str = ""
    # A column holding a reference solution (kept as extra_info.reference, read by lte.mode=luffy).
    reference_column: str | None = None
    template: str | None = None  # the source's prompt template when --template is not given (None: the default)


TRAIN_SOURCES = {
    s.name: s
    for s in [
        # LUFFY's training set (OpenR1-Math-220k filtered to ~46k): most likely the LTE paper's set. verl rows:
        # prompt = [system, user(problem)], target = [assistant(DeepSeek-R1 trace)], ability,
        # reward_model{ground_truth, style}, extra_info. The trace is kept as the row's reference solution.
        Source(
            "openr1",
            "Elliott/Openr1-Math-46k-8192",
            "train",
            "prompt",
            "reward_model.ground_truth",
            "openr1",
            reference_column="target",
        ),
        # The same rows as LUFFY trains on them (the LUFFY arm's presets): LUFFY's system prompt, the bare problem.
        Source(
            "openr1_luffy",
            "Elliott/Openr1-Math-46k-8192",
            "train",
            "prompt",
            "reward_model.ground_truth",
            "openr1",
            reference_column="target",
            template="luffy",
            note="openr1 with --template luffy (LUFFY's system prompt), for lte.mode=luffy",
        ),
        # DAPO's set: verl rows, prompt = [user(DAPO instruction + problem + reminder)]; each prompt ~100 times.
        Source(
            "dapo",
            "BytedTsinghua-SIA/DAPO-Math-17k",
            "train",
            "prompt",
            "reward_model.ground_truth",
            "math_dapo",
            note="the raw file repeats each prompt about 100 times: de-duplicated",
        ),
    ]
}

BENCHMARK_SOURCES = {
    s.name: s
    for s in [
        Source("math500", "HuggingFaceH4/MATH-500", "test", "problem", "answer", "math", expected_rows=500),
        Source("minerva", "math-ai/minervamath", "test", "question", "answer", "minerva", expected_rows=272),
        Source(
            "olympiadbench",
            "math-ai/olympiadbench",
            "test",
            "question",
            "final_answer",
            "olympiad_bench",
            expected_rows=675,
            note="final_answer is a list: joined with ', '",
        ),
        Source(
            "amc23",
            "math-ai/amc23",
            "test",
            "question",
            "answer",
            "amc",
            expected_rows=40,
            note="AMC 2023, 40 problems (the shared LUFFY file's 83 AMC problems also hold 2022)",
        ),
        Source("aime24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", "aime", expected_rows=30),
        Source(
            "aime25",
            "opencompass/AIME2025",
            "test",
            "question",
            "answer",
            "aime25",
            configs=("AIME2025-I", "AIME2025-II"),
            expected_rows=30,
        ),
    ]
}

SOURCES = {**TRAIN_SOURCES, **BENCHMARK_SOURCES}

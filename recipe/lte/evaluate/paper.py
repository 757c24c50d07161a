"""The paper's table layout and its published numbers (reference rows for ``compare``).

Source: "Do Not Step Into the Same River Twice: Learning to Reason from Trial and Error" (Tang et al.,
arXiv 2510.26109, ACL 2026), as summarised in docs/method.md ("Evaluation").
Only the six-benchmark AVERAGES are available to us; per-benchmark cells of the reference rows stay empty.
The paper reports Pass@1 as mean accuracy over n = 16 or 32 samples and Pass@k with the unbiased estimator;
the exact k of its Pass@k column is not stated in our source.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "LTE paper (arXiv 2510.26109)"


@dataclass(frozen=True)
class Benchmark:
    """A benchmark column: the verl ``data_source`` it is identified by, its header, the paper's problem count."""

    data_source: str
    column: str
    paper_size: int


# The paper's column order. Sizes: MATH-500 500, Minerva Math 272, OlympiadBench 675, AMC'23 40,
# AIME'24 30, AIME'25 30 (the public sources named in docs/method.md "Evaluation").
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("math", "MATH-500", 500),
    Benchmark("minerva", "Minerva", 272),
    Benchmark("olympiad_bench", "Olympiad", 675),
    Benchmark("amc", "AMC23", 40),
    Benchmark("aime", "AIME24", 30),
    Benchmark("aime25", "AIME25", 30),
)
BENCHMARK_BY_SOURCE: dict[str, Benchmark] = {b.data_source: b for b in BENCHMARKS}
AVG_COLUMN = "Avg"


@dataclass(frozen=True)
class PaperAverage:
    """One reported six-benchmark average (percent); None where the paper reports no number."""

    model: str
    method: str
    pass_at_1: float | None
    pass_at_k: float | None

    @property
    def label(self) -> str:
        return f"paper: {self.model} {self.method}"


# docs/method.md, "Reported averages over the six benchmarks (Pass@1 / Pass@k, %)".
PAPER_AVERAGES: tuple[PaperAverage, ...] = (
    PaperAverage("Qwen3-4B-Base", "base model", 22.59, 48.31),
    PaperAverage("Qwen3-4B-Base", "GRPO", 33.87, 47.52),
    PaperAverage("Qwen3-4B-Base", "GRPO+Extra", 35.17, 47.60),
    PaperAverage("Qwen3-4B-Base", "LTE", 37.24, 50.99),
    PaperAverage("Qwen3-4B-Base", "GRPO (entropy bonus)", 38.29, 54.29),
    PaperAverage("Qwen3-4B-Base", "GRPO+Extra (entropy bonus)", 36.78, 51.97),
    PaperAverage("Qwen3-4B-Base", "LTE (entropy bonus)", 40.44, 57.46),
    PaperAverage("Qwen3-8B-Base", "GRPO", 43.99, 56.82),
    PaperAverage("Qwen3-8B-Base", "GRPO+Extra", 41.72, None),
    PaperAverage("Qwen3-8B-Base", "LTE", 49.01, 66.78),
    PaperAverage("Qwen3-8B-Base", "LTE†", 49.56, 67.58),
    PaperAverage("Qwen3-8B-Base", "LUFFY", 47.15, 61.55),
)

"""The demo task: "Compute thirty-seven mod ten." (N = 10..99 in words) with a designed answer distribution.

The CPU demo needs a model that a few steps of real LTE training can exercise on every branch: groups that
all pass, some pass and none pass; none-pass groups whose responses ran out of length (the ``concise`` and
``concise_hint`` hints) or gave wrong answers (the ``hint`` hint); hinted extra rollouts that succeed more often
than unhinted ones. Rather than hoping a tiny model learns arithmetic badly in the right way, we *design* the
answer distribution per problem (``target_distribution``) and distil it into the model (``warmup.py``):

- every problem gets a tier: ``easy`` (mostly right), ``hard`` (mostly one fixed wrong answer, the "decoy")
  or ``long`` (half the time a filler response far longer than the demo's response budget, so it is
  truncated before its ``\\boxed{}``);
- a hinted prompt (rendered exactly as the LTE stage does, ``recipe.lte.core.render_hinted_messages``) shifts
  the distribution the way LTE hopes a real model does: answers listed as wrong are not given again, and a
  "concise" hint removes the filler.

This module holds the problems, the prompts, the target distribution, scoring and the parquet writer.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from data_prep.templates import DEFAULT_TEMPLATE, build_prompt
from recipe.lte.core import CONCISE, CONCISE_HINT, HINT, HintConfig, HintPlan, render_hinted_messages

DATA_SOURCE = "demo_mod10"
ABILITY = "math"
NUMBERS = range(10, 100)  # "Compute N mod 10." for N = 10..99: 90 problems
DIGITS = tuple(str(d) for d in range(10))  # every answer is one digit

# The project's one prompt template (data_prep.templates), as for the real training sets.
PROMPT_TEMPLATE = DEFAULT_TEMPLATE

# A response that runs out of length: FILLER_REPEATS x FILLER (about 4 tokens each), then the answer. The demo's
# response budget must lie between a short answer (about 6 tokens) and this (about 40 tokens): see
# RECOMMENDED_MAX_RESPONSE_LENGTH.
FILLER = "Let me think. "
FILLER_REPEATS = 10
RECOMMENDED_MAX_RESPONSE_LENGTH = 24
# The longest hinted prompt at G=4 (four listed answers) is 114 tokens with the demo tokenizer: the demo's
# data.max_prompt_length must hold it, or the LTE stage skips the hint ("skipped_too_long").
RECOMMENDED_MAX_PROMPT_LENGTH = 160


@dataclass(frozen=True)
class Tier:
    """A problem's designed behaviour without a hint.

    p_correct / p_decoy: the answer distribution of a finished response (the rest is spread evenly over the
    other 8 digits); p_long: how often the response is the over-long filler instead.
    """

    name: str
    p_correct: float
    p_decoy: float
    p_long: float


# Chosen so that at G=4 about a quarter to a third of the groups fail entirely (docs/demo.md has the measurements).
TIERS = {
    "easy": Tier("easy", p_correct=0.60, p_decoy=0.25, p_long=0.0),
    "hard": Tier("hard", p_correct=0.10, p_decoy=0.70, p_long=0.0),
    "long": Tier("long", p_correct=0.30, p_decoy=0.40, p_long=0.5),
}
# A problem's tier is its tens digit's. With the number in words, answer and tier are read off one or two word
# tokens; tasks with digits stayed at chance (docs/demo.md, "Why these settings").
TIER_BY_TENS = {1: "easy", 2: "hard", 3: "long", 4: "easy", 5: "hard", 6: "easy", 7: "long", 8: "hard", 9: "easy"}


_UNITS = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """37 -> "thirty-seven" (10 <= n <= 99)."""
    if not 10 <= n <= 99:
        raise ValueError(f"number_words covers 10..99, got {n}")
    if n < 20:
        return _TEENS[n - 10]
    return _TENS[n // 10] + (f"-{_UNITS[n % 10]}" if n % 10 else "")


@dataclass(frozen=True)
class Problem:
    n: int

    @property
    def text(self) -> str:
        # In words, and "ten" not "10": every number word is one token the model reads the answer off, and the
        # only digits in a prompt are the wrong answers a hint lists.
        return f"Compute {number_words(self.n)} mod ten."

    @property
    def answer(self) -> str:
        return str(self.n % 10)

    @property
    def decoy(self) -> str:
        """The fixed wrong answer a weak model prefers (off by one)."""
        return str((self.n + 1) % 10)


def all_problems() -> list[Problem]:
    return [Problem(n) for n in NUMBERS]


def tier_of(problem: Problem) -> Tier:
    return TIERS[TIER_BY_TENS[problem.n // 10]]


def build_messages(problem: Problem) -> list[dict]:
    """The chat prompt of one problem (what the parquet's ``prompt`` column holds): ``data_prep.build_prompt``."""
    return build_prompt(problem.text, PROMPT_TEMPLATE)


# ---------------------------------------------------------------------------------------------------------
# Responses and the designed distribution
# ---------------------------------------------------------------------------------------------------------


def short_response(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


def long_response(answer: str) -> str:
    return FILLER * FILLER_REPEATS + short_response(answer)


@dataclass(frozen=True)
class Target:
    """What the model should do for one prompt: P(long filler response) and P(answer) over the 10 digits."""

    p_long: float
    answer_probs: dict[str, float]


def target_distribution(problem: Problem, plan: HintPlan | None = None) -> Target:
    """The designed behaviour for ``problem``, unhinted (``plan=None``) or under a hint ``plan``.

    A hint removes the listed wrong answers (the rest renormalised); a concise hint also removes the filler.
    The correct answer is never listed (LTE lists wrong answers only), so it always keeps mass.
    """
    tier = tier_of(problem)
    rest = (1.0 - tier.p_correct - tier.p_decoy) / 8
    probs = {d: rest for d in DIGITS}
    probs[problem.answer] = tier.p_correct
    probs[problem.decoy] = tier.p_decoy
    p_long = tier.p_long
    if plan is not None:
        if problem.answer in plan.wrong_answers:
            raise ValueError(f"hint plan {plan} lists the correct answer of {problem}")
        for wrong in plan.wrong_answers:
            probs[wrong] = 0.0
        total = sum(probs.values())
        probs = {d: p / total for d, p in probs.items()}
        if plan.kind in (CONCISE, CONCISE_HINT):
            p_long = 0.0
    return Target(p_long=p_long, answer_probs=probs)


def sample_response(target: Target, rng: random.Random) -> str:
    answer = rng.choices(DIGITS, weights=[target.answer_probs[d] for d in DIGITS])[0]
    return long_response(answer) if rng.random() < target.p_long else short_response(answer)


def sample_hint_plan(problem: Problem, rng: random.Random, *, group_size: int = 4) -> HintPlan:
    """A hint plan like the LTE stage makes for this problem, for warm-up examples.

    Kind: ``hint`` 60%, ``concise_hint`` 25%, ``concise`` 15% (every problem sees every kind, so the model learns
    what each hint means, not which problems get it). Listed answers: 60% of the time the distinct wrong
    answers of a failed group drawn from the unhinted distribution (first-seen order, as LTE lists them), else
    1-4 random wrong digits.
    """
    kind = rng.choices((HINT, CONCISE_HINT, CONCISE), weights=(0.60, 0.25, 0.15))[0]
    if kind == CONCISE:
        return HintPlan(CONCISE)
    wrong = [d for d in DIGITS if d != problem.answer]
    if rng.random() < 0.6:
        base = target_distribution(problem).answer_probs
        n = group_size if kind == HINT else rng.randint(1, group_size - 1)  # concise_hint: some were truncated
        drawn = rng.choices(wrong, weights=[base[d] for d in wrong], k=n)
        listed = list(dict.fromkeys(drawn))
    else:
        listed = rng.sample(wrong, rng.randint(1, 4))
    return HintPlan(kind, tuple(listed))


def hinted_messages(problem: Problem, plan: HintPlan, hint: HintConfig | None = None) -> list[dict]:
    """The hinted chat exactly as the LTE stage renders it."""
    return render_hinted_messages(build_messages(problem), plan, hint or HintConfig())


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


def get_scorer() -> tuple[str, Callable[..., dict]]:
    """(name, compute_score): the project's math reward (``verl_ext.reward.math_reward``).

    Called with ``allow_unboxed=False``: a demo response either ends in ``\\boxed{digit}`` or is filler with no
    digit at all, so math-verify's unboxed extraction (run in a worker process) could only ever return nothing.
    """
    from verl_ext.reward.math_reward import compute_score

    return "verl_ext.reward.math_reward.compute_score", functools.partial(compute_score, allow_unboxed=False)


# ---------------------------------------------------------------------------------------------------------
# verl RL parquet
# ---------------------------------------------------------------------------------------------------------


def is_heldout(problem: Problem) -> bool:
    """Held out of RL training: (tens + units) % 5 == 0, 18 problems -- two of every tens digit (so every tier, in
    the tiers' proportions) and every answer digit once or twice.

    "Held out" means never trained on by RL (not in ``train.parquet``): the warm-up distilled the designed
    distribution on ALL 90 problems, so the model has seen these too. What RL on the other 72 does to them is
    the demo's measure of transfer (``python -m recipe.lte.reproduce``).
    """
    return (problem.n // 10 + problem.n % 10) % 5 == 0


def train_problems() -> list[Problem]:
    """The 72 problems RL trains on (``train.parquet``)."""
    return [p for p in all_problems() if not is_heldout(p)]


def heldout_problems() -> list[Problem]:
    """The 18 problems RL never trains on (``heldout.parquet``)."""
    return [p for p in all_problems() if is_heldout(p)]


def val_problems() -> list[Problem]:
    """Every third training problem: verl's validation during training measures how training moved the model on
    problems it trains on (the held-out ones are for ``recipe.lte.reproduce``'s evaluation)."""
    return train_problems()[::3]


SPLITS = {"train": train_problems, "val": val_problems, "heldout": heldout_problems}


def rl_rows(problems: Sequence[Problem], split: str) -> list[dict]:
    """verl RL rows: data_source, prompt (chat list), ability, reward_model{style, ground_truth}, extra_info.

    ``extra_info.reference`` is a correct response in the demo's own format, the external solution that
    ``--mode luffy`` trains on (as ``python -m data_prep openr1`` keeps Openr1-Math-46k-8192's R1 traces)."""
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": build_messages(p),
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {
                "split": split,
                "index": i,
                "tier": tier_of(p).name,
                "n": p.n,
                "reference": short_response(p.answer),
            },
        }
        for i, p in enumerate(problems)
    ]


def write_parquet(out_dir: str | Path) -> dict[str, str]:
    """Write ``train.parquet`` (72 problems), ``val.parquet`` (every third of them) and ``heldout.parquet`` (the
    other 18); return ``{split: path}``."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, problems in SPLITS.items():
        path = out / f"{split}.parquet"
        pd.DataFrame(rl_rows(problems(), split)).to_parquet(path, index=False)
        paths[split] = str(path)
    return paths

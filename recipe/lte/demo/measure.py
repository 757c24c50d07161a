"""Measure what the demo model does under LTE's rules, with transformers ``generate`` on CPU (no verl, no vLLM).

For every problem, ``rounds`` groups of G samples (temperature 1.0, no top-k / top-p: the rollout's sampling).
Each none-pass group gets the hint the LTE stage would build (``recipe.lte.core.plan_hint``, answers compared
as exact strings -- every demo answer is one digit) and G extra samples from the hinted prompt, plus, for
comparison, G extra samples from the unchanged prompt (what GRPO-Extra would do). Reported:

- ``success_rate``: correct share of all first-round samples; ``truncated_rate``: share cut at the length limit;
- ``all_pass_share`` / ``some_pass_share`` / ``none_pass_share`` of the groups, and the hint kinds planned;
- ``rescue_hinted`` / ``rescue_unhinted``: share of none-pass groups with at least one correct extra sample;
- ``repeat_hinted`` / ``repeat_unhinted``: share of the extra samples that finished with an answer which gives
  one of the answers the hint listed as wrong (groups whose hint lists answers).
"""

from __future__ import annotations

from collections import Counter

import torch

from recipe.lte.core import HintConfig, HintPlan, plan_hint
from recipe.lte.demo import task


def _exact(a: str, b: str) -> bool:
    return a == b


@torch.no_grad()
def sample(model, tok, prompts: list[list[dict]], n: int, max_new_tokens: int, seed: int) -> list[list[tuple]]:
    """``n`` samples per chat prompt: a list, per prompt, of (text, truncated) pairs.

    truncated = no end-of-sequence token within ``max_new_tokens`` (verl's notion: the response hit the limit).
    """
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues every row from its last prompt token
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    torch.manual_seed(seed)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    gen = out[:, enc["input_ids"].shape[1] :]
    results = []
    for row in gen.tolist():
        ended = tok.eos_token_id in row
        row = row[: row.index(tok.eos_token_id)] if ended else row
        results.append((tok.decode(row, skip_special_tokens=True), not ended))
    return [results[i * n : (i + 1) * n] for i in range(len(prompts))]


Graded = tuple[bool, str, bool]  # (correct, final answer, truncated) of one sample


def summarize(firsts: list[list[Graded]], failed: list[HintPlan], extras: dict[str, list[list[Graded]]]) -> dict:
    """The statistics from graded samples: ``firsts`` holds every group; ``failed`` the hint plan of each
    none-pass group (in order); ``extras[name]`` the extra samples of each of those groups."""
    flat = [r for rows in firsts for r in rows]
    classes = Counter()
    for rows in firsts:
        n_pass = sum(ok for ok, _, _ in rows)
        classes["all_pass" if n_pass == len(rows) else "some_pass" if n_pass else "none_pass"] += 1
    stats = {
        "groups": len(firsts),
        "success_rate": sum(ok for ok, _, _ in flat) / len(flat),
        "truncated_rate": sum(t for _, _, t in flat) / len(flat),
        **{f"{c}_share": classes[c] / len(firsts) for c in ("all_pass", "some_pass", "none_pass")},
        "hint_kinds": dict(Counter(plan.kind for plan in failed)),
    }
    for name, groups in extras.items():
        if len(groups) != len(failed):
            raise ValueError(f"extras[{name!r}] has {len(groups)} groups for {len(failed)} failed groups")
        rescued = repeats = finished = correct = samples = 0
        for plan, rows in zip(failed, groups, strict=True):
            rescued += any(ok for ok, _, _ in rows)
            correct += sum(ok for ok, _, _ in rows)
            samples += len(rows)
            if plan.wrong_answers:
                done = [pred for _, pred, trunc in rows if not trunc and pred]
                finished += len(done)
                repeats += sum(pred in plan.wrong_answers for pred in done)
        stats[f"rescue_{name}"] = rescued / len(failed) if failed else 0.0
        stats[f"extra_success_{name}"] = correct / samples if samples else 0.0
        stats[f"repeat_{name}"] = repeats / finished if finished else 0.0
    return stats


def measure(
    model,
    tok,
    *,
    problems: list[task.Problem] | None = None,
    rounds: int = 3,
    group_size: int = 4,
    max_response_length: int = task.RECOMMENDED_MAX_RESPONSE_LENGTH,
    seed: int = 0,
    hint: HintConfig | None = None,
) -> dict:
    """The statistics of the module docstring, over ``rounds`` groups per problem (all 90 by default)."""
    hint = hint or HintConfig()
    _, score = task.get_scorer()
    problems = problems or task.all_problems()

    def graded(problem: task.Problem, samples: list[tuple[str, bool]]) -> list[Graded]:
        outs = [score(task.DATA_SOURCE, text, problem.answer) for text, _ in samples]
        return [(out["score"] >= 1.0, out["pred"], trunc) for out, (_, trunc) in zip(outs, samples, strict=True)]

    def generate(prompts: list[list[dict]], seed: int) -> list[list[tuple[str, bool]]]:
        return sample(model, tok, prompts, group_size, max_response_length, seed) if prompts else []

    groups = [p for _ in range(rounds) for p in problems]
    samples = generate([task.build_messages(p) for p in groups], seed)
    firsts = [graded(p, s) for p, s in zip(groups, samples, strict=True)]

    failed = []  # (problem, plan) of each none-pass group that gets a hint
    for p, rows in zip(groups, firsts, strict=True):
        if not any(ok for ok, _, _ in rows):
            plan = plan_hint(
                [pred for _, pred, _ in rows],
                [trunc for _, _, trunc in rows],
                equivalent=_exact,
                max_answers=hint.max_wrong_answers,
                max_answer_chars=hint.max_answer_chars,
                no_answer_fallback=hint.no_answer_fallback,
            )
            if plan is not None:
                failed.append((p, plan))

    hinted = generate([task.hinted_messages(p, plan, hint) for p, plan in failed], seed + 1)
    unhinted = generate([task.build_messages(p) for p, _ in failed], seed + 2)
    extras = {
        "hinted": [graded(p, s) for (p, _), s in zip(failed, hinted, strict=True)],
        "unhinted": [graded(p, s) for (p, _), s in zip(failed, unhinted, strict=True)],
    }
    stats = summarize(firsts, [plan for _, plan in failed], extras)
    return {**stats, "group_size": group_size, "max_response_length": max_response_length}

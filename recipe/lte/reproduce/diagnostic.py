"""The paper's premise, measured: does training on hinted successes teach the UNHINTED policy?

For the training prompts whose none-pass group a hint rescued during the LTE run (from its ``lte_groups.jsonl``),
the probability of the correct answer under the ORIGINAL prompt, before training (the base model) and after it
(each arm's final checkpoint, merged): LTE against GRPO-Extra (whose extra rollouts were unhinted) and GRPO.

The demo's responses are ``\\boxed{d}`` + end of sequence (or a filler that runs past the length budget and is
never correct), so the probability of the correct response is one teacher-forced pass over its few tokens:
exact for that response (other correct strings -- a different tokenization, text after the box -- are left out, so
it is a tight lower bound on P(correct)). Computed at temperature 1, the training sampler's, with transformers on
the merged checkpoints; every model is rounded to bfloat16 first, as the rollout engine and the merger see it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from recipe.lte import core

HINTED_KINDS = frozenset(core.HINT_KINDS)


def rescued_indexes(groups: Iterable[Mapping], kinds: Iterable[str]) -> set:
    """Dataset indexes of the prompts with at least one none-pass group (at any step) whose extra phase, of one of
    ``kinds``, ran and replaced at least one failure."""
    kinds = set(kinds)
    return {
        g["index"]
        for g in groups
        if g["group_class"] == core.NONE_PASS
        and g["extra_status"] == "ran"
        and g["extra_kind"] in kinds
        and g["replaced"] > 0
        and g.get("index") is not None
    }


def none_pass_indexes(groups: Iterable[Mapping]) -> set:
    """Dataset indexes of the prompts whose group was none-pass (before LTE) at least once."""
    return {g["index"] for g in groups if g["group_class"] == core.NONE_PASS and g.get("index") is not None}


def load_groups(run_dir: str | Path) -> list[dict]:
    """A run's per-group records (``core.GROUPS_FILE``); a step recorded twice (a resumed run) keeps its last."""
    import json

    path = Path(run_dir) / core.GROUPS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: was {run_dir} trained by LTE's trainer (recipe.lte.trainer)?")
    by_step: dict[int, list[dict]] = {}
    last_step = None
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}:{lineno}: not a group record ({e})") from e
        if step != last_step:  # a new block of this step's records replaces an older one
            by_step[step] = []
            last_step = step
        by_step[step].append(rec)
    return [r for s in sorted(by_step) for r in by_step[s]]


class AnswerScorer:
    """log P(correct response | unhinted prompt) under one model (see the module docstring)."""

    def __init__(self, model_dir: str | Path):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from recipe.lte.evaluate.generate import PromptRenderer

        hf_logging.disable_progress_bar()  # one bar per model would bury the progress lines
        self.renderer = PromptRenderer(str(model_dir))
        self.tokenizer = self.renderer.tokenizer
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
        self.model = model.float().eval()  # bfloat16 weights, as the rollout engine and the merger hold them

    def logprob(self, messages: Sequence[Mapping], response: str) -> float:
        """Sum of the log-probabilities of ``response``'s tokens and the end-of-sequence token after the prompt."""
        import torch

        prompt = self.renderer.token_ids([dict(m) for m in messages])
        resp = self.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        ids = torch.tensor([prompt + resp])
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        return float(logp.gather(1, torch.tensor(resp).unsqueeze(1)).sum())


def p_correct(model_dir: str | Path, problems: Sequence, response_of) -> dict:
    """``{problem index: P(correct response)}`` for ``problems`` (``recipe.lte.evaluate.records.Problem``);
    ``response_of(ground_truth)`` is the correct response's text."""
    from recipe.lte.demo.warmup import torch_threads

    with torch_threads(1):  # tiny matrices: one thread is fastest (docs/demo.md)
        scorer = AnswerScorer(model_dir)
        return {
            p.extra_info["index"]: math.exp(scorer.logprob(p.prompt, response_of(p.ground_truth))) for p in problems
        }


def mean_over(values: Mapping, indexes: Iterable) -> float | None:
    """Mean of ``values`` over ``indexes`` (None when there are none)."""
    idx = [i for i in indexes if i in values]
    return sum(values[i] for i in idx) / len(idx) if idx else None

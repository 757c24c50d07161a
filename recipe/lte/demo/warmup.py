"""Warm-up: distil the demo task's designed answer distribution into a tiny Qwen2 model, on CPU.

Read top to bottom:

1. ``tokenizer_corpus``: the strings the tokenizer is trained on (prompts, every hint template, responses), so
   a hinted prompt is about 120 tokens, not 600 bytes.
2. ``make_example``: one (prompt, response) pair with its training targets. Teacher forcing follows one sampled
   response, but at the two places where the designed behaviour is random -- the first response token (short
   answer or over-long filler) and the answer digit -- the target is the whole designed distribution (soft
   cross-entropy). The model then learns the distribution itself, not one noisy draw of it: warm-up converges
   in a few hundred steps and the result does not depend much on the seed.
3. ``warmup``: AdamW with a cosine schedule; loss on response tokens only; half the examples hinted.
4. ``build_demo``: tokenizer + model (``recipe.lte.demo.tiny_model.build_tiny_model``) + warm-up + a quality check
   (``recipe.lte.demo.measure``) + the RL parquet files, cached under a key that hashes every parameter and
   this code, so CI builds once and later calls reuse the build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from recipe.lte.core import HINT_KINDS, HintConfig, HintPlan
from recipe.lte.demo import task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """The tiny model: Qwen2, head_dim 64 (vLLM's CPU attention rejects smaller heads)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 640  # an upper bound: the demo corpus runs out of merges below it (every N one token)


@dataclass(frozen=True)
class WarmupConfig:
    # Enough for every seed tried to reach the designed behaviour (docs/demo.md, "Why these settings").
    steps: int = 500
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    hinted_share: float = 0.5  # share of hinted examples in a batch
    seed: int = 0
    # Quality check after warm-up (``measure.measure``), and what to do when it fails.
    check_rounds: int = 2  # rounds of G samples for every problem
    min_success: float = 0.20  # designed: 0.33; a model stuck at chance has about 0.1
    max_success: float = 0.50
    min_rescue_gain: float = 0.10  # hinted minus unhinted rescue rate on none-pass groups (docs/demo.md)
    extra_steps: int = 200  # trained on when the check fails, at most ``max_extra_rounds`` times per seed
    max_extra_rounds: int = 2
    fallback_seeds: tuple[int, ...] = (1, 2)
    # The matrices are too small to split: a second thread only spins against the first (docs/demo.md).
    torch_threads: int = 1


# ---------------------------------------------------------------------------------------------------------
# 1. Tokenizer corpus
# ---------------------------------------------------------------------------------------------------------


def tokenizer_corpus(hint: HintConfig | None = None) -> list[str]:
    """Every prompt, every hint template (rendered), and every response the demo uses."""
    hint = hint or HintConfig()
    rng = random.Random(0)
    corpus = ["<|im_start|>user\n", "<|im_start|>assistant\n"]
    for problem in task.all_problems():
        corpus.append(task.build_messages(problem)[-1]["content"])
        for kind in HINT_KINDS:
            wrong = [d for d in task.DIGITS if d != problem.answer]
            plan = HintPlan(kind, tuple(rng.sample(wrong, 3)) if kind != "concise" else ())
            corpus.append(task.hinted_messages(problem, plan, hint)[-1]["content"])
    corpus += [task.long_response(d) for d in task.DIGITS]
    return corpus


# ---------------------------------------------------------------------------------------------------------
# 2. Examples
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ResponseTokens:
    """Token ids of the demo's responses; checked to have the structure the soft targets rely on."""

    eos_id: int
    digit_ids: dict[str, int]
    short_first_id: int
    long_first_id: int

    @classmethod
    def from_tokenizer(cls, tok) -> ResponseTokens:
        digit_ids = {}
        for kind, render in (("short", task.short_response), ("long", task.long_response)):
            seqs = {d: tok(render(d), add_special_tokens=False)["input_ids"] for d in task.DIGITS}
            pos = len(seqs["0"]) - 2  # "...{" digit "}": the digit is the second-to-last token
            for d, ids in seqs.items():
                if len(ids) != len(seqs["0"]) or ids[:pos] != seqs["0"][:pos] or ids[pos + 1 :] != seqs["0"][pos + 1 :]:
                    raise ValueError(f"tokenizer splits the {kind} response for {d!r} unexpectedly: {ids}")
                if digit_ids.setdefault(d, ids[pos]) != ids[pos]:
                    raise ValueError(f"digit {d!r} tokenizes differently in short and long responses")
        short_first = tok(task.short_response("0"), add_special_tokens=False)["input_ids"][0]
        long_first = tok(task.long_response("0"), add_special_tokens=False)["input_ids"][0]
        if short_first == long_first or len(set(digit_ids.values())) != 10:
            raise ValueError("short and long responses must start with different tokens, and digits be distinct")
        return cls(tok.eos_token_id, digit_ids, short_first, long_first)


@dataclass
class Example:
    input_ids: list[int]  # prompt + response
    prompt_len: int
    # position (index into input_ids whose logits predict the next token) -> {token id: probability}
    soft: dict[int, dict[int, float]]


def prompt_ids(tok, messages: list[dict]) -> list[int]:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def make_example(tok, rt: ResponseTokens, problem: task.Problem, plan: HintPlan | None, rng: random.Random) -> Example:
    """One training example for ``problem`` (hinted when ``plan`` is given); see the module docstring."""
    messages = task.build_messages(problem) if plan is None else task.hinted_messages(problem, plan)
    target = task.target_distribution(problem, plan)
    p_ids = prompt_ids(tok, messages)
    r_ids = tok(task.sample_response(target, rng), add_special_tokens=False)["input_ids"] + [rt.eos_id]
    n = len(p_ids)
    digit_pos = n + len(r_ids) - 4  # response ends: digit, "}", eos; the logits one before predict the digit
    soft = {
        n - 1: {rt.short_first_id: 1.0 - target.p_long, rt.long_first_id: target.p_long},
        digit_pos: {rt.digit_ids[d]: p for d, p in target.answer_probs.items()},
    }
    return Example(p_ids + r_ids, n, soft)


def sample_example(tok, rt: ResponseTokens, rng: random.Random, hinted_share: float) -> Example:
    problem = rng.choice(task.all_problems())
    plan = task.sample_hint_plan(problem, rng) if rng.random() < hinted_share else None
    return make_example(tok, rt, problem, plan, rng)


def collate(examples: list[Example], vocab: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, targets, decision): right-padded; targets[b, t] is the distribution of token
    t+1, all zero where no loss is taken (the prompt and the padding); decision marks the soft positions."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), T), dtype=torch.long)
    targets = torch.zeros((len(examples), T, vocab))
    decision = torch.zeros((len(examples), T), dtype=torch.bool)
    for b, e in enumerate(examples):
        L = len(e.input_ids)
        ids[b, :L] = torch.tensor(e.input_ids)
        attn[b, :L] = 1
        for t in range(e.prompt_len - 1, L - 1):
            if t in e.soft:
                decision[b, t] = True
                for tok_id, p in e.soft[t].items():
                    targets[b, t, tok_id] = p
            else:
                targets[b, t, e.input_ids[t + 1]] = 1.0
    return ids, attn, targets, decision


# ---------------------------------------------------------------------------------------------------------
# 3. Warm-up
# ---------------------------------------------------------------------------------------------------------


def lr_at(step: int, cfg: WarmupConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``cfg.lr`` at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + torch.cos(torch.tensor(progress * torch.pi)).item()))


def batch_loss(model, examples: list[Example], vocab: int, pad_id: int, n_buckets: int = 2) -> torch.Tensor:
    """Mean cross-entropy over the decision tokens (the soft ones) + mean over the other response tokens.

    The two decisions carry everything problem- and hint-specific; in a plain token mean they are 2 of 6-46
    response tokens, and the model learns the format long before it learns them.
    Examples are bucketed by length (hinted prompts are 3x longer than plain ones: one padded batch would
    spend most of its compute on padding), and logits are computed only where a loss is taken.
    """
    examples = sorted(examples, key=lambda e: len(e.input_ids))
    size = -(-len(examples) // n_buckets)
    sums = {True: 0.0, False: 0.0}
    counts = {True: 0, False: 0}
    for i in range(0, len(examples), size):
        ids, attn, targets, decision = collate(examples[i : i + size], vocab, pad_id)
        hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
        for is_decision in (True, False):
            mask = (targets.sum(-1) > 0) & (decision if is_decision else ~decision)
            logits = model.lm_head(hidden[mask])
            sums[is_decision] = sums[is_decision] + F.cross_entropy(logits, targets[mask], reduction="sum")
            counts[is_decision] += int(mask.sum())
    return sums[True] / counts[True] + sums[False] / counts[False]


def warmup(model, tok, cfg: WarmupConfig, *, steps: int, seed: int, log_every: int = 50) -> list[float]:
    """Train ``model`` in place for ``steps`` steps; return the loss of every step."""
    rt = ResponseTokens.from_tokenizer(tok)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    vocab = model.get_output_embeddings().weight.shape[0]
    model.train()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, steps)
        examples = [sample_example(tok, rt, rng, cfg.hinted_share) for _ in range(cfg.batch_size)]
        loss = batch_loss(model, examples, vocab, tok.pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            logger.info("warm-up step %d/%d loss %.4f", step + 1, steps, loss.item())
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------------------
# 4. Build (cached)
# ---------------------------------------------------------------------------------------------------------

BUILD_FILE = "build.json"


def cache_key(model_cfg: ModelConfig, cfg: WarmupConfig) -> str:
    """Hash of every parameter of the build and of the code that uses them (a code change rebuilds)."""
    params = {
        "model": dataclasses.asdict(model_cfg),
        "warmup": dataclasses.asdict(cfg),
        "hint": dataclasses.asdict(HintConfig()),
        "tiers": {k: dataclasses.asdict(v) for k, v in task.TIERS.items()},
        "task": [
            task.TIER_BY_TENS,
            task.FILLER,
            task.FILLER_REPEATS,
        ],
        "prompt": task.build_messages(task.Problem(37)),
    }
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    here = Path(__file__).resolve().parent
    for name in ("task.py", "warmup.py", "measure.py", "tiny_model.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _passes(stats: dict, cfg: WarmupConfig) -> bool:
    return (
        cfg.min_success <= stats["success_rate"] <= cfg.max_success
        and stats["rescue_hinted"] - stats["rescue_unhinted"] >= cfg.min_rescue_gain
    )


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_checked(model_dir: str, cfg: WarmupConfig, model_cfg: ModelConfig) -> tuple[object, object, dict]:
    """Warm up from each seed in turn (``cfg.seed``, then ``cfg.fallback_seeds``), training longer when the
    quality check fails; return (model, tokenizer, stats) of the first that passes, else raise."""
    with torch_threads(cfg.torch_threads):
        return _train_checked(model_dir, cfg, model_cfg)


def _train_checked(model_dir: str, cfg: WarmupConfig, model_cfg: ModelConfig) -> tuple[object, object, dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.lte.demo.measure import measure
    from recipe.lte.demo.tiny_model import build_tiny_model

    tried = []
    for seed in (cfg.seed, *cfg.fallback_seeds):
        build_tiny_model(
            model_dir,
            tokenizer_corpus(),
            hidden_size=model_cfg.hidden_size,
            num_layers=model_cfg.num_layers,
            num_heads=model_cfg.num_heads,
            intermediate_size=model_cfg.intermediate_size,
            vocab_size=model_cfg.vocab_size,
            seed=seed,
        )
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
        steps = cfg.steps
        warmup(model, tok, cfg, steps=cfg.steps, seed=seed)
        for extra in range(cfg.max_extra_rounds + 1):
            stats = measure(model, tok, rounds=cfg.check_rounds, seed=seed)
            stats["warmup_steps"], stats["seed"] = steps, seed
            logger.info("seed %d after %d steps: %s", seed, steps, json.dumps(stats))
            if _passes(stats, cfg):
                return model, tok, stats
            tried.append(stats)
            if extra < cfg.max_extra_rounds:
                # a short second cosine cycle at a lower rate
                warmup(model, tok, dataclasses.replace(cfg, lr=cfg.lr / 3), steps=cfg.extra_steps, seed=seed + 1000)
                steps += cfg.extra_steps
    raise RuntimeError(
        "the demo model failed its quality check for every seed (need success in "
        f"[{cfg.min_success}, {cfg.max_success}] and hinted - unhinted rescue >= {cfg.min_rescue_gain}); "
        f"measured: {tried}. Train longer (WarmupConfig.steps) or change the tiers in recipe/lte/demo/task.py."
    )


def build_demo(
    out_root: str | os.PathLike,
    *,
    model_cfg: ModelConfig | None = None,
    cfg: WarmupConfig | None = None,
    force: bool = False,
) -> dict:
    """Build (or reuse) the demo: warmed-up model + tokenizer, train/val RL parquet.

    Returns dict(model_dir, train_parquet, val_parquet, heldout_parquet, stats, cache_key, reused, build_seconds).
    A build in ``out_root`` whose cache key matches and whose files all exist is reused unless ``force``; anything
    else there is rebuilt.
    """
    model_cfg = model_cfg or ModelConfig()
    cfg = cfg or WarmupConfig()
    root = Path(out_root)
    key = cache_key(model_cfg, cfg)
    model_dir, data_dir, build_file = root / "model", root / "data", root / BUILD_FILE
    if not force and build_file.exists():
        record = json.loads(build_file.read_text())
        files = [model_dir / "config.json", *(record.get(f"{split}_parquet") for split in task.SPLITS)]
        if record.get("cache_key") == key and all(f and Path(f).exists() for f in files):
            return {**record, "reused": True}
        logger.info("cache key changed (%s -> %s): rebuilding %s", record.get("cache_key"), key, root)

    start = time.perf_counter()
    build_file.unlink(missing_ok=True)  # written last: a half-finished build is never reused
    for d in (model_dir, data_dir):
        shutil.rmtree(d, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    model, tok, stats = train_checked(str(model_dir), cfg, model_cfg)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    record = {
        "model_dir": str(model_dir),
        **{f"{split}_parquet": path for split, path in task.write_parquet(data_dir).items()},
        "stats": stats,
        "cache_key": key,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    tmp = build_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, build_file)
    return {**record, "reused": False}

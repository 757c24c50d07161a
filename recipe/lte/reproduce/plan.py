"""What a reproduction runs and where it keeps it: the settings, the runs (arm x seed), the results folder.

Every arm of a seed is trained from the same base model with the same data order and step budget: the seed sets
the data order (``data.seed``), vLLM's sampling seed, the mini-batch shuffling and LTE's replacement choices, and
is the same for every arm. Runs are ordered seed by seed, so an interrupted reproduction has whole seeds done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from recipe.lte.reproduce.arms import Arm
from recipe.lte.reproduce.markers import differences

# The evaluation's two splits on CPU, as data_source values of the evaluation parquet (their table labels).
HELDOUT, TRAIN = "demo_heldout", "demo_train"
SPLIT_LABELS = {HELDOUT: "held-out", TRAIN: "train (unhinted)"}


@dataclass(frozen=True)
class Settings:
    """The shared settings of every run of a reproduction (CPU demo sizes by default)."""

    steps: int  # training steps per arm and seed
    batch_size: int = 8  # prompts per step (data.train_batch_size); G = 4 rollouts each (the demo's)
    eval_n: int = 16  # samples per problem (Pass@k for k = 1..n)
    eval_temperature: float = 0.6  # the paper's evaluation decoding (docs/method.md, "Evaluation")
    eval_top_p: float = 0.95
    eval_max_new_tokens: int = 24  # the demo's training response budget (task.RECOMMENDED_MAX_RESPONSE_LENGTH)
    eval_limit: int | None = None  # problems per split (None: all 18 held-out and 72 training problems)
    extra_overrides: tuple[str, ...] = field(default=())  # hydra overrides for every run (after the arm's)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_n < 1 or self.eval_max_new_tokens < 1:
            raise ValueError(f"steps, batch_size, eval_n and eval_max_new_tokens must be >= 1: {self}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"eval_limit={self.eval_limit} must be >= 1 (or None for every problem)")

    def train_inputs(self) -> dict:
        """What a trained checkpoint depends on besides the arm, the seed, the step count and the base model."""
        return {"batch_size": self.batch_size, "extra_overrides": list(self.extra_overrides)}

    def eval_inputs(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in d if k.startswith("eval_")}


@dataclass(frozen=True)
class RunSpec:
    """One training run: an arm and a seed."""

    arm: Arm
    seed: int

    @property
    def key(self) -> str:
        return f"{self.arm.name}/seed{self.seed}"


def plan_runs(arms: list[Arm], seeds: list[int]) -> list[RunSpec]:
    """Every (arm, seed), seed by seed, arms in the given order."""
    return [RunSpec(arm, seed) for seed in seeds for arm in arms]


def seed_overrides(seed: int) -> list[str]:
    """The hydra overrides that make a run's randomness a function of ``seed`` alone (the same for every arm).

    ``data.seed``: the training data order (verl shuffles with an unseeded generator when it is null);
    ``rollout.seed``: vLLM's sampling; ``actor.data_loader_seed``: the mini-batch shuffle; ``lte.seed``: which
    failures correct extra responses replace.
    """
    return [
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.actor.data_loader_seed={seed}",
        f"lte.seed={seed}",
    ]


def train_overrides(spec: RunSpec, settings: Settings) -> list[str]:
    """Hydra overrides of one run after the demo launcher's own: batch size, the arm's, the seed's, the user's."""
    return [
        f"data.train_batch_size={settings.batch_size}",
        *spec.arm.overrides,
        *seed_overrides(spec.seed),
        *settings.extra_overrides,
    ]


def train_state(marker: dict | None, inputs: dict, steps: int) -> str:
    """What to do about a run given its training marker: ``todo``, ``done`` or ``extend`` (train on from the
    checkpoint to more steps). Raises when the folder holds the run under other settings."""
    if marker is None:
        return "todo"
    if marker.get("inputs") != inputs:
        raise ValueError(
            f"this results folder holds this run trained with other settings {differences(marker['inputs'], inputs)} "
            "(recorded, requested): use another --out, or delete that run's folder to retrain it"
        )
    done = int(marker.get("steps", 0))
    if done == steps:
        return "done"
    if done < steps:
        return "extend"
    raise ValueError(
        f"this run was trained for {done} steps, more than --steps {steps}: use --steps {done} or another --out"
    )


@dataclass(frozen=True)
class Layout:
    """The results folder: one place for runs, evaluations, tables, figures and the record of the command."""

    root: Path
    build_dir: Path

    @classmethod
    def create(cls, out: str | Path, build: str | Path | None = None) -> Layout:
        root = Path(out).resolve()
        return cls(root, Path(build).resolve() if build else root / "build")

    def run_out(self, spec: RunSpec) -> Path:
        """The demo launcher's --out for this run (its train.log, its dynamics plot)."""
        return self.root / "runs" / spec.arm.name / f"seed{spec.seed}"

    def run_dir(self, spec: RunSpec) -> Path:
        """trainer.default_local_dir of this run (checkpoints, lte_metrics.jsonl, lte_groups.jsonl)."""
        return self.run_out(spec) / spec.arm.mode

    def hf_dir(self, spec: RunSpec) -> Path:
        return self.run_out(spec) / "hf"

    def eval_dir(self, name: str) -> Path:
        """An evaluation run folder: ``base`` or ``<arm>/seed<k>``."""
        return self.root / "eval" / name

    @property
    def eval_data(self) -> Path:
        return self.root / "eval_data.parquet"

    def marker(self, spec: RunSpec, name: str) -> Path:
        """A run's marker file: ``train.done``, ``train.started``, ``train.submitted``, ``merge.done``."""
        return self.run_out(spec) / f"{name}.json"

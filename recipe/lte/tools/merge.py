"""Turn a training checkpoint into a Hugging Face model folder (verl's model merger), ready for evaluation.

    python -m recipe.lte.tools.merge CKPT OUT_DIR        # or: bash scripts/merge_checkpoint.sh CKPT OUT_DIR

CKPT may be the run's checkpoint folder (``trainer.default_local_dir``: its latest step is taken), one
``global_step_N`` folder, or that step's ``actor`` folder. The merge itself is verl's:
``python -m verl.model_merger merge --backend fsdp --local_dir <actor> --target_dir OUT_DIR``.
Afterwards OUT_DIR is checked to hold a config, weights and a tokenizer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# verl's trainer writes this beside the global_step_N folders (verl/trainer/ppo/v1/trainer_base.py).
LATEST_FILE = "latest_checkpointed_iteration.txt"


def find_actor_dir(ckpt: str | Path) -> Path:
    """The FSDP actor checkpoint folder (holding ``fsdp_config.json``) that ``ckpt`` points to."""
    ckpt = Path(ckpt).expanduser().resolve()
    if not ckpt.is_dir():
        raise FileNotFoundError(f"checkpoint {ckpt} is not a folder")
    if (ckpt / LATEST_FILE).is_file():  # the run's folder: its latest step
        step = (ckpt / LATEST_FILE).read_text().strip()
        if not step.isdigit():
            raise ValueError(f"{ckpt / LATEST_FILE} holds {step!r}, not a step number")
        ckpt = ckpt / f"global_step_{step}"
    elif not (ckpt / "fsdp_config.json").is_file() and not (ckpt / "actor").is_dir():
        steps = sorted(ckpt.glob("global_step_*"), key=lambda p: int(p.name.rsplit("_", 1)[-1]))
        if steps:
            ckpt = steps[-1]
    actor = ckpt if (ckpt / "fsdp_config.json").is_file() else ckpt / "actor"
    missing = [name for name in ("fsdp_config.json", "huggingface") if not (actor / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{actor} is not an FSDP actor checkpoint (missing {', '.join(missing)}); give the run's checkpoint "
            "folder, a global_step_N folder or its actor folder"
        )
    if not list(actor.glob("model_world_size_*_rank_*.pt")):
        raise FileNotFoundError(f"{actor} holds no model shards (model_world_size_*_rank_*.pt)")
    return actor


def merge_command(actor_dir: str | Path, out_dir: str | Path, python: str = sys.executable) -> list[str]:
    """verl's model merger command for an FSDP actor checkpoint (verl/model_merger/__main__.py)."""
    return [
        python, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
        "--local_dir", str(actor_dir), "--target_dir", str(out_dir),
    ]  # fmt: skip


def check_merged(out_dir: str | Path) -> None:
    """Refuse an output folder without a config, weights or a tokenizer (what evaluation loads)."""
    out = Path(out_dir)
    problems = []
    if not (out / "config.json").is_file():
        problems.append("config.json")
    if not list(out.glob("*.safetensors")) and not list(out.glob("*.bin")):
        problems.append("weights (*.safetensors)")
    if not (out / "tokenizer_config.json").is_file():
        problems.append("tokenizer (tokenizer_config.json)")
    if problems:
        raise RuntimeError(f"merged model {out} lacks {', '.join(problems)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipe.lte.tools.merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", help="run checkpoint folder, global_step_N folder, or its actor folder")
    ap.add_argument("out_dir", help="where the Hugging Face model is written")
    ap.add_argument("--dry-run", action="store_true", help="print verl's merge command, run nothing")
    args = ap.parse_args(argv)
    try:
        actor = find_actor_dir(args.ckpt)
    except (FileNotFoundError, ValueError) as e:
        print(f"[merge] {e}", file=sys.stderr)
        return 2
    cmd = merge_command(actor, Path(args.out_dir).expanduser().resolve())
    print("[merge] " + " ".join(cmd), flush=True)
    if args.dry_run:
        return 0
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        print(f"[merge] verl's model merger failed (exit status {rc})", file=sys.stderr)
        return rc
    check_merged(args.out_dir)
    print(
        f"[merge] Hugging Face model in {args.out_dir}: python -m recipe.lte.evaluate generate --model {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compose, validate and print a run's full config without starting anything (CPU is enough).

    python -m recipe.lte.tools.dry_run --preset qwen3-4b-lte [hydra overrides...]
    python -m recipe.lte.tools.dry_run --list

It does what ``python -m recipe.lte.main_lte`` does before training (verl's validation and LTE's start-up
refusals, via ``prepare_config``) plus the GPU layout checks of ``recipe.lte.tools.presets.check_layout``.
Exit status 2 with the reasons on stderr when the config cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from omegaconf import OmegaConf

from recipe.lte.tools.presets import check_layout, data_files, list_presets, preset_description, preset_overrides


def compose_and_check(preset: str | None, overrides: list[str] | None = None):
    """The composed, validated config of a run (what the trainer would receive)."""
    overrides = preset_overrides(preset, overrides)  # an unknown preset fails before verl is imported
    from recipe.lte.main_lte import compose_config, prepare_config

    config = compose_config(overrides)
    prepare_config(config)
    check_layout(config)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.lte.tools.dry_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help="a preset name (see --list); default: the recipe config alone")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.add_argument("--data-files", action="store_true", help="print only the resolved data files, one a line")
    parser.add_argument("--quiet", action="store_true", help="validate only; print nothing on success")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. actor_rollout_ref.model.path=/weights")
    args = parser.parse_args(argv)

    if args.list:
        for name in list_presets():
            print(f"{name:28s} {preset_description(name)}")
        return 0
    try:  # verl's validation prints to stdout: keep stdout for the config (or the data files) alone
        with contextlib.redirect_stdout(sys.stderr):
            config = compose_and_check(args.preset, args.overrides)
    except Exception as e:  # hydra, verl's validation and LTE's refusals each raise their own types
        print(f"[dry-run] the config cannot run ({type(e).__name__}):\n{e}", file=sys.stderr)
        return 2
    if args.data_files:
        print("\n".join(data_files(config)))
    elif not args.quiet:
        print(OmegaConf.to_yaml(config, resolve=True))
        print(f"[dry-run] preset={args.preset} composed and validated (verl + LTE start-up checks + GPU layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

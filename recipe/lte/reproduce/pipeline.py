"""One reproduction, end to end and resumable: base model -> for every seed and arm: train, merge, evaluate ->
tables, figures, the diagnostic, the record of the command. The same pipeline on CPU (the demo task, ``cpu.py``)
and on GPUs (the paper's presets, ``gpu.py``): a backend says how each stage runs there.

Each stage is done when its marker (``markers.py``) records its inputs; a rerun does only what is not done.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from recipe.lte import core
from recipe.lte.reproduce import report as report_mod
from recipe.lte.reproduce.aggregate import aggregate, table_csv, table_markdown, training_totals
from recipe.lte.reproduce.arms import BASE, Arm
from recipe.lte.reproduce.figures import plot_dynamics, plot_pass_at_k
from recipe.lte.reproduce.markers import differences, fingerprint, is_done, read_marker, write_marker
from recipe.lte.reproduce.plan import Layout, RunSpec, plan_runs, train_state
from recipe.lte.reproduce.stages import REPO_ROOT, merge_command, run_child, shows_errors, shows_training
from recipe.lte.tools import summary


class StageFailed(RuntimeError):
    """A stage's command failed; the message names its log."""


class Backend(Protocol):
    """Where and how the stages run (``cpu.CPUBackend``, ``gpu.GPUBackend``)."""

    title: str
    columns: dict[str, str]  # evaluation column (a data_source, or "Avg") -> label
    notes: str

    def prepare(self, layout: Layout) -> dict: ...  # the base model: {"model_dir", "fingerprint", ...}

    def train_inputs(self, spec: RunSpec) -> dict: ...

    def target_steps(self, spec: RunSpec) -> int: ...

    def train_command(self, spec: RunSpec, layout: Layout, base: dict, steps: int) -> list[str]: ...

    def submits(self) -> bool: ...  # training is submitted (SLURM) rather than run in the foreground

    def eval_inputs(self) -> dict: ...

    def eval_command(self, model_dir: Path, out_dir: Path, run_name: str, seed: int) -> list[str]: ...

    def pass_at_k(self, eval_dir: Path) -> dict[str, dict[int, float]]: ...  # column -> k -> Pass@k

    def diagnostic(self, layout: Layout, base: dict, specs: list[RunSpec]) -> dict: ...

    def settings_record(self) -> dict: ...


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, to show with an error."""
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:]) if path.exists() else ""


def checkpoint_step(run_dir: Path) -> int:
    """The step of verl's latest checkpoint in ``run_dir`` (0 when there is none)."""
    marker = run_dir / "latest_checkpointed_iteration.txt"
    text = marker.read_text().strip() if marker.exists() else ""
    return int(text) if text.isdigit() else 0


def trim_records(run_dir: Path, through_step: int) -> None:
    """Drop per-step records after ``through_step`` (a run interrupted past its last checkpoint redoes those steps:
    its old records would be counted twice)."""
    for name in (core.METRICS_FILE, core.GROUPS_FILE):
        path = run_dir / name
        if not path.exists():
            continue
        kept = [
            line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= through_step
        ]
        path.write_text("".join(line + "\n" for line in kept))


@dataclass
class Progress:
    """Numbered progress lines with an estimate of the time left from the stages measured so far."""

    total: int
    done: int = 0
    seconds: dict[str, list[float]] = field(default_factory=dict)
    start: float = field(default_factory=time.monotonic)

    def begin(self, what: str) -> None:
        self.done += 1
        print(
            f"[reproduce {self.done}/{self.total}] {what} (elapsed {self._mmss(time.monotonic() - self.start)})",
            flush=True,
        )

    def measured(self, kind: str, seconds: float) -> None:
        self.seconds.setdefault(kind, []).append(seconds)

    def left(self, remaining: list[str]) -> str:
        """Estimate for the remaining stages (by kind), from the mean measured time of each kind."""
        known = [statistics.fmean(self.seconds[k]) for k in remaining if k in self.seconds]
        if not remaining:
            return "nothing left"
        if len(known) < len(remaining):
            return f"{len(remaining)} stages left"
        return f"{len(remaining)} stages left, about {self._mmss(sum(known))}"

    @staticmethod
    def _mmss(s: float) -> str:
        return f"{int(s // 60)} min {int(s % 60):02d} s"


class Pipeline:
    def __init__(self, backend: Backend, layout: Layout, arms: list[Arm], seeds: list[int], command: str):
        self.backend, self.layout, self.arms, self.seeds = backend, layout, arms, seeds
        self.specs = plan_runs(arms, seeds)
        self.command = command
        self.stage_seconds: dict[str, float] = {}

    # ---- record --------------------------------------------------------------------------------------------

    def _record(self, wall: float) -> dict:
        """record.json: every invocation's command, the wall time summed over them, time per stage kind."""
        path = self.layout.root / report_mod.RECORD_FILE
        rec = (
            json.loads(path.read_text())
            if path.exists()
            else {"commands": [], "wall_seconds": 0.0, "stage_seconds": {}}
        )
        rec["commands"].append(self.command)
        rec["wall_seconds"] += wall
        for k, v in self.stage_seconds.items():
            rec["stage_seconds"][k] = rec["stage_seconds"].get(k, 0.0) + v
        rec["versions"] = report_mod.versions(REPO_ROOT)
        path.write_text(json.dumps(rec, indent=2) + "\n")
        return rec

    def _timed(self, kind: str, t0: float) -> float:
        dt = time.monotonic() - t0
        self.stage_seconds[kind] = self.stage_seconds.get(kind, 0.0) + dt
        return dt

    # ---- stages --------------------------------------------------------------------------------------------

    def run(self, *, report_only: bool = False) -> Path:
        t_start = time.monotonic()
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with open(self.layout.root / "command.txt", "a") as f:
            f.write(self.command + "\n")
        pending: list[RunSpec] = []
        try:
            if not report_only:
                pending = self._run_stages()
        finally:
            rec = self._record(time.monotonic() - t_start)
        if pending:
            print(
                f"[reproduce] {len(pending)} run(s) still training ({', '.join(s.key for s in pending)}): rerun this "
                "command when they finish; it merges, evaluates and reports them.",
                flush=True,
            )
        out = self.write_report(rec)
        print(
            f"[reproduce] results in {self.layout.root}: {report_mod.REPORT_FILE}, table.md, figures, results.json",
            flush=True,
        )
        return out

    def _run_stages(self) -> list[RunSpec]:
        t0 = time.monotonic()
        base = self.backend.prepare(self.layout)
        self._timed("build", t0)
        self.base = base
        kinds = ["evaluate"] + [k for _ in self.specs for k in ("train", "merge", "evaluate")]
        progress = Progress(total=len(kinds))
        progress.begin("evaluate the base model")
        self._evaluate(BASE, Path(base["model_dir"]), f"base:{base['fingerprint']}", 0, progress)
        pending = []
        for spec in self.specs:
            progress.begin(f"train {spec.key} ({progress.left(kinds[progress.done :])})")
            state = self._train(spec, base, progress)
            if state == "pending":
                pending.append(spec)
                progress.done += 2
                continue
            progress.begin(f"merge {spec.key}")
            model_fp = self._merge(spec, progress)
            progress.begin(f"evaluate {spec.key}")
            self._evaluate(spec.key, self.layout.hf_dir(spec), model_fp, spec.seed, progress)
        return pending

    def _train(self, spec: RunSpec, base: dict, progress: Progress) -> str:
        layout, backend = self.layout, self.backend
        inputs = {**backend.train_inputs(spec), "base": base["fingerprint"]}
        steps = backend.target_steps(spec)
        marker_path = layout.marker(spec, "train.done")
        state = train_state(read_marker(marker_path), inputs, steps)
        run_dir = layout.run_dir(spec)
        if state == "done":
            print(f"  {spec.key}: trained ({steps} steps), skipped", flush=True)
            progress.measured("train", read_marker(marker_path).get("seconds", 0.0))
            return state
        started = read_marker(layout.marker(spec, "train.started"))
        if started is not None and started["inputs"] != inputs:
            raise ValueError(
                f"{layout.run_out(spec)} holds an unfinished run with other settings "
                f"{differences(started['inputs'], inputs)}: delete that folder or use another --out"
            )
        if backend.submits():
            return self._submit(spec, inputs, steps, run_dir, marker_path)
        ckpt = checkpoint_step(run_dir)
        if ckpt == 0 and run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted start with nothing to resume from
        trim_records(run_dir, ckpt)
        write_marker(layout.marker(spec, "train.started"), inputs)
        t0 = time.monotonic()
        cmd = backend.train_command(spec, layout, base, steps)
        rc = run_child(cmd, layout.run_out(spec) / "console.log", prefix=f"  {spec.key} | ", show=shows_training)
        if rc != 0:
            raise StageFailed(
                f"training {spec.key} failed (exit {rc}); logs: {layout.run_out(spec)}/console.log, train.log\n"
                + tail(layout.run_out(spec) / "console.log")
            )
        self._check_trained(spec, steps)
        dt = self._timed("train", t0)
        progress.measured("train", dt)
        write_marker(marker_path, inputs, steps=steps, seconds=round(dt, 1))
        print(f"  {spec.key}: trained {steps} steps in {dt:.0f} s", flush=True)
        return "trained"

    def _submit(self, spec: RunSpec, inputs: dict, steps: int, run_dir: Path, marker_path: Path) -> str:
        """Submitted training (SLURM): done once its checkpoint reaches ``steps``; submitted once otherwise."""
        if checkpoint_step(run_dir) >= steps:
            write_marker(marker_path, inputs, steps=steps)
            return "trained"
        sub_path = self.layout.marker(spec, "train.submitted")
        sub = read_marker(sub_path)
        if sub is not None and sub.get("fingerprint") == fingerprint(inputs):
            print(
                f"  {spec.key}: submitted earlier ({sub.get('job')}), checkpoint at step {checkpoint_step(run_dir)}",
                flush=True,
            )
            return "pending"
        write_marker(self.layout.marker(spec, "train.started"), inputs)
        cmd = self.backend.train_command(spec, self.layout, self.base, steps)
        import subprocess

        out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise StageFailed(f"submitting {spec.key} failed: {out.stderr.strip() or out.stdout.strip()}")
        write_marker(sub_path, inputs, job=out.stdout.strip(), command=cmd)
        print(f"  {spec.key}: submitted, job {out.stdout.strip()}", flush=True)
        return "pending"

    def _check_trained(self, spec: RunSpec, steps: int) -> None:
        run_dir = self.layout.run_dir(spec)
        got = [r["step"] for r in summary.load_metrics(str(run_dir))]
        if got != list(range(1, steps + 1)) or checkpoint_step(run_dir) != steps:
            raise StageFailed(
                f"training {spec.key} ended without steps 1..{steps} and a checkpoint at {steps} "
                f"(records for steps {got}, checkpoint {checkpoint_step(run_dir)}); see {self.layout.run_out(spec)}/train.log"
            )

    def _merge(self, spec: RunSpec, progress: Progress) -> str:
        """Merge the run's final checkpoint; returns the merged model's fingerprint."""
        train = read_marker(self.layout.marker(spec, "train.done"))
        inputs = {"train": train["fingerprint"], "steps": train["steps"]}
        marker = self.layout.marker(spec, "merge.done")
        hf = self.layout.hf_dir(spec)
        if is_done(marker, inputs) and (hf / "config.json").exists():
            print(f"  {spec.key}: merged, skipped", flush=True)
            return fingerprint(inputs)
        shutil.rmtree(hf, ignore_errors=True)
        t0 = time.monotonic()
        rc = run_child(
            merge_command(self.layout.run_dir(spec), hf),
            self.layout.run_out(spec) / "merge.log",
            prefix=f"  {spec.key} | ",
            show=shows_errors,
        )
        if rc != 0:
            log = self.layout.run_out(spec) / "merge.log"
            raise StageFailed(f"merging {spec.key} failed (exit {rc}); log: {log}\n" + tail(log))
        dt = self._timed("merge", t0)
        progress.measured("merge", dt)
        write_marker(marker, inputs, seconds=round(dt, 1))
        return fingerprint(inputs)

    def _evaluate(self, name: str, model_dir: Path, model_fp: str, seed: int, progress: Progress) -> None:
        out = self.layout.eval_dir(name)
        inputs = {"model": model_fp, "seed": seed, **self.backend.eval_inputs()}
        marker = out / "eval.done.json"
        if is_done(marker, inputs):
            print(f"  {name}: evaluated, skipped", flush=True)
            return
        if out.exists() and read_marker(marker) is not None:
            shutil.rmtree(out)  # evaluated under other settings or another checkpoint: redo from scratch
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        label = BASE if name == BASE else name.replace("/", " ")
        cmd = self.backend.eval_command(model_dir, out, label, seed)
        rc = run_child(cmd, out / "evaluate.log", prefix=f"  {name} | ", show=shows_errors)
        if rc != 0:
            raise StageFailed(
                f"evaluating {name} failed (exit {rc}); log: {out}/evaluate.log\n" + tail(out / "evaluate.log")
            )
        dt = self._timed("evaluate", t0)
        progress.measured("evaluate", dt)
        cells = self.backend.pass_at_k(out)
        write_marker(marker, inputs, seconds=round(dt, 1))
        shown = ", ".join(f"{self.backend.columns[c]} Pass@1 {100 * v[1]:.1f}" for c, v in cells.items())
        print(f"  {name}: evaluated in {dt:.0f} s: {shown}", flush=True)

    # ---- report --------------------------------------------------------------------------------------------

    def collect(self) -> dict:
        """Everything measured so far in the folder (finished stages only)."""
        results: dict[str, dict[int, dict]] = {}
        base_dir = self.layout.eval_dir(BASE)
        if (base_dir / "eval.done.json").exists():
            results[BASE] = {0: self.backend.pass_at_k(base_dir)}
        training: dict[str, list[dict]] = {}
        records: dict[str, list[list[dict]]] = {}
        for spec in self.specs:
            ev = self.layout.eval_dir(spec.key)
            if (ev / "eval.done.json").exists():
                results.setdefault(spec.arm.name, {})[spec.seed] = self.backend.pass_at_k(ev)
            if read_marker(self.layout.marker(spec, "train.done")) is not None:
                recs = summary.load_metrics(str(self.layout.run_dir(spec)))
                records.setdefault(spec.arm.name, []).append(recs)
                training.setdefault(spec.arm.name, []).append(training_totals(recs))
        return {"pass_at_k": results, "training": training, "records": records}

    def write_report(self, rec: dict) -> Path:
        root, backend = self.layout.root, self.backend
        got = self.collect()
        labels = {a.name: a.label for a in self.arms}
        all_labels = {BASE: "base model", **labels}
        agg = aggregate(got["pass_at_k"])
        ks = sorted({1, max((k for a in agg.values() for c in a.values() for k in c), default=1)})
        (root / "table.md").write_text(table_markdown(agg, all_labels, backend.columns, ks))
        (root / "table.csv").write_text(table_csv(agg, all_labels))
        plot_pass_at_k(agg, all_labels, backend.columns, root / report_mod.FIGURES["pass_at_k"])
        plot_dynamics(got["records"], labels, root / report_mod.FIGURES["dynamics"])
        diag = backend.diagnostic(self.layout, getattr(self, "base", None) or backend.prepare(self.layout), self.specs)
        results = {
            "title": backend.title,
            "labels": labels,
            "columns": backend.columns,
            "table_ks": ks,
            "settings": {**backend.settings_record(), "arms": [a.name for a in self.arms], "seeds": self.seeds},
            "notes": backend.notes,
            "record": rec,
            "per_seed": {
                a: {
                    str(s): {c: {str(k): v for k, v in ks_.items()} for c, ks_ in cols.items()}
                    for s, cols in by_s.items()
                }
                for a, by_s in got["pass_at_k"].items()
            },
            "aggregate": {
                a: {c: {str(k): vars(x) for k, x in by_k.items()} for c, by_k in cols.items()}
                for a, cols in agg.items()
            },
            "training": got["training"],
            "diagnostic": diag,
        }
        (root / report_mod.RESULTS_FILE).write_text(json.dumps(results, indent=2, default=float) + "\n")
        (root / report_mod.REPORT_FILE).write_text(report_mod.render(results, ""))
        return root

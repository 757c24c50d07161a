"""``python -m recipe.lte.reproduce``'s pure parts: arms and seeds, the plan of runs, resumability markers, Pass@k
tables and their aggregation over seeds (hand computations), training totals, the diagnostic's prompt sets, the
report, and the dry run of the CPU and GPU forms."""

from __future__ import annotations

import json
import math

import pytest

from recipe.lte import core
from recipe.lte.reproduce import aggregate as A
from recipe.lte.reproduce import diagnostic as D
from recipe.lte.reproduce.arms import ARMS, DEFAULT_ARMS, Arm, parse_arms, parse_seeds
from recipe.lte.reproduce.cli import main
from recipe.lte.reproduce.markers import fingerprint, is_done, read_marker, write_marker
from recipe.lte.reproduce.pipeline import checkpoint_step, trim_records
from recipe.lte.reproduce.plan import Layout, RunSpec, Settings, plan_runs, seed_overrides, train_overrides, train_state
from recipe.lte.reproduce.stages import kv_cache_bytes

# ---- arms, seeds, plan ---------------------------------------------------------------------------------------


def test_arms_and_seeds_parse_and_refuse_bad_input():
    assert [a.name for a in parse_arms("grpo, lte")] == ["grpo", "lte"]
    assert [a.name for a in parse_arms(list(DEFAULT_ARMS))] == ["grpo", "grpo_extra", "lte"]
    with pytest.raises(ValueError, match="unknown arm.*luffy"):
        parse_arms("grpo,luffy")
    with pytest.raises(ValueError, match="twice"):
        parse_arms("lte,lte")
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("4,7") == [4, 7]
    assert parse_seeds("5,") == [5]
    for bad in ("0", "a", "1,1", "-1,2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_every_arm_maps_to_its_mode_and_the_dagger_adds_the_entropy_bonus():
    assert {a: ARMS[a].mode for a in ARMS} == {
        "grpo": "grpo",
        "grpo_extra": "grpo_extra",
        "lte": "lte",
        "lte_dagger": "lte",
    }
    assert ARMS["lte_dagger"].overrides == ("actor_rollout_ref.actor.entropy_coeff=0.001",)
    assert all(ARMS[a].mode in core.MODES for a in ARMS)


def test_plan_is_seed_by_seed_and_every_arm_of_a_seed_shares_the_seed_overrides():
    arms = parse_arms("grpo,lte")
    specs = plan_runs(arms, [0, 1])
    assert [s.key for s in specs] == ["grpo/seed0", "lte/seed0", "grpo/seed1", "lte/seed1"]
    settings = Settings(steps=3, batch_size=16, extra_overrides=("trainer.foo=1",))
    o_grpo, o_lte = train_overrides(specs[0], settings), train_overrides(specs[1], settings)
    assert o_grpo == o_lte == ["data.train_batch_size=16", *seed_overrides(0), "trainer.foo=1"]
    dagger = train_overrides(RunSpec(ARMS["lte_dagger"], 1), settings)
    assert dagger[1] == "actor_rollout_ref.actor.entropy_coeff=0.001" and "data.seed=1" in dagger
    assert seed_overrides(2) == [
        "data.seed=2",
        "actor_rollout_ref.rollout.seed=2",
        "actor_rollout_ref.actor.data_loader_seed=2",
        "lte.seed=2",
    ]


def test_seed_overrides_are_keys_of_the_composed_recipe_config():
    from omegaconf import OmegaConf

    from recipe.lte.main_lte import compose_config

    cfg = compose_config(seed_overrides(7))
    assert cfg.data.seed == 7 and cfg.actor_rollout_ref.rollout.seed == 7
    assert cfg.actor_rollout_ref.actor.data_loader_seed == 7 and cfg.lte.seed == 7
    assert OmegaConf.select(cfg, "data.train_batch_size") is not None


def test_layout_puts_each_run_in_its_own_folder(tmp_path):
    layout = Layout.create(tmp_path)
    spec = RunSpec(ARMS["lte_dagger"], 2)
    assert layout.run_out(spec) == tmp_path / "runs" / "lte_dagger" / "seed2"
    assert layout.run_dir(spec) == layout.run_out(spec) / "lte"  # the demo launcher's OUT/<mode>
    assert layout.eval_dir(spec.key) == tmp_path / "eval" / "lte_dagger" / "seed2"
    assert layout.build_dir == tmp_path / "build"
    assert Layout.create(tmp_path, tmp_path / "b").build_dir == tmp_path / "b"


def test_settings_refuse_nonsense():
    with pytest.raises(ValueError):
        Settings(steps=0)
    with pytest.raises(ValueError):
        Settings(steps=1, eval_limit=0)


# ---- resumability --------------------------------------------------------------------------------------------


def test_markers_record_inputs_and_detect_changes(tmp_path):
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    path = tmp_path / "x" / "train.done.json"
    assert read_marker(path) is None and not is_done(path, {"a": 1})
    write_marker(path, {"a": 1}, steps=3)
    assert is_done(path, {"a": 1}) and not is_done(path, {"a": 2})
    assert read_marker(path)["steps"] == 3
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid marker"):
        read_marker(path)


def test_train_state_todo_done_extend_and_refusals():
    inputs = {"arm": "lte", "seed": 0}
    assert train_state(None, inputs, 4) == "todo"
    marker = {"inputs": inputs, "steps": 4}
    assert train_state(marker, inputs, 4) == "done"
    assert train_state(marker, inputs, 6) == "extend"  # verl resumes from the step-4 checkpoint
    with pytest.raises(ValueError, match="more than --steps 2"):
        train_state(marker, inputs, 2)
    with pytest.raises(ValueError, match=r"other settings \{'seed': \(0, 1\)\}"):
        train_state(marker, {"arm": "lte", "seed": 1}, 4)


def test_trim_records_drops_steps_past_the_checkpoint(tmp_path):
    assert checkpoint_step(tmp_path) == 0
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2\n")
    assert checkpoint_step(tmp_path) == 2
    for name in (core.METRICS_FILE, core.GROUPS_FILE):
        (tmp_path / name).write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 3)))
    trim_records(tmp_path, 2)
    for name in (core.METRICS_FILE, core.GROUPS_FILE):
        assert [json.loads(x)["step"] for x in (tmp_path / name).read_text().splitlines()] == [1, 2]


# ---- Pass@k and aggregation (hand computations) ----------------------------------------------------------------


def _samples(source: str, pid: str, n: int, c: int) -> list[dict]:
    return [{"id": f"{source}/{pid}", "data_source": source, "acc": j < c} for j in range(n)]


def test_pass_at_k_table_by_hand():
    # Problem a: 2 of 4 correct; b: 0 of 4. Pass@1 = (2/4 + 0)/2; Pass@2(a) = 1 - C(2,2)/C(4,2) = 5/6;
    # Pass@3(a) = 1 - 0 = 1 (every 3-subset holds a correct one); Pass@4 = 1 for a, 0 for b.
    samples = _samples("demo_heldout", "a", 4, 2) + _samples("demo_heldout", "b", 4, 0)
    table = A.pass_at_k_table(samples, ["demo_heldout"])["demo_heldout"]
    assert list(table) == [1, 2, 3, 4]
    assert table[1] == pytest.approx(0.25)
    assert table[2] == pytest.approx(5 / 12)
    assert table[3] == pytest.approx(0.5) and table[4] == pytest.approx(0.5)


def test_pass_at_k_avg_is_the_unweighted_mean_over_the_paper_benchmarks():
    # math: one problem, 1 of 2 correct -> Pass@1 0.5, Pass@2 1. aime: two problems, 2/2 and 0/2 -> 0.5, 0.5.
    samples = _samples("math", "0", 2, 1) + _samples("aime", "0", 2, 2) + _samples("aime", "1", 2, 0)
    samples += _samples("not_paper", "0", 2, 0)  # left out of Avg
    avg = A.pass_at_k_table(samples, ["Avg"])["Avg"]
    assert avg == pytest.approx({1: 0.5, 2: 0.75})
    with pytest.raises(ValueError, match="no 'demo_train' samples"):
        A.pass_at_k_table(samples, ["demo_train"])
    with pytest.raises(ValueError, match="different sample counts"):
        A.pass_at_k_table(_samples("x", "0", 2, 0) + _samples("x", "1", 3, 0), ["x"])


def test_spread_and_aggregate_over_seeds_by_hand():
    s = A.spread([0.2, 0.4, 0.6])
    assert s.mean == pytest.approx(0.4) and s.std == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert (s.lo, s.hi, s.n) == (0.2, 0.6, 3)
    assert A.spread([0.3]).std is None
    results = {
        "lte": {0: {"h": {1: 0.2, 2: 0.5}}, 1: {"h": {1: 0.4, 2: 0.7}}},
        "base": {0: {"h": {1: 0.1, 2: 0.3}}},
    }
    agg = A.aggregate(results)
    assert agg["lte"]["h"][1].mean == pytest.approx(0.3)
    assert agg["lte"]["h"][2].std == pytest.approx(math.sqrt(0.02))
    assert agg["base"]["h"][2].n == 1
    md = A.table_markdown(agg, {"base": "base model", "lte": "LTE"}, {"h": "held-out"}, [1, 2])
    lines = md.splitlines()
    assert lines[0] == "| Arm | seeds | held-out Pass@1 | held-out Pass@2 |"
    assert lines[2] == "| base model | 1 | 10.0 | 30.0 |"
    assert lines[3] == "| LTE | 2 | 30.0 ± 14.1 | 60.0 ± 14.1 |"
    csv = A.table_csv(agg, {"base": "b", "lte": "L"}).splitlines()
    assert csv[0] == "arm,column,k,mean,std,min,max,seeds" and "lte,h,1,0.300000,0.141421,0.200000,0.400000,2" in csv
    with pytest.raises(ValueError, match="other columns or k"):
        A.aggregate({"x": {0: {"h": {1: 0.1}}, 1: {"h": {1: 0.1, 2: 0.2}}}})


def test_training_totals_by_hand():
    recs = [
        {
            "step": s,
            "lte/groups/all_pass_before": 1,
            "lte/groups/some_pass_before": 5,
            "lte/groups/none_pass_before": none,
            "lte/groups/none_pass_before_share": none / 8,
            "lte/extra/ran": none,
            "lte/extra/rescued": resc,
            "lte/extra/replaced": 2 * resc,
            "lte/extra/off_policy_rows": 2 * resc,
            "lte/on_policy_acc": acc,
            "timing_s/step": 10.0,
        }
        for s, none, resc, acc in ((1, 2, 1, 0.25), (2, 2, 2, 0.5), (3, 1, 1, 0.5), (4, 0, 0, 0.75))
    ]
    t = A.training_totals(recs)
    assert t["steps"] == 4 and t["groups"] == 6 * 4 + 5
    assert t["none_pass_before"] == 5 and t["extra_ran"] == 5 and t["rescued"] == 4
    assert t["rescue_rate"] == pytest.approx(4 / 5) and t["replaced"] == 8 and t["off_policy_rows"] == 8
    assert t["none_pass_share_first"] == pytest.approx(2 / 8) and t["none_pass_share_last"] == 0.0  # quarter = 1 step
    assert t["on_policy_acc_first"] == 0.25 and t["on_policy_acc_last"] == 0.75
    assert math.isnan(A.training_totals([{"step": 1}])["rescue_rate"])


# ---- the diagnostic's prompt sets ------------------------------------------------------------------------------


def _group(index, cls, kind="none", status="not_needed", replaced=0):
    return {"index": index, "group_class": cls, "extra_kind": kind, "extra_status": status, "replaced": replaced}


def test_rescued_and_none_pass_indexes():
    groups = [
        _group(1, core.NONE_PASS, "hint", "ran", 2),  # rescued by a hint
        _group(2, core.NONE_PASS, "concise", "ran", 1),  # rescued by a concise hint
        _group(3, core.NONE_PASS, "hint", "ran", 0),  # hinted, not rescued
        _group(4, core.NONE_PASS, "unhinted", "ran", 1),  # GRPO-Extra's rescue
        _group(5, core.SOME_PASS),
        _group(6, core.NONE_PASS, "hint", "skipped_too_long"),
    ]
    assert D.rescued_indexes(groups, D.HINTED_KINDS) == {1, 2}
    assert D.rescued_indexes(groups, {"unhinted"}) == {4}
    assert D.none_pass_indexes(groups) == {1, 2, 3, 4, 6}
    assert D.mean_over({1: 0.2, 2: 0.4, 9: 1.0}, {1, 2, 3}) == pytest.approx(0.3)
    assert D.mean_over({1: 0.2}, set()) is None


def test_load_groups_keeps_the_last_block_of_a_step(tmp_path):
    # a resumed run wrote step 2 again after step 2: the later block wins
    records = [{"step": 1, "index": 0}, {"step": 2, "index": 1}, {"step": 3, "index": 5}, {"step": 2, "index": 7}]
    (tmp_path / core.GROUPS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    got = D.load_groups(tmp_path)
    assert [(r["step"], r["index"]) for r in got] == [(1, 0), (2, 7), (3, 5)]
    with pytest.raises(FileNotFoundError, match=core.GROUPS_FILE):
        D.load_groups(tmp_path / "nothing")


# ---- stages ----------------------------------------------------------------------------------------------------


def test_kv_cache_bytes_by_hand(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"num_attention_heads": 2, "hidden_size": 128, "num_hidden_layers": 2, "num_key_value_heads": 2})
    )
    # per token: K and V x 2 layers x 2 heads x head_dim 64 x 4 bytes = 2048; 200 tokens -> 2 blocks of 128;
    # 3 sequences x 256 tokens x 2048 x 1.25
    assert kv_cache_bytes(tmp_path, max_model_len=200, max_num_seqs=3) == 3 * 256 * 2048 * 5 // 4


# ---- report ----------------------------------------------------------------------------------------------------


def test_report_renders_every_section_from_results(tmp_path):
    from recipe.lte.reproduce.report import render

    agg = {
        "base": {"h": {"1": vars(A.spread([0.1])), "4": vars(A.spread([0.3]))}},
        "grpo": {"h": {"1": vars(A.spread([0.2, 0.3])), "4": vars(A.spread([0.4, 0.5]))}},
        "lte": {"h": {"1": vars(A.spread([0.5, 0.6])), "4": vars(A.spread([0.7, 0.8]))}},
    }
    results = {
        "title": "T",
        "labels": {"grpo": "GRPO", "lte": "LTE"},
        "columns": {"h": "held-out"},
        "table_ks": [1, 4],
        "settings": {"steps": 2},
        "notes": "N\n",
        "record": {
            "commands": ["python -m recipe.lte.reproduce --quick"],
            "wall_seconds": 120.0,
            "stage_seconds": {"train": 60.0},
            "versions": {"torch": "x"},
        },
        "aggregate": agg,
        "training": {"lte": [A.training_totals([{"step": 1, "lte/extra/ran": 1, "lte/extra/rescued": 1}])]},
        "diagnostic": {
            "sets": {"train": {"label": "all training prompts", "sizes": [72]}},
            "models": {"base": {"train": [0.2]}, "lte": {"train": [0.4]}},
        },
    }
    md = render(results, "figs")
    assert "python -m recipe.lte.reproduce --quick" in md and "Wall time: 2.0 min" in md
    assert "| LTE | 2 | 55.0 ± 7.1 | 75.0 ± 7.1 |" in md and "| base model | 1 | 10.0 | 30.0 |" in md
    assert "![Pass@k curves](figs/pass_at_k.png)" in md and "![training dynamics](figs/dynamics.png)" in md
    assert "| base model (before training) | 20.0 |" in md and "| LTE | 40.0 |" in md
    assert "held-out Pass@1: LTE − grpo = +30.0 points (larger than the larger seed std (7.1))" in md


# ---- the command line ------------------------------------------------------------------------------------------


def test_cpu_dry_run_prints_every_stage_of_every_run(tmp_path, capsys):
    assert main(["--dry-run", "--quick", "--arms", "grpo,lte_dagger", "--seeds", "0,3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("  train:    ") == 4 and "4 run(s) of 2 arm(s) x 2 seed(s)" in out
    assert "-m recipe.lte.demo.run --out" in out and "--mode lte --steps 1" in out
    assert "actor_rollout_ref.actor.entropy_coeff=0.001 data.seed=3" in out
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_command_line_refuses_bad_arguments(capsys):
    for argv, msg in (
        (["--arms", "grpo,nope"], "unknown arm"),
        (["--seeds", "x"], "--seeds"),
        (["--bogus"], "unknown arguments"),
        (["--quick", "--gpu", "qwen3-4b"], "--quick is the CPU"),
        (["--slurm"], "GPU form"),
        (["--gpu", "qwen3-70b", "--dry-run"], "qwen3-4b, qwen3-8b"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert msg in capsys.readouterr().err, argv


def test_gpu_slurm_dry_run_validates_every_preset_and_prints_sbatch(tmp_path, capsys):
    argv = ["--gpu", "qwen3-4b", "--slurm", "--sbatch-args=--partition=gpu --nodes=2", "--dry-run"]
    assert main(argv + ["--arms", "grpo,grpo_extra,lte,lte_dagger", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("config valid (verl + LTE start-up checks + GPU layout)") == 4
    assert "sbatch --parsable --job-name=lte-lte_dagger-s0" in out and "--partition=gpu --nodes=2" in out
    assert "scripts/slurm_lte.sbatch --preset qwen3-4b-lte-dagger" in out
    assert f"trainer.default_local_dir={tmp_path}/runs/grpo/seed0/grpo" in out


def test_an_arm_without_a_gpu_preset_is_refused_on_gpus(tmp_path, monkeypatch, capsys):
    from recipe.lte.reproduce import arms

    monkeypatch.setitem(arms.ARMS, "cpu_only", Arm("cpu_only", "CPU only", "lte"))
    with pytest.raises(SystemExit):
        main(["--gpu", "qwen3-8b", "--arms", "grpo,cpu_only", "--dry-run", "--out", str(tmp_path)])
    assert "arm 'cpu_only' has no GPU preset" in capsys.readouterr().err


def test_the_results_doc_is_written_with_its_figures(tmp_path):
    from recipe.lte.reproduce.report import FIGURES, RESULTS_FILE, write_doc

    results_dir = tmp_path / "out"
    results_dir.mkdir()
    results = {
        "title": "T",
        "labels": {"lte": "LTE"},
        "columns": {"h": "held-out"},
        "table_ks": [1],
        "settings": {},
        "record": {"commands": ["c"], "wall_seconds": 60.0, "stage_seconds": {}, "versions": {}},
        "aggregate": {"lte": {"h": {"1": vars(A.spread([0.5]))}}},
        "training": {},
        "diagnostic": {},
    }
    (results_dir / RESULTS_FILE).write_text(json.dumps(results))
    for name in FIGURES.values():
        (results_dir / name).write_bytes(b"png " + name.encode())
    doc = write_doc(results_dir, tmp_path / "docs" / "results-cpu.md")
    text = doc.read_text()
    assert "![Pass@k curves](results-cpu/pass_at_k.png)" in text and "| LTE | 1 | 50.0 |" in text
    for name in FIGURES.values():
        assert (tmp_path / "docs" / "results-cpu" / name).read_bytes() == b"png " + name.encode()


def test_pipeline_report_from_a_results_folder(tmp_path):
    """collect -> aggregate -> tables, figures, results.json, report.md, from a folder of finished stages (written
    here by hand: the stages themselves run in tests/e2e/test_reproduce_quick.py)."""
    from recipe.lte.reproduce.cpu import CPUBackend
    from recipe.lte.reproduce.pipeline import Pipeline

    layout = Layout.create(tmp_path)
    arms = parse_arms("grpo,lte")
    backend = CPUBackend(Settings(steps=2, eval_n=2))
    backend.diagnostic = lambda layout, base, specs: {}  # needs merged models: e2e

    def finished_eval(name: str, correct: int) -> None:
        d = layout.eval_dir(name)
        d.mkdir(parents=True)
        rows = [
            {"id": f"{src}/0", "data_source": src, "sample": j, "acc": j < correct}
            for src in ("demo_heldout", "demo_train")
            for j in range(2)
        ]
        (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        write_marker(d / "eval.done.json", {"x": 1})

    finished_eval("base", 0)
    for seed, (c_grpo, c_lte) in enumerate(((0, 1), (1, 2))):
        for arm, c in zip(arms, (c_grpo, c_lte), strict=True):
            spec = RunSpec(arm, seed)
            finished_eval(spec.key, c)
            run_dir = layout.run_dir(spec)
            run_dir.mkdir(parents=True)
            steps = [
                {"step": s, "lte/groups/none_pass_before_share": 0.5 / s, "lte/on_policy_acc": 0.2 * s} for s in (1, 2)
            ]
            (run_dir / core.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in steps))
            write_marker(layout.marker(spec, "train.done"), {"x": 1}, steps=2)
    pipeline = Pipeline(backend, layout, arms, [0, 1], "python -m recipe.lte.reproduce --steps 2")
    base = {"model_dir": "m", "fingerprint": "f", "cache_key": "f"}
    pipeline.base = base
    pipeline.write_report({"commands": ["c"], "wall_seconds": 1.0, "stage_seconds": {}, "versions": {}})
    table = (tmp_path / "table.md").read_text().splitlines()
    # held-out: base 0/2; GRPO seeds 0/2 and 1/2 -> Pass@1 25 ± 35.4, Pass@2 50 ± 70.7; LTE 1/2 and 2/2 -> 75, 100
    assert table[2] == "| base model | 1 | 0.0 | 0.0 | 0.0 | 0.0 |"
    assert table[3] == "| GRPO | 2 | 25.0 ± 35.4 | 50.0 ± 70.7 | 25.0 ± 35.4 | 50.0 ± 70.7 |"
    assert table[4] == "| LTE | 2 | 75.0 ± 35.4 | 100.0 ± 0.0 | 75.0 ± 35.4 | 100.0 ± 0.0 |"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["training"]["lte"][0]["none_pass_share_first"] == 0.5
    assert (tmp_path / "dynamics.png").stat().st_size > 10_000 and (tmp_path / "pass_at_k.png").stat().st_size > 10_000
    assert "| LTE | 2 | 75.0 ± 35.4" in (tmp_path / "report.md").read_text()


def test_an_arm_keeps_its_colour_across_figures_and_arm_subsets(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from recipe.lte.reproduce import figures as F

    closed = []
    monkeypatch.setattr(plt, "close", closed.append)  # keep each figure to read its lines

    def colours(arms: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        labels = {a: a.upper() for a in arms}
        record = {key: 0.5 for key, _ in F.DYNAMICS_PANELS}
        F.plot_dynamics({a: [[record, record]] for a in arms}, labels, tmp_path / "d.png")
        agg = {a: {"h": {1: A.spread([0.4]), 2: A.spread([0.6])}} for a in arms}
        F.plot_pass_at_k(agg, labels, {"h": "held-out"}, tmp_path / "p.png")
        dyn, pak = closed[-2:]
        by_label = []
        for fig in (dyn, pak):
            handles, names = fig.axes[0].get_legend_handles_labels()
            lines = [h.lines[0] if hasattr(h, "lines") else h for h in handles]  # errorbar: its data line
            by_label.append({n.split(" (")[0]: to_hex(line.get_color()) for n, line in zip(names, lines, strict=True)})
        return by_label[0], by_label[1]

    all_dyn, all_pak = colours(["grpo", "grpo_extra", "lte"])
    assert all_dyn == all_pak and len(set(all_dyn.values())) == 3  # same in both figures, distinct arms
    some_dyn, some_pak = colours(["grpo", "lte"])
    assert some_dyn == some_pak == {k: all_dyn[k] for k in ("GRPO", "LTE")}  # not shifted by a missing arm

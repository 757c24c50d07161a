"""The trainer's start-up data check (recipe/lte/data_check.py): refuses bad rows before Ray starts, or drops them.

Run through the recipe's composed config, the real tokenizer loading and verl's real RLHFDataset; the last test
runs ``python -m recipe.lte.main_lte`` itself and checks it stops before Ray with the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fixtures.planted_rows import good_rows, plant_bad_rows

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("data")
    rows, expected = plant_bad_rows(good_rows())
    pd.DataFrame(rows).to_parquet(d / "train.parquet")
    pd.DataFrame(good_rows(8)).to_parquet(d / "val.parquet")
    return {"train": d / "train.parquet", "val": d / "val.parquet", "expected": expected}


def _config(tiny_model_dir, data, run_dir, *overrides):
    from recipe.lte.main_lte import compose_config, prepare_config

    return prepare_config(
        compose_config(
            [
                f"actor_rollout_ref.model.path={tiny_model_dir}",
                f"data.train_files={data['train']}",
                f"data.val_files={data['val']}",
                "data.max_prompt_length=256",
                f"trainer.default_local_dir={run_dir}",
                *overrides,
            ]
        )
    )


def test_error_refuses_with_every_bad_row_named(tiny_model_dir, data, tmp_path):
    from recipe.lte.data_check import check_run_data

    config = _config(tiny_model_dir, data, tmp_path / "run")
    with pytest.raises(ValueError) as e:
        check_run_data(config)
    text = str(e.value)
    assert (
        "[data check] the train data (data.train_files) cannot be used as it is" in text
        and "60 rows, 20 bad rows" in text
    )
    for reason, rows in data["expected"].items():
        assert f"error: {reason}: {len(rows)} (rows {', '.join(map(str, rows))})" in text
    assert "lte.data.on_bad_rows=skip" in text and "python -m data_prep check" in text
    assert "val data" not in text  # the val file is clean
    assert config.data.train_files == str(data["train"])  # nothing rewritten
    assert not (tmp_path / "run" / "data_check.json").exists()


def test_skip_trains_on_the_good_rows_only(tiny_model_dir, data, tmp_path, capsys):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from recipe.lte.data_check import check_run_data, dropped_metrics, load_tokenizer

    run_dir = tmp_path / "run"
    config = _config(tiny_model_dir, data, run_dir, "lte.data.on_bad_rows=skip")
    summary = check_run_data(config)
    out = capsys.readouterr().out
    assert "[data check] train: 60 rows in 1 file(s), 20 bad" in out and "training on 40 of 60 rows" in out
    assert "[data check] val: 8 rows in 1 file(s), 0 bad" in out
    assert summary["train"]["dropped"] == 20 and summary["val"]["dropped"] == 0
    assert summary["train"]["by_reason"] == {k: len(v) for k, v in data["expected"].items()}
    # verl's own dataset, built from the rewritten config, holds exactly the 40 good rows
    (train_file,) = config.data.train_files
    assert Path(train_file).parent == run_dir / "checked_data"
    assert config.data.val_files == str(data["val"])  # a clean file: the config is left as it was
    dataset = RLHFDataset(config.data.train_files, load_tokenizer(config), config.data)
    assert sorted(row["extra_info"]["index"] for row in dataset.dataframe) == list(range(40))
    # the trainer's metrics
    assert json.loads((run_dir / "data_check.json").read_text())["on_bad_rows"] == "skip"
    assert dropped_metrics(str(run_dir)) == {"lte/data/dropped_rows_train": 20.0, "lte/data/dropped_rows_val": 0.0}


def test_skip_still_refuses_when_no_row_is_good(tiny_model_dir, tmp_path):
    from recipe.lte.data_check import check_run_data

    rows = good_rows(3)
    for r in rows:
        r["reward_model"] = {"style": "rule", "ground_truth": "\\frac{1}{"}
    pd.DataFrame(rows).to_parquet(tmp_path / "bad.parquet")
    data = {"train": tmp_path / "bad.parquet", "val": tmp_path / "bad.parquet"}
    config = _config(tiny_model_dir, data, tmp_path / "run", "lte.data.on_bad_rows=skip")
    with pytest.raises(ValueError, match="unparseable ground truth: 3"):
        check_run_data(config)


def test_another_reward_function_is_not_judged_by_ours(tiny_model_dir, data, tmp_path):
    from recipe.lte.data_check import check_run_data

    other = tmp_path / "my_reward.py"
    other.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n")
    config = _config(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "lte.data.on_bad_rows=skip",
        f"reward.custom_reward_function.path={other}",
    )
    summary = check_run_data(config)
    expected = data["expected"]
    assert "unparseable ground truth" not in summary["train"]["by_reason"]
    assert summary["train"]["dropped"] == 20 - len(expected["unparseable ground truth"])


def test_main_lte_stops_before_ray_with_the_report(tiny_model_dir, data, tmp_path):
    from verl_ext.cpu.env import cpu_env, cpu_overrides

    cmd = [
        sys.executable,
        "-m",
        "recipe.lte.main_lte",
        *cpu_overrides(ray_temp_dir=str(tmp_path / "ray")),
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        "data.max_prompt_length=256",
        f"trainer.default_local_dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, **cpu_env(), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "60 rows, 20 bad rows" in text
    for reason, rows in data["expected"].items():
        assert f"error: {reason}: {len(rows)} (rows {', '.join(map(str, rows))})" in text
    assert "Started a local Ray instance" not in text and not (tmp_path / "ray").exists()


def test_a_custom_dataset_class_is_not_checked(tiny_model_dir, data, tmp_path, capsys):
    from recipe.lte.data_check import REPORT_FILE, check_run_data

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / REPORT_FILE).write_text('{"train": {"dropped": 5}}')  # from an earlier launch
    config = _config(tiny_model_dir, data, run_dir, "data.custom_cls.path=my_dataset.py", "data.custom_cls.name=D")
    assert check_run_data(config) == {}
    assert "[data check] skipped: data.custom_cls=my_dataset.py" in capsys.readouterr().out
    assert not (run_dir / REPORT_FILE).exists()

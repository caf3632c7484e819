"""krause.sweep: grid x seeds from one command, resumable, one table, best setting on validation.

The default tests replace the trainer by a stand-in that writes config.json and results.json as
the trainer does (random metrics from a fresh generator). The slow test trains a 2 x 2 grid with
2 seeds of a tiny model for real, 2 subprocesses at a time.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from mock_runs import FakeTrainer

from krause import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT}/configs/fashion_mnist_vit.py:model=kvit_t4,smoke"
TINY_FLAGS = [
    "--config.model.depth=1",
    "--config.cache_dataset=False",
    "--config.input.eval_batch_size=1000",
]


def run_grid(tmp_path, extra=()):
    argv = ["--config", CONFIG, "--grid", "lr=1e-3,3e-4", "--grid", "wd=0.05,0.1", "--seeds", "2"]
    return sweep.main([*argv, "--workdir_root", str(tmp_path / "sweep"), *TINY_FLAGS, *extra])


@pytest.mark.parametrize("validation", [False, True])
def test_grid_of_2x2_settings_and_2_seeds_gives_one_table(monkeypatch, rng, tmp_path, validation):
    fake = FakeTrainer(rng, validation)
    monkeypatch.setattr("krause.train.train_and_evaluate", fake)
    assert run_grid(tmp_path) == 0
    assert len(fake.results) == 8
    collected = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    names = [s["name"] for s in collected["settings"]]
    assert names == ["lr-0.001_wd-0.05", "lr-0.001_wd-0.1", "lr-0.0003_wd-0.05", "lr-0.0003_wd-0.1"]
    means = {}
    for setting in collected["settings"]:
        workdirs = [tmp_path / "sweep" / setting["name"] / f"seed_{s}" for s in (3407, 3408)]
        saved = json.loads((workdirs[1] / "config.json").read_text())
        assert (saved["lr"], saved["wd"], saved["seed"]) == (
            setting["overrides"]["lr"],
            setting["overrides"]["wd"],
            3408,
        )
        assert setting["n"] == 2
        for key in ("test/accuracy", "test/loss", "train/loss"):
            values = np.array([fake.results[w][key] for w in workdirs])
            np.testing.assert_allclose(setting["metrics"][key]["mean"], values.mean(), rtol=1e-12)
            np.testing.assert_allclose(
                setting["metrics"][key]["std"], values.std(ddof=1), rtol=1e-12
            )
        if validation:
            means[setting["name"]] = np.mean([fake.results[w]["val/accuracy"] for w in workdirs])
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    marked = [s["name"] for s in collected["settings"] if s["best"]]
    if validation:
        assert marked == [max(means, key=means.get)]
        assert collected["selection"]["metric"] == "val/accuracy"
        assert f"Best setting: {marked[0]}, the highest mean val/accuracy" in md
    else:
        assert marked == [] and collected["selection"] is None
        assert "No setting is marked best: results.json has no validation metrics" in md
    assert md.count("--config.seed=") == 8


def test_finished_runs_are_skipped_and_changed_configs_refused(monkeypatch, rng, tmp_path, capsys):
    fake = FakeTrainer(rng, validation=False)
    monkeypatch.setattr("krause.train.train_and_evaluate", fake)
    assert run_grid(tmp_path) == 0
    before = dict(fake.results)
    assert run_grid(tmp_path) == 0
    assert fake.results == before
    assert "8 runs: 8 finished, 0 to run." in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"model\.dropout_rate: saved 0\.0, now 0\.5"):
        run_grid(tmp_path, ["--config.model.dropout_rate=0.5"])


def test_grid_values_are_typed_and_checked():
    from krause.train.config import load_config

    config = load_config(CONFIG)
    grid = sweep.parse_grid(
        config, ["lr=1e-3,3e-4", "total_steps=5,7", "model.rope=true,no", "grad_clip_norm=none,2"]
    )
    assert grid == [
        ("lr", [1e-3, 3e-4]),
        ("total_steps", [5, 7]),
        ("model.rope", [True, False]),
        ("grad_clip_norm", [None, 2.0]),
    ]
    assert isinstance(grid[1][1][0], int) and isinstance(grid[3][1][1], float)
    with pytest.raises(ValueError, match=r"No field 'lrr'.*Did you mean 'lr'"):
        sweep.parse_grid(config, ["lrr=1"])
    with pytest.raises(ValueError, match="lr='fast' is not a valid float"):
        sweep.parse_grid(config, ["lr=fast"])
    with pytest.raises(ValueError, match="expected FIELD=V1,V2"):
        sweep.parse_grid(config, ["lr"])
    with pytest.raises(ValueError, match="--seeds N"):
        sweep.parse_grid(config, ["seed=1,2"])
    with pytest.raises(ValueError, match="twice"):
        sweep.parse_grid(config, ["lr=1", "lr=2"])


def test_config_file_sweep_without_grid(capsys):
    """Without --grid the config file's get_sweep gives the settings (the paper's rows)."""
    config = f"{ROOT}/configs/fashion_mnist_vit.py:smoke"
    argv = ["--config", config, "--workdir_root", "unused", "--dry_run", "--seeds", "2"]
    assert sweep.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert "fashion_mnist_vit.py:model=vit_t4,smoke" in lines[0]
    assert "--workdir=unused/model-kvit_t4_smoke/seed_3408" in lines[3]


@pytest.mark.slow
def test_real_grid_in_parallel_subprocesses_then_resumed_in_process(tmp_path, capsys):
    """2 x 2 grid x 2 seeds trained by `python -m krause.main` subprocesses, 2 at a time; then
    the same sweep in this process finds all 8 finished with the configs it would build."""
    assert run_grid(tmp_path, ["--parallel", "2"]) == 0
    collected = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [s["n"] for s in collected["settings"]] == [2, 2, 2, 2]
    for setting in collected["settings"]:
        acc = setting["metrics"]["test/accuracy"]
        assert 0.0 <= acc["mean"] <= 1.0 and acc["n"] == 2
    capsys.readouterr()
    assert run_grid(tmp_path) == 0
    assert "8 runs: 8 finished, 0 to run." in capsys.readouterr().out

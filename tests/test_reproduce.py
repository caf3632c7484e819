"""krause.reproduce: tables of rows x seeds, resumable, collected beside the paper's numbers.

Most tests replace the trainer by a stand-in that writes config.json and results.json as the
trainer does (values drawn from a fresh random generator), so that the bookkeeping is checked in
milliseconds; one test trains a tiny model for real and checks that an interrupted run resumes to
the numbers of the uninterrupted one.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache
from mock_runs import FakeTrainer

from krause import paper, reproduce

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = f"{ROOT}/configs/fashion_mnist_vit.py"
# A tiny, fast run: depth 1, 3 steps of 8 images, a checkpoint every step, 10 eval batches.
TINY = (
    ("model.depth", 1),
    ("cache_dataset", False),
    ("input.eval_batch_size", 1000),
    ("checkpoint_every_steps", 1),
    ("keep_checkpoints", 5),
)


def tiny_table(rows=("vit_t4", "kvit_t4"), overrides=TINY) -> reproduce.Table:
    return reproduce.Table(
        name="tiny",
        title="tiny Fashion-MNIST table",
        dataset="fashion_mnist",
        data="Fashion-MNIST",
        rows=tuple(
            reproduce.Row(name, f"{SMOKE}:model={name},smoke", tuple(overrides)) for name in rows
        ),
        reduced=reproduce.Reduced(overrides=(("model.width", 16),), note="width 16"),
        cost_paper="seconds",
        cost_reduced="seconds",
    )


@pytest.fixture
def tiny(monkeypatch, rng, tmp_path):
    """The tiny table registered as "tiny", a fake trainer, and the argv prefix for main."""
    table = tiny_table()
    monkeypatch.setitem(reproduce.TABLES, "tiny", table)
    fake = FakeTrainer(rng)
    monkeypatch.setattr("krause.train.train_and_evaluate", fake)
    argv = ["tiny", "--scale", "paper", "--workdir_root", str(tmp_path / "runs")]
    argv += ["--results_dir", str(tmp_path / "results")]
    return table, fake, argv


def test_aggregation_against_numpy_and_paper(tiny, tmp_path):
    _, fake, argv = tiny
    assert reproduce.main([*argv, "--seeds", "3"]) == 0
    collected = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert collected["scale"] == "paper" and collected["seeds"] == 3
    for row in collected["rows"]:
        workdirs = [tmp_path / "runs" / "tiny" / row["row"] / f"seed_{3407 + i}" for i in range(3)]
        values = np.array([100 * fake.results[w]["test/accuracy"] for w in workdirs], np.float64)
        assert row["n"] == 3
        np.testing.assert_allclose(row["mean"], values.mean(), rtol=1e-12)
        np.testing.assert_allclose(row["std"], np.std(values, ddof=1), rtol=1e-12)
        assert row["paper"] == paper.PAPER[("fashion_mnist", row["row"])][1]
        assert [r["seed"] for r in row["runs"]] == [3407, 3408, 3409]
        assert "--config.seed=3408" in row["runs"][1]["command"]
        assert "--config.model.depth=1" in row["runs"][1]["command"]
    md = (tmp_path / "results" / "tiny.md").read_text()
    assert "Scale: **paper**" in md
    first = collected["rows"][0]
    assert f"{first['mean']:.2f} ± {first['std']:.2f} | 3 | {first['paper']:.2f}" in md


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (
            "seed",
            ["vit_t4/seed_3407", "kvit_t4/seed_3407", "vit_t4/seed_3408", "kvit_t4/seed_3408"],
        ),
        ("row", ["vit_t4/seed_3407", "vit_t4/seed_3408", "kvit_t4/seed_3407", "kvit_t4/seed_3408"]),
    ],
)
def test_run_order(tiny, order, expected):
    _, fake, argv = tiny
    assert reproduce.main([*argv, "--seeds", "2", "--order", order]) == 0
    assert [f"{w.parent.name}/{w.name}" for w in fake.calls] == expected


def test_finished_runs_are_skipped_and_tables_run_in_pieces(tiny, tmp_path, capsys):
    _, fake, argv = tiny
    assert reproduce.main([*argv, "--seeds", "1"]) == 0
    assert len(fake.calls) == 2
    assert reproduce.main([*argv, "--seeds", "2"]) == 0  # only the new seed of each row
    assert [w.name for w in fake.calls[2:]] == ["seed_3408", "seed_3408"]
    out = capsys.readouterr().out
    assert "4 runs: 2 finished, 2 to run." in out
    assert "run 4/4 kvit_t4 seed 3408: starting" in out
    assert reproduce.main([*argv, "--seeds", "2"]) == 0
    assert len(fake.calls) == 4
    assert reproduce.main([*argv, "--seeds", "3", "--rows", "kvit_t4"]) == 0
    assert [w.parent.name for w in fake.calls[4:]] == ["kvit_t4"]
    with pytest.raises(SystemExit):
        reproduce.main([*argv, "--rows", "kvit_t5"])
    assert (
        "table tiny has no rows ['kvit_t5']; its rows: vit_t4, kvit_t4" in capsys.readouterr().err
    )
    row = json.loads((tmp_path / "results" / "tiny.json").read_text())["rows"][0]
    assert row["n"] == 2


def test_config_mismatch_is_an_error_naming_the_fields(tiny, monkeypatch, tmp_path):
    _, fake, argv = tiny
    assert reproduce.main([*argv, "--seeds", "1"]) == 0
    results = tmp_path / "runs" / "tiny" / "vit_t4" / "seed_3407" / "results.json"
    config = results.with_name("config.json")
    before = (results.read_text(), config.read_text())
    changed = tiny_table(overrides=(*TINY, ("lr", 0.01)))
    monkeypatch.setitem(reproduce.TABLES, "tiny", changed)
    with pytest.raises(reproduce.ConfigMismatchError, match=r"lr: saved 0\.0003, now 0\.01") as e:
        reproduce.main([*argv, "--seeds", "1"])
    assert "vit_t4/seed_3407 (finished)" in str(e.value)
    with pytest.raises(reproduce.ConfigMismatchError):
        reproduce.main([*argv, "--seeds", "1", "--collect-only"])
    assert (results.read_text(), config.read_text()) == before
    assert len(fake.calls) == 2


def test_reduced_scale_applies_the_documented_overrides(tiny, tmp_path):
    _, fake, argv = tiny
    argv = [a if a != "paper" else "reduced" for a in argv]
    assert reproduce.main([*argv, "--seeds", "1"]) == 0
    saved = json.loads((fake.calls[0] / "config.json").read_text())
    assert saved["model"]["width"] == 16
    collected = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert collected["scale"] == "reduced" and collected["scale_note"] == "width 16"
    assert "--config.model.width=16" in collected["rows"][0]["runs"][0]["command"]


def test_collect_only_without_runs_writes_nothing(tiny, tmp_path, capsys):
    _, fake, argv = tiny
    assert reproduce.main([*argv, "--collect-only"]) == 1
    assert "No finished runs of table tiny" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not fake.calls


def test_unknown_table_lists_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["cifar11"])
    err = capsys.readouterr().err
    assert "unknown table or analysis 'cifar11'" in err
    for name in [*reproduce.TABLES, *reproduce.ANALYSES]:
        assert name in err


def test_list_names_every_table_and_analysis(capsys):
    assert reproduce.main(["--list"]) == 0
    out = capsys.readouterr().out
    expected = ["cifar10", "cifar100", "imagenet", "fashion_mnist", "swin", "cifar_ablation"]
    expected += ["pixel_mnist", "pixel_cifar10"]
    assert list(reproduce.TABLES) == expected
    for name in [*expected, "attention_maps", "synchronisation", "sinks", "sigma", "particles"]:
        assert f"  {name} " in out
    # every table row's paper number exists where the paper reports the row
    for table in reproduce.TABLES.values():
        for row in table.rows:
            if table.name != "fashion_mnist" or "+" not in row.name:
                assert (table.dataset, row.name) in paper.PAPER, (table.name, row.name)


def test_analysis_dispatch(monkeypatch, capsys):
    missing = reproduce.Analysis("no_such_analysis", "nothing", "nothing")
    monkeypatch.setitem(reproduce.ANALYSES, "no_such_analysis", missing)
    assert reproduce.main(["no_such_analysis"]) == 2
    assert "not available yet" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(
        reproduce.subprocess,
        "run",
        lambda cmd, check: calls.append(cmd) or type("R", (), {"returncode": 0}),
    )
    monkeypatch.setattr(reproduce.Analysis, "available", lambda self: True)
    assert reproduce.main(["sinks", "--out", "x"]) == 0
    assert calls[0][1:] == ["-m", "krause.analysis.sinks", "--out", "x"]


def test_readme_block_round_trip(tmp_path, rng):
    reported = paper.result("fashion_mnist", "vit_t4").value
    collected = {
        "table": "fashion_mnist",
        "title": "t",
        "scale": "reduced",
        "scale_note": "n",
        "metric": paper.ACC,
        "unit": "%",
        "digits": 2,
        "command": "python -m krause.reproduce fashion_mnist",
        "rows": [
            dict(row="vit_t4", label="ViT-T", n=2, mean=float(rng.uniform(80, 90)), std=0.5)
            | dict(paper=reported, params=10, paper_params=None)
        ],
    }
    (tmp_path / "fashion_mnist.json").write_text(json.dumps(collected))
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- reproduce:fashion_mnist -->\nold\n<!-- /reproduce:fashion_mnist -->\nend\n"
    )
    updated, missing = reproduce.update_readme(readme, tmp_path)
    assert (updated, missing) == (["fashion_mnist"], [])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nend\n") and "old" not in text
    assert reproduce.readme_blocks(text)["fashion_mnist"] == reproduce.readme_block(collected)
    mean = collected["rows"][0]["mean"]
    assert f"| ViT-T | {mean:.2f} ± 0.50 | 2 | {reported:.2f} |" in text


def test_readme_tables_agree_with_results():
    """Every README block `<!-- reproduce:TABLE -->` equals the one generated from
    results/TABLE.json (`python -m krause.reproduce --update-readme`)."""
    blocks = reproduce.readme_blocks((ROOT / "README.md").read_text())
    if not blocks:
        pytest.skip("README.md has no generated result tables yet")
    for name, block in blocks.items():
        file = ROOT / "results" / f"{name}.json"
        assert file.is_file(), f"README has a block for {name} but {file} does not exist"
        assert block == reproduce.readme_block(json.loads(file.read_text())), (
            f"README block of {name} is stale: run python -m krause.reproduce --update-readme"
        )


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache in a temporary directory (a resumed run compiles the
    same programs as the first: ~2.5x less CPU time), restored afterwards."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    for name, value in old.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def test_interrupted_run_resumes_to_the_uninterrupted_numbers(
    monkeypatch, tmp_path, capsys, compile_cache
):
    """Real training (3 steps, a checkpoint each): the run is finished, then put back to the
    state a kill after step 2's checkpoint leaves (no results.json, no step-3 checkpoint);
    the same command resumes from step 2 and gives exactly the numbers of the full run."""
    monkeypatch.setitem(reproduce.TABLES, "tiny", tiny_table(rows=("kvit_t4",)))
    argv = ["tiny", "--scale", "paper", "--seeds", "1", "--workdir_root", str(tmp_path / "runs")]
    argv += ["--results_dir", str(tmp_path / "results")]
    assert reproduce.main(argv) == 0
    workdir = tmp_path / "runs" / "tiny" / "kvit_t4" / "seed_3407"
    full = json.loads((workdir / "results.json").read_text())
    assert reproduce.checkpoint_steps(workdir) == [1, 2, 3]

    (workdir / "results.json").unlink()
    shutil.rmtree(workdir / "checkpoints" / "3")
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    assert "run 1/1 kvit_t4 seed 3407: resuming from step 2" in capsys.readouterr().out
    resumed = json.loads((workdir / "results.json").read_text())
    keys = [k for k in full if k.startswith("test/")] + ["step", "train/loss", "num_params"]
    assert {k: resumed[k] for k in keys} == {k: full[k] for k in keys}
    collected = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert collected["rows"][0]["mean"] == 100 * full["test/accuracy"]


@pytest.mark.parametrize("scale", reproduce.SCALES)
def test_every_table_builds_its_configs(scale, tmp_path):
    """Every run of every table gets a valid config at both scales (no unknown override field,
    warm-up within the run) and a workdir of its own; the reduced scale is smaller."""
    from krause.data import get_dataset_info
    from krause.train.config import resolve_steps

    for table in reproduce.TABLES.values():
        runs = table.runs(scale, 2, tmp_path)
        assert len({run.workdir for run in runs}) == len(runs) == 2 * len(table.rows)
        configs = reproduce.check_saved_configs(runs[:2])  # one row, two seeds
        assert [c.seed for c in configs] == [configs[0].seed, configs[0].seed + 1]
        config = configs[0]
        steps_per_epoch = get_dataset_info(config.input.dataset).num_train / (
            config.input.global_batch_size
        )
        total = resolve_steps(config, "total", steps_per_epoch=steps_per_epoch)
        warmup = resolve_steps(config, "warmup", steps_per_epoch=steps_per_epoch, total_steps=total)
        assert total > 0 and (warmup or 0) < total, table.name
        if scale == "reduced":
            paper_run = table.runs("paper", 1, tmp_path)[0].build_config()
            paper_total = resolve_steps(
                paper_run,
                "total",
                steps_per_epoch=get_dataset_info(paper_run.input.dataset).num_train
                / paper_run.input.global_batch_size,
            )
            assert total < paper_total, table.name


def test_row_labels():
    kvit = paper.result("fashion_mnist", "kvit_t4").label
    assert reproduce.row_label("fashion_mnist", "kvit_t4") == kvit
    assert reproduce.row_label("fashion_mnist", "kvit_t4+no_locality+no_top_k") == (
        f"{kvit} (no_locality, no_top_k)"
    )
    assert reproduce.row_label("fashion_mnist", "mystery") == "mystery"


def test_reduced_args_replace_the_rows_keys():
    """The reduced pixel table trains on Fashion-MNIST: its spec names the dataset once, and the
    config it builds (krause.train.config, independent of the merge) reads Fashion-MNIST."""
    from krause.train.config import load_config

    runs = reproduce.TABLES["pixel_mnist"].runs("reduced", 1, pathlib.Path("w"))
    for run in runs:
        args = run.config.partition(":")[2].split(",")
        assert [a for a in args if a.startswith("dataset=")] == ["dataset=fashion_mnist"], args
    karm = next(r for r in runs if r.name == "karm+no_top_k+no_window")
    config = load_config(karm.config)
    assert config.input.dataset == "fashion_mnist"
    assert config.model.attention == "krause" and config.model.top_k is None
    assert (
        reproduce.TABLES["pixel_mnist"]
        .runs("paper", 1, pathlib.Path("w"))[0]
        .config.endswith(":dataset=mnist,attention=softmax")
    )

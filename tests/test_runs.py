"""Runs read back: the saved config round-trips, `load_run` rebuilds the trained model and its
parameters, `krause.evaluate` reproduces results.json exactly, `krause.sample` draws samples and
completions; a corrupted latest checkpoint is set aside and the run resumes from the previous
one; a diverging run stops at the step that diverged, keeping its last good checkpoint.

Tiny runs on `tfds.testing.mock_data`, specified in mock_runs.py.
"""

from __future__ import annotations

import glob
import logging
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from mock_runs import CLASSIFICATION, NUM_EXAMPLES, REPO, build_config, restore_params, run
from PIL import Image

from krause import data as kdata
from krause import evaluate, runs, sample
from krause.metrics import read_metrics
from krause.train import config as tc
from krause.train import tasks
from krause.train.trainer import DivergenceError, build_model

ConfigDict = ml_collections.ConfigDict


pytestmark = pytest.mark.usefixtures("compilation_cache")


# ------------------------------------------------------------------------------ saved config


def _leaves(config: ConfigDict, prefix: str = "") -> dict[str, tuple]:
    """{path: (type of the value, value, declared field type)} of every leaf."""
    out = {}
    for key in config:
        value = config[key]
        if isinstance(value, ConfigDict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = (type(value), repr(value), config.get_type(key))
    return out


CONFIG_FILES = sorted(pathlib.Path(p).name for p in glob.glob(str(REPO / "configs/*.py")))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_saved_config_round_trips_for_every_config_family(name):
    config = tc.load_config(f"{REPO / 'configs' / name}:smoke")
    again = tc.config_from_typed_json(tc.config_to_typed_json(config))
    assert _leaves(again) == _leaves(config)
    # Placeholders keep their types: a wrong type is rejected, None and the right type are not.
    for path, (value_type, _, field_type) in _leaves(config).items():
        if value_type is type(None) and field_type in (int, float):
            *parents, key = path.split(".")
            node = again
            for parent in parents:
                node = node[parent]
            with pytest.raises(TypeError):
                node[key] = "text"
            node[key] = field_type(3)


def test_saved_config_keeps_tuples_lists_placeholders_and_special_floats():
    config = ConfigDict()
    config.pairs = ((1, 2.5), ("a", True))
    config.sizes = [1, (2, 3), None]
    config.steps = ml_collections.config_dict.placeholder(int)
    config.name = ml_collections.config_dict.placeholder(str)
    config.untyped = None
    config.nested = ConfigDict({"x": float("inf"), "y": {"z": -0.0}})
    again = tc.config_from_typed_json(tc.config_to_typed_json(config))
    assert _leaves(again) == _leaves(config)
    assert again.pairs == ((1, 2.5), ("a", True)) and isinstance(again.pairs[0], tuple)
    assert again.sizes == [1, (2, 3), None] and isinstance(again.sizes, list)
    assert again.get_type("steps") is int and again.get_type("name") is str
    assert math.copysign(1, again.nested.y.z) == -1 and again.nested.x == math.inf


# ------------------------------------------------------------------------------ load_run


def test_load_run_rebuilds_the_trained_model_and_parameters(classification_run):
    workdir, _ = classification_run
    config, model, params = runs.load_run(workdir)
    original = build_config(*CLASSIFICATION)
    assert _leaves(config) == _leaves(original)
    info = kdata.get_dataset_info(original.input.dataset)
    assert model == build_model(original, info, tasks.task_of(original.input))
    for step in (4, 2):  # latest by default
        expected = restore_params(workdir, step)  # orbax's own restore of the whole state
        got = params if step == 4 else runs.load_run(workdir, step=step)[2]
        assert jax.tree.structure(got) == jax.tree.structure(expected)
        jax.tree.map(np.testing.assert_array_equal, got, expected)
    images = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    logits = model.apply({"params": params}, images, train=False)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_load_run_errors_name_what_is_missing(classification_run, tmp_path):
    workdir, _ = classification_run
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no run"):
        runs.load_run(tmp_path)
    with pytest.raises(ValueError, match=r"No checkpoint of step 3 .*available steps: 2, 4\."):
        runs.load_run(workdir, step=3)


# ------------------------------------------------------------------------------ evaluate


def test_evaluate_reproduces_the_runs_numbers_exactly(classification_run):
    workdir, results = classification_run
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        final = evaluate.evaluate_run(workdir)
        at_2 = evaluate.evaluate_run(workdir, step=2)
    assert final["step"] == 4
    for name in ("test/accuracy", "test/loss", "test/images"):
        assert final[name] == results[name]  # exactly
    logged = next(r for r in read_metrics(workdir) if r["step"] == 2 and "test/loss" in r)
    assert at_2["test/loss"] == logged["test/loss"] and at_2["test/loss"] != final["test/loss"]


# ------------------------------------------------------------------------------ sample


def test_sample_draws_samples_and_completions_of_the_top_half(pixel_run, tmp_path):
    workdir, _ = pixel_run
    out = tmp_path / "grid.png"
    with tfds.testing.mock_data(num_examples=12):
        result = sample.sample_run(workdir, out, num=3, complete=2, samples_per_image=2, seed=1)
        config = runs.load_config(workdir)
        source = kdata.data_source(config.input, "test")
        originals = np.stack([np.asarray(source[i]["image"]).reshape(-1) for i in range(2)])
    samples, completions = result["samples"], result["completions"]
    assert samples.shape == (3, 784) and samples.min() >= 0 and samples.max() < 256
    assert completions.shape == (2, 3, 784)
    np.testing.assert_array_equal(completions[:, 0], originals)  # the first column: the image
    np.testing.assert_array_equal(
        completions[:, 1:, :392], np.repeat(originals[:, None, :392], 2, 1)
    )
    assert not np.array_equal(completions[:, 1, 392:], completions[:, 2, 392:])  # sampled
    # The PNG holds the samples: 2 x 2 tiles of 28 x 28 with 2 pixels of padding.
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 30 + 2, 2 * 30 + 2)
    np.testing.assert_array_equal(grid[2:30, 32:60], samples[1].reshape(28, 28))
    assert (tmp_path / "grid_completions.png").exists()
    assert set(result["images_per_sec"]) == {"samples", "completions"}


def test_sample_refuses_a_classifier(classification_run, tmp_path):
    workdir, _ = classification_run
    with pytest.raises(ValueError, match="sampling needs a pixel model"):
        sample.sample_run(workdir, tmp_path / "x.png", num=1)


# ------------------------------------------------------------------------------ bad checkpoints


# orbax's failed restore leaves an asyncio callback behind that Python reports when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreadable_latest_checkpoint_is_set_aside_and_the_run_resumes(
    classification_run, tmp_path, caplog
):
    reference, results = classification_run
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    (workdir / "results.json").unlink()
    data_files = [p for p in (workdir / "checkpoints/4").rglob("*") if p.is_file()]
    data_files = [p for p in data_files if "/d/" in str(p)]
    assert data_files
    for path in data_files:  # as if half copied
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        again = run(CLASSIFICATION, workdir)
    assert f"{workdir}/checkpoints/4 is unreadable" in caplog.text
    assert (workdir / "checkpoints_corrupt/4").is_dir()
    jax.tree.map(
        np.testing.assert_array_equal, restore_params(workdir, 4), restore_params(reference, 4)
    )
    for name in ("test/accuracy", "test/loss"):
        assert again[name] == results[name]


def test_diverging_run_stops_at_that_step_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    make_train_iterator = kdata.make_train_iterator

    def poisoned(*args, **kwargs):  # step 3's images are NaN
        for index, batch in enumerate(make_train_iterator(*args, **kwargs)):
            yield {**batch, "image": batch["image"] * np.nan} if index == 2 else batch

    monkeypatch.setattr(kdata, "make_train_iterator", poisoned)
    with pytest.raises(DivergenceError, match=r"diverged at step 3: loss nan.*last good .* step 2"):
        run(CLASSIFICATION, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    # Parameter and update norms are logged beside the gradient norm.
    logged = {r["step"]: r for r in read_metrics(tmp_path) if "train/loss" in r}
    assert sorted(logged) == [1, 2, 3] and math.isnan(logged[3]["train/loss"])
    params = restore_params(tmp_path, 2)
    norm = math.sqrt(sum(np.sum(np.asarray(p, np.float64) ** 2) for p in jax.tree.leaves(params)))
    assert logged[2]["train/param_norm"] == pytest.approx(norm, rel=1e-5)
    assert logged[1]["train/update_norm"] == 0.0  # the learning rate of step 1 is 0 (warm-up)
    assert logged[2]["train/update_norm"] > 0

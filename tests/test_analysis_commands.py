"""The analysis commands over trained runs (synchronisation, sinks, sigma, attention maps).

Two tiny runs (ViT-T/4 and KViT-T/4 smoke, 2 steps on `tfds.testing.mock_data`) are trained
once; each command's main() runs on them and its JSON is checked against references computed
here: NumPy loops over the captured tokens and weights (the Krause weights expanded from their
compact form by a loop), a union-find for the clusters, exp(log_sigma) of the restored
checkpoint for sigma. Bad input (a workdir without a run, a label without runs, a pixel model
for attention maps, runs of different datasets or sizes) is a clear error.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from krause.analysis import attention_maps, command, sigma, sinks, synchronisation
from krause.attention import KrauseWeights
from krause.train import train_and_evaluate
from krause.train.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 8  # mock train and test split size
NUM_IMAGES = 3  # test images analysed (the commands' chunks of 2: one of 2, one of 1)
MODELS = {"softmax": "vit_t4", "krause": "kvit_t4"}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """{label: workdir} of two finished tiny runs (2 steps, sigma logged every step)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for label, model in MODELS.items():
        config = load_config(f"{REPO / 'configs/fashion_mnist_vit.py'}:model={model},smoke")
        config.total_steps = 2
        config.log_every_steps = 1
        with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
            train_and_evaluate(config, root / label)
        out[label] = root / label
    return out


def run_command(module, argv):
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        return module.main([str(a) for a in argv])


def runs_flags(workdirs, labels=("softmax", "krause")):
    return [x for label in labels for x in ("--runs", f"{label}={workdirs[label]}")]


@functools.cache
def captured(workdir, num_images=NUM_IMAGES):
    """(tokens per layer [B, N, D] list, dense weights per block [B, H, N, N] list) by hand."""
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        run = command.load_runs({"x": [workdir]})["x"][0]
        images = command.test_inputs(run.config, num_images)
    _, state = run.model.clone(capture=True).apply(
        {"params": run.params}, images, mutable=["intermediates"], train=False
    )
    inter = state["intermediates"]
    blocks = sorted(k for k in inter if k.startswith("block_"))
    tokens = [np.asarray(inter["embedding"][0])] + [
        np.asarray(inter[b]["hidden"][0]) for b in blocks
    ]
    weights = [dense_by_loop(inter[b]["attention"]["attention_weights"][0]) for b in blocks]
    return tokens, weights


def dense_by_loop(weights) -> np.ndarray:
    """Dense [B, H, N, N] float64; compact Krause weights expanded by a loop over the slots."""
    if not isinstance(weights, KrauseWeights):
        return np.asarray(weights, np.float64)
    local = np.asarray(weights.local_values, np.float64)  # [B, N, H, W]
    indices = np.asarray(weights.indices)
    b, n, h, w = local.shape
    dense = np.zeros((b, h, n, n))
    for i in range(n):
        for s in range(w):
            if indices[i, s] >= 0:
                dense[:, :, i, indices[i, s]] += local[:, i, :, s]
    g = weights.global_values.shape[1]
    dense[:, :, :g, :] = np.moveaxis(np.asarray(weights.global_values, np.float64), 2, 1)
    return dense


def clusters_union_find(x: np.ndarray, threshold: float) -> int:
    parent = list(range(len(x)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    for i, j in zip(*np.nonzero(1 - unit @ unit.T <= threshold), strict=True):
        parent[root(i)] = root(j)
    return len({root(i) for i in range(len(x))})


def test_synchronisation_matches_loops_and_union_find(workdirs, tmp_path):
    # 3 images in chunks of 2: the chunks' means must combine to the mean over all images.
    # A label given the same run twice: two "seeds" with equal values, std 0.
    w = workdirs
    argv = ["--runs", f"softmax={w['softmax']},{w['softmax']}", "--runs", f"krause={w['krause']}"]
    argv += ["--out", tmp_path, "--num_images", NUM_IMAGES, "--batch_size", 2, "--threshold", 0.3]
    run_command(synchronisation, argv)
    saved = json.loads((tmp_path / "synchronisation.json").read_text())
    assert (tmp_path / "synchronisation.png").stat().st_size > 1000
    for label in MODELS:
        tokens, _ = captured(workdirs[label])
        model = saved["models"][label]
        assert model["layers"] == ["embedding", "block_00", "block_01"]
        for layer, x in enumerate(tokens):
            x = x.astype(np.float64)
            unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
            n = x.shape[1]
            off_diagonal = ~np.eye(n, dtype=bool)
            cos = [(unit[b] @ unit[b].T)[off_diagonal].mean() for b in range(len(x))]
            ranks = []
            for b in range(len(x)):
                s = np.linalg.svd(x[b], compute_uv=False)
                p = s / s.sum()
                ranks.append(np.exp(-np.sum(p * np.log(p))))
            clusters = [clusters_union_find(x[b], 0.3) for b in range(len(x))]
            for seed in model["seeds"]:
                np.testing.assert_allclose(seed["mean_cosine"][layer], np.mean(cos), rtol=1e-4)
                np.testing.assert_allclose(seed["effective_rank"][layer], np.mean(ranks), rtol=1e-4)
                assert seed["clusters"][layer] == pytest.approx(np.mean(clusters))
            assert model["summary"]["mean_cosine"]["mean"][layer] == pytest.approx(
                np.mean(cos), rel=1e-4
            )
    # The union-find check is not vacuous: some layer has neither 1 nor N clusters.
    assert any(1 < c < 50 for c in saved["models"]["krause"]["seeds"][0]["clusters"])
    assert saved["models"]["softmax"]["summary"]["effective_rank"]["std"] == [0.0] * 3
    assert saved["runs"]["softmax"]["workdirs"] == [str(w["softmax"])] * 2


def test_sinks_match_a_loop_over_the_weights(workdirs, tmp_path):
    run_command(sinks, [*runs_flags(workdirs), "--out", tmp_path, "--num_images", NUM_IMAGES])
    saved = json.loads((tmp_path / "sinks.json").read_text())
    assert (tmp_path / "sinks.png").stat().st_size > 1000
    assert saved["models"]["softmax"]["summary"]["uniform_mass_mean"]["mean"] == pytest.approx(
        [0.02, 0.02], rel=1e-6
    )
    for label in MODELS:
        _, weights = captured(workdirs[label])
        model = saved["models"][label]
        assert model["blocks"] == ["block_00", "block_01"]
        for block, dense in enumerate(weights):
            b, h, n, _ = dense.shape
            per_head = [
                np.mean([dense[i, head, q, 0] for i in range(b) for q in range(1, n)])
                for head in range(h)
            ]
            got = model["seeds"][0]["first_token_mass_per_head"][block]
            np.testing.assert_allclose(got, per_head, rtol=1e-5)
            # Attention spread evenly over each query's keys with weight > 0.
            uniform = [
                np.mean(
                    [
                        (dense[i, head, q, 0] > 0) / np.count_nonzero(dense[i, head, q])
                        for i in range(b)
                        for q in range(1, n)
                    ]
                )
                for head in range(h)
            ]
            got = model["seeds"][0]["uniform_mass_per_head"][block]
            np.testing.assert_allclose(got, uniform, rtol=1e-6)
            mean = model["summary"]["first_token_mass_mean"]["mean"][block]
            assert mean == pytest.approx(np.mean(per_head), rel=1e-5)


def test_sigma_is_exp_of_the_checkpoint_log_sigma(workdirs, tmp_path):
    run_command(sigma, [*runs_flags(workdirs), "--out", tmp_path])
    saved = json.loads((tmp_path / "sigma.json").read_text())
    assert (tmp_path / "sigma_krause.png").stat().st_size > 1000
    assert "softmax" in saved["skipped"] and "softmax" not in saved["models"]
    with ocp.CheckpointManager(workdirs["krause"] / "checkpoints") as manager:
        params = manager.restore(2, args=ocp.args.StandardRestore())["params"]
    expected = {
        f"{block}/attention": float(np.exp(np.asarray(params[block]["attention"]["log_sigma"])))
        for block in ("block_00", "block_01")
    }
    layers = saved["models"]["krause"]["layers"]
    assert set(layers) == set(expected)
    for name, value in expected.items():
        assert layers[name]["steps"] == [1, 2]
        assert layers[name]["seeds"][0][-1] == pytest.approx(value, rel=1e-6)
        assert saved["models"]["krause"]["checkpoint"][0][name] == pytest.approx(value, rel=1e-6)
    # Step 1's sigma differs from the initial 2.5 only by one optimizer update.
    assert layers["block_00/attention"]["seeds"][0][0] == pytest.approx(2.5, rel=0.05)


def test_attention_maps_are_rows_of_the_weights(workdirs, tmp_path):
    argv = [*runs_flags(workdirs), "--out", tmp_path, "--num_images", NUM_IMAGES, "--layers", "0,1"]
    run_command(attention_maps, [*argv, "--query_patch", 9])
    saved = json.loads((tmp_path / "attention_maps.json").read_text())
    assert saved["grid"] == [7, 7] and saved["query_row_col"] == [1, 2]
    for image in range(NUM_IMAGES):
        assert (tmp_path / f"attention_maps_image{image}.png").stat().st_size > 1000
    for label in MODELS:
        _, weights = captured(workdirs[label])
        for image in range(NUM_IMAGES):
            for layer in (0, 1):
                maps = saved["maps"][label]["images"][image][f"layer_{layer}"]
                dense = weights[layer][image]  # [H, 50, 50]
                for head in range(dense.shape[0]):
                    ref = [[dense[head, 1 + 9, 1 + r * 7 + c] for c in range(7)] for r in range(7)]
                    np.testing.assert_allclose(maps["query"][head], ref, atol=1e-5)
                    cls = [[dense[head, 0, 1 + r * 7 + c] for c in range(7)] for r in range(7)]
                    np.testing.assert_allclose(maps["cls"][head], cls, atol=1e-5)
    # Krause: a patch's keys are its von Neumann neighbours and the CLS token only.
    krause_map = np.asarray(saved["maps"]["krause"]["images"][0]["layer_0"]["query"])
    rows, cols = np.nonzero(krause_map.sum(0) > 0)
    assert all(abs(r - 1) + abs(c - 2) <= 1 for r, c in zip(rows, cols, strict=True))


def test_bad_input_is_a_clear_error(workdirs, tmp_path):
    with pytest.raises(ValueError, match=r"cannot read the run in .*empty.*holds no run"):
        (tmp_path / "empty").mkdir()
        run_command(sinks, ["--runs", f"a={tmp_path / 'empty'}", "--out", tmp_path])
    with pytest.raises(ValueError, match="label 'a' has no runs"):
        run_command(sinks, ["--runs", "a=", "--out", tmp_path])
    with pytest.raises(ValueError, match="expected LABEL=WORKDIR"):
        run_command(sinks, ["--runs", str(workdirs["softmax"]), "--out", tmp_path])
    with pytest.raises(ValueError, match="given twice"):
        run_command(sinks, [*runs_flags(workdirs, ("softmax", "softmax")), "--out", tmp_path])
    with pytest.raises(ValueError, match="--num_images must be >= 1"):
        run_command(sinks, [*runs_flags(workdirs), "--out", tmp_path, "--num_images", 0])
    with pytest.raises(ValueError, match="no run logs sigma"):
        run_command(sigma, [*runs_flags(workdirs, ("softmax",)), "--out", tmp_path])
    with pytest.raises(ValueError, match="--layers '5'"):
        run_command(attention_maps, [*runs_flags(workdirs), "--out", tmp_path, "--layers", "5"])


def _fake_run(workdir, dataset="fashion_mnist", model_name="vit_t4", **model):
    config = ml_collections.ConfigDict(
        {
            "model_name": model_name,
            "seed": 0,
            "input": {"dataset": dataset, "output": "image", "image_size": None},
            "model": {"depth": 2, "width": 32, **model},
        }
    )
    return command.Run(pathlib.Path(workdir), config, None, None)


def test_incomparable_runs_are_clear_errors():
    a = _fake_run("a")
    command.check_comparable({"x": [a, _fake_run("a2")], "y": [_fake_run("b")]})
    with pytest.raises(ValueError, match=r"do not share one dataset.*b: dataset cifar10"):
        command.check_comparable({"x": [a], "y": [_fake_run("b", dataset="cifar10")]})
    with pytest.raises(ValueError, match=r"x: a and c are different models .*fields width"):
        command.check_comparable({"x": [a, _fake_run("c", width=64)]})
    with pytest.raises(ValueError, match="differ in depth"):
        command.check_comparable({"x": [a], "y": [_fake_run("d", depth=4)]})
    command.check_comparable({"x": [a], "y": [_fake_run("d", depth=4)]}, same_size=False)


def test_attention_maps_refuse_pixel_models(monkeypatch, tmp_path):
    pixel = _fake_run("p", model_name="pixel_ar_krause")
    pixel = command.Run(pixel.workdir, pixel.config, object(), None)
    monkeypatch.setattr(command, "load_runs", lambda runs: {"k": [pixel]})
    with pytest.raises(ValueError, match=r"pixel_ar_krause run; attention maps .* need a ViT"):
        attention_maps.main(["--runs", "k=p", "--out", str(tmp_path)])


@pytest.mark.slow  # ~20 s: a pixel-model run (784 tokens)
def test_pixel_model_sinks_and_synchronisation(tmp_path):
    config = load_config(
        f"{REPO / 'configs/pixel_ar.py'}:dataset=fashion_mnist,attention=krause,smoke"
    )
    config.total_steps = 1
    with tfds.testing.mock_data(num_examples=4):
        train_and_evaluate(config, tmp_path / "run")
    flags = ["--runs", f"karm={tmp_path / 'run'}", "--out", tmp_path, "--num_images", 2]
    record = run_command(sinks, flags)
    run_command(synchronisation, flags)
    with tfds.testing.mock_data(num_examples=4):
        run = command.load_runs({"x": [tmp_path / "run"]})["x"][0]
        tokens = command.test_inputs(run.config, 2)
    assert tokens.shape == (2, 784)
    _, state = run.model.clone(capture=True).apply(
        {"params": run.params}, tokens, mutable=["intermediates"], train=False
    )
    flat = jax.tree_util.tree_flatten_with_path(
        state["intermediates"], is_leaf=lambda x: isinstance(x, KrauseWeights)
    )[0]
    weights = [v for p, v in flat if "attention_weights" in jax.tree_util.keystr(p)]
    dense = dense_by_loop(weights[0])
    expected = dense[:, :, 1:, 0].mean(axis=(0, 2))
    got = record["models"]["karm"]["seeds"][0]["first_token_mass_per_head"][0]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert json.loads((tmp_path / "synchronisation.json").read_text())["models"]["karm"]["layers"]

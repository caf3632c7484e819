"""Trainer tests: real training steps end to end on mock data (both task families), exact resume,
data parallelism on 4 simulated devices, metrics (accuracy, bits per dimension), the optimizer,
the CLI, and clear errors for bad input (the sweep's tests: test_sweep.py).

The data comes from `tfds.testing.mock_data` (random images and labels, deterministic per index),
so no dataset needs to be prepared. Runs share one module-scoped reference run to save compiles,
and a persistent compilation cache lets the resumed run reuse its executables.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from mock_runs import CLASSIFICATION, NUM_EXAMPLES, PIXELS, REPO, build_config, restore_params, run

from krause import data as kdata
from krause import main as krause_main
from krause.metrics import read_metrics
from krause.models import get_model
from krause.train import config as tc
from krause.train import optim, tasks, train_and_evaluate
from krause.train.trainer import InMemorySource, sigma_metrics

pytestmark = pytest.mark.usefixtures("compilation_cache")


# ------------------------------------------------------------------------------ end to end


def test_classification_end_to_end(classification_run):
    workdir, results = classification_run
    # Final-step numbers over the whole (mock) test split, padding masked out.
    assert results["step"] == 4
    assert results["test/images"] == NUM_EXAMPLES
    assert 0.0 <= results["test/accuracy"] <= 1.0
    assert math.isfinite(results["test/loss"]) and results["test/loss"] > 0
    assert results["num_params"] > 0
    assert json.loads((workdir / "results.json").read_text())["test/loss"] == results["test/loss"]
    # The resolved config is saved and complete.
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["total_steps"] == 4 and saved["model"]["depth"] == 2
    assert saved["input"]["dataset"] == "fashion_mnist"
    # Checkpoints every 2 steps.
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4]
    # Metrics: training (every step), one sigma per layer, evaluations at steps 2 and 4.
    records = read_metrics(workdir)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["train/loss"]) for r in train)
    assert train[0]["train/lr"] == 0.0 and train[1]["train/lr"] == pytest.approx(3e-4)
    assert {k for k in train[-1] if k.startswith("sigma/")} == {
        "sigma/block_00/attention",
        "sigma/block_01/attention",
    }
    assert train[0]["sigma/block_00/attention"] == pytest.approx(2.5)  # sigma0, before updates
    assert [r["step"] for r in records if "test/accuracy" in r] == [2, 4]
    # TensorBoard, read by TensorBoard's own reader: every scalar of metrics.jsonl (float32).
    scalars = read_event_scalars(workdir)
    logged = {(r["step"], k): v for r in records for k, v in r.items() if k != "step"}
    assert logged.keys() <= scalars.keys()
    assert all(scalars[key] == np.float32(value) for key, value in logged.items())
    assert scalars[(4, "test/accuracy")] == np.float32(results["test/accuracy"])


def test_pixel_model_end_to_end(pixel_run):
    workdir, results = pixel_run
    assert results["test/images"] == 12
    # The pipeline yields 784 tokens per MNIST image; bpd = nats per sub-pixel / ln 2.
    assert results["test/bpd"] == pytest.approx(results["test/nll"] / math.log(2))
    assert 0 < results["test/bpd"] < 9  # random-init model: about log2(256) = 8
    train = [r for r in read_metrics(workdir) if "train/loss" in r]
    assert train[-1]["train/bpd"] == pytest.approx(train[-1]["train/loss"] / math.log(2))
    # KARM: one sigma per head per layer.
    assert {k for k in train[-1] if k.startswith("sigma/")} == {
        f"sigma/blocks_0/attn/head_{h}" for h in range(2)
    }


def test_gradient_accumulation_matches_whole_batches(pixel_run, tmp_path):
    workdir, _ = pixel_run
    path, arg, overrides = PIXELS
    run((path, arg, {**overrides, "grad_accum_steps": 1}), tmp_path, num_examples=12)
    losses = [
        {r["step"]: r["train/loss"] for r in read_metrics(w) if "train/loss" in r}
        for w in (workdir, tmp_path)
    ]
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-6)  # mean of the micro-batch means
    assert losses[0][2] == pytest.approx(losses[1][2], rel=1e-5)
    accumulated, whole = restore_params(workdir, 2), restore_params(tmp_path, 2)
    # Adam divides by sqrt(v): float rounding of a near-zero gradient moves a weight by at most
    # a small fraction of one update (lr 1e-3), hence atol 1e-5.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), accumulated, whole
    )


def test_resume_reproduces_the_uninterrupted_run(classification_run, tmp_path, monkeypatch):
    reference, _ = classification_run
    workdir = tmp_path / "resumed"
    shutil.copytree(reference, workdir)
    # As if the run had stopped after step 2 (its last checkpoint) and been restarted, with a
    # relative --workdir as people type it (orbax itself needs absolute paths).
    shutil.rmtree(workdir / "checkpoints" / "4")
    (workdir / "results.json").unlink()
    monkeypatch.chdir(tmp_path)
    results = run(CLASSIFICATION, "resumed")
    assert results["step"] == 4
    expected, actual = restore_params(reference, 4), restore_params(workdir, 4)
    jax.tree.map(np.testing.assert_array_equal, actual, expected)
    # metrics.jsonl holds one consistent run: steps after the checkpoint were rewritten.
    losses = {r["step"]: r["train/loss"] for r in read_metrics(reference) if "train/loss" in r}
    resumed = [(r["step"], r["train/loss"]) for r in read_metrics(workdir) if "train/loss" in r]
    assert resumed == sorted(losses.items())


def test_resuming_a_finished_run_reports_the_same_numbers(classification_run, tmp_path):
    reference, results = classification_run
    workdir = tmp_path / "finished"
    shutil.copytree(reference, workdir)
    again = run(CLASSIFICATION, workdir)
    for key in ("test/accuracy", "test/loss", "train/loss"):
        assert again[key] == pytest.approx(results[key], rel=1e-6)


def test_data_parallel_loss_equals_single_device(classification_run, tmp_path):
    reference, results = classification_run
    script = textwrap.dedent(
        f"""
        import json, sys
        import jax, tensorflow_datasets as tfds
        sys.path.insert(0, {str(REPO / "tests")!r})
        from mock_runs import CLASSIFICATION, run
        assert jax.device_count() == 4, jax.devices()
        print(json.dumps(run(CLASSIFICATION, {str(tmp_path / "dp")!r})))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parallel = json.loads(done.stdout.strip().splitlines()[-1])
    single = {r["step"]: r["train/loss"] for r in read_metrics(reference) if "train/loss" in r}
    split = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "dp") if "train/loss" in r}
    assert split.keys() == single.keys() == {1, 2, 3, 4}
    assert split[1] == pytest.approx(single[1], rel=1e-6)  # same parameters, same batch
    for step in (2, 3, 4):
        assert split[step] == pytest.approx(single[step], rel=1e-4)
    assert parallel["test/images"] == NUM_EXAMPLES
    assert parallel["test/loss"] == pytest.approx(results["test/loss"], rel=1e-4)


def test_in_memory_source_holds_the_same_examples():
    with tfds.testing.mock_data(num_examples=7):
        source = kdata.data_source(build_config(*CLASSIFICATION).input, "test")
        cached = InMemorySource(source, chunk=3)
        assert len(cached) == len(source) == 7
        for i in range(7):
            np.testing.assert_array_equal(cached[i]["image"], source[i]["image"])
            assert cached[i]["label"] == source[i]["label"]


# ------------------------------------------------------------------------------ metrics


def test_bits_per_dim_counts_every_sub_pixel_of_every_test_image():
    # Uniform logits over 256 values: exactly 8 bits per sub-pixel. A denominator of 783
    # positions, or dropping the first position from the numerator, would not give 8.
    tokens = jnp.zeros((3, 784), jnp.int32)
    logits = jnp.zeros((3, 784, 256))
    mask = jnp.array([True, True, False])  # the last row is eval padding
    eval_sums = jax.jit(functools.partial(tasks.eval_sums, "pixels"))
    sums = tasks.add_sums(None, eval_sums(logits, {"tokens": tokens, "mask": mask}))
    assert sums["images"] == 2
    assert tasks.eval_metrics("pixels", sums, dims_per_image=784)["test/bpd"] == pytest.approx(8.0)
    # Sums over batches: NLL of the first position only differs -> total / (2 * 784).
    first = logits.at[:, 0, 0].set(10.0)  # position 0 predicts token 0 with high probability
    sums2 = tasks.add_sums(None, eval_sums(first, {"tokens": tokens, "mask": mask}))
    nll0 = -jax.nn.log_softmax(first[0, 0])[0]
    expected = (2 * (783 * math.log(256) + nll0)) / (2 * 784) / math.log(2)
    got = tasks.eval_metrics("pixels", sums2, dims_per_image=784)["test/bpd"]
    assert got == pytest.approx(float(expected), rel=1e-6)


def test_accuracy_is_mask_weighted_over_batches():
    logits = jnp.eye(4)[jnp.array([0, 1, 2, 3])]
    batch = {"label": jnp.array([0, 1, 0, 0]), "mask": jnp.array([True, True, True, False])}
    eval_sums = jax.jit(functools.partial(tasks.eval_sums, "classification"))
    sums = tasks.add_sums(None, eval_sums(logits, batch))
    sums = tasks.add_sums(sums, eval_sums(logits, batch))
    metrics = tasks.eval_metrics("classification", sums, dims_per_image=1)
    assert metrics["test/images"] == 6 and metrics["test/accuracy"] == pytest.approx(4 / 6)


# ------------------------------------------------------------------------------ optimizer


def _decayed(params) -> set[str]:
    flat = jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]
    return {"/".join(k.key for k in path) for path, decays in flat if decays}


def _param_shapes(model, x):
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, train=False))


def test_weight_decay_mask_excludes_norms_biases_embeddings_and_sigma():
    model = get_model("kvit_t4", depth=1, width=16, heads=2, mlp_dim=32)
    params = _param_shapes(model, jnp.zeros((1, 32, 32, 3)))["params"]
    names = ["query", "key", "value", "out"]
    assert _decayed(params) == {  # not: biases, norm scales/offsets, log_sigma, cls, pos_embedding
        *(f"block_00/attention/{n}/kernel" for n in names),
        "block_00/mlp/fc1/kernel",
        "block_00/mlp/fc2/kernel",
        "patch_embed/proj/kernel",
        "head/kernel",
    }
    model = get_model("pixel_ar_mnist", attention="krause", depth=1, width=16, heads=2)
    params = _param_shapes(model, jnp.zeros((1, 784), jnp.int32))["params"]
    assert _decayed(params) == {  # not: biases, token/position embeddings, log_sigma
        *(f"blocks_0/attn/{n}/kernel" for n in names),
        "blocks_0/mlp/fc1/kernel",
        "blocks_0/mlp/fc2/kernel",
        "head/kernel",
    }


@pytest.mark.parametrize("decay_all", [False, True])
def test_weight_decay_applies_where_the_mask_says(decay_all):
    params = {
        "block_00": {
            "attention": {"log_sigma": jnp.log(2.5), "query": {"kernel": jnp.ones((4, 4))}}
        },
        "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)},
        "cls": jnp.ones((1, 1, 4)),
    }
    config = tc.base_config()
    config.update_from_flattened_dict({"decay_all": decay_all, "lr": 0.1, "wd": 0.5})
    tx = optim.make_optimizer(config, optax.constant_schedule(0.1))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates = jax.jit(tx.update)(zeros, tx.init(params), params)[0]  # pure weight decay
    decayed = {path[-1].key for path, u in _paths(updates) if np.any(u != 0)}
    expected = {"kernel"} if not decay_all else {"kernel", "log_sigma", "bias", "cls"}
    assert decayed == expected  # the paper's reference decays log_sigma too


def _paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_schedule_warmup_then_cosine_to_zero():
    schedule = optim.learning_rate_schedule(1e-3, total_steps=100, warmup_steps=10)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)


def test_gradient_accumulation_averages_micro_batches():
    params = {"w": jnp.arange(3.0)}
    config = tc.base_config()
    config.grad_clip_norm = 1.0
    whole = optim.make_optimizer(config, optax.constant_schedule(0.1))
    config.grad_accum_steps = 2
    accumulated = optim.make_optimizer(config, optax.constant_schedule(0.1))
    g1, g2 = {"w": jnp.array([1.0, 2.0, 3.0])}, {"w": jnp.array([3.0, -2.0, 0.5])}
    expected, _ = whole.update(
        jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), whole.init(params), params
    )
    state = accumulated.init(params)
    skipped, state = accumulated.update(g1, state, params)
    assert not np.any(skipped["w"])  # no update after the first micro-batch
    got, _ = accumulated.update(g2, state, params)
    np.testing.assert_allclose(got["w"], expected["w"], rtol=1e-6)


def test_durations_in_steps_epochs_or_fraction():
    config = tc.base_config()
    config.total_epochs = 300.0
    assert tc.resolve_steps(config, "total", steps_per_epoch=50_000 / 256) == 58_593
    config.total_steps = 10  # steps win over epochs (a command-line override)
    assert tc.resolve_steps(config, "total", steps_per_epoch=195.3) == 10
    config.warmup_fraction = 0.05
    assert tc.resolve_steps(config, "warmup", steps_per_epoch=1, total_steps=1000) == 50
    assert tc.resolve_steps(config, "eval_every", steps_per_epoch=1) is None


def test_sigma_metrics_per_layer_and_per_head():
    params = {"block_00": {"attention": {"log_sigma": jnp.log(2.5)}}, "x": {"kernel": jnp.ones(2)}}
    assert sigma_metrics(params) == {"sigma/block_00/attention": pytest.approx(2.5)}
    params = {"blocks_0": {"attn": {"log_sigma": jnp.log(jnp.array([1.0, 3.0]))}}}
    assert sigma_metrics(params) == {
        "sigma/blocks_0/attn/head_0": pytest.approx(1.0),
        "sigma/blocks_0/attn/head_1": pytest.approx(3.0),
    }


# ------------------------------------------------------------------------------ bad input


NAN = float("nan")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": -1.0}, "config.lr=-1.0 is not allowed: the peak learning rate must be > 0"),
        ({"lr": 0.0}, "config.lr=0.0 is not allowed"),
        ({"lr": NAN}, "config.lr=nan is not allowed"),
        ({"wd": -0.1}, "config.wd=-0.1 is not allowed: weight decay must be >= 0"),
        ({"adam.b1": 1.0}, r"config.adam.b1=1.0 is not allowed: it must be in \[0, 1\)"),
        ({"adam.b2": -0.5}, r"config.adam.b2=-0.5 is not allowed"),
        ({"adam.eps": 0.0}, "config.adam.eps=0.0 is not allowed"),
        ({"dtype": "float16"}, "config.dtype='float16' is not allowed: one of float32, bfloat16"),
        ({"grad_clip_norm": 0.0}, "config.grad_clip_norm=0.0 is not allowed: a norm > 0, or None"),
        ({"log_every_steps": 0}, "config.log_every_steps=0 is not allowed"),
        ({"keep_checkpoints": 0}, "config.keep_checkpoints=0 is not allowed"),
        ({"total_steps": 0}, "config.total_steps=0 is not allowed: the run's length must be > 0"),
        ({"total_steps": None, "total_epochs": -2.0}, "config.total_epochs=-2.0 is not allowed"),
        (
            {"total_steps": None, "total_epochs": None},
            "config.total_steps and config.total_epochs are both None",
        ),
        ({"warmup_steps": -1}, "config.warmup_steps=-1 is not allowed: warm-up must be >= 0"),
        ({"warmup_steps": 5}, "config.warmup_steps=5 is not allowed: .* total_steps=4"),
        ({"warmup_fraction": 1.5}, "config.warmup_fraction=1.5 is not allowed"),
        ({"eval_every_steps": 0}, "config.eval_every_steps=0 is not allowed: a period must be > 0"),
        ({"checkpoint_every_epochs": -1.0}, "config.checkpoint_every_epochs=-1.0 is not allowed"),
        ({"eval_every_fraction": 2.0}, "config.eval_every_fraction=2.0 is not allowed"),
        ({"grad_accum_steps": 0}, "config.grad_accum_steps=0 is not allowed"),
        ({"grad_accum_steps": 3}, "config.grad_accum_steps=3 is not allowed: .*_size=8 into"),
        ({"input.global_batch_size": 0}, "config.input.global_batch_size=0 is not allowed"),
        ({"input.eval_batch_size": -16}, "config.input.eval_batch_size=-16 is not allowed"),
    ],
)
def test_invalid_config_values_are_clear_errors(overrides, message):
    config = build_config(*CLASSIFICATION)
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        tc.validate_config(config)


@pytest.mark.parametrize(
    ("overrides", "kwargs", "message"),
    [  # batch 8, eval batch 16, 24 training examples
        ({}, {"num_devices": 3}, "global_batch_size=8 .* of 8 examples .* over the 3 devices"),
        ({"grad_accum_steps": 2}, {"num_devices": 8}, "micro-batch.* of 4 examples .* 8 devices"),
        ({"input.global_batch_size": 32}, {"num_devices": 32}, "eval_batch_size=16 .* 32 devices"),
        (
            {"total_steps": None, "total_epochs": 0.2},
            {"num_train": 24},
            "total_epochs=0.2 is not allowed: it is 0 steps",
        ),
        (
            {"warmup_steps": None, "warmup_epochs": 2.0},
            {"num_train": 24},
            "warm-up of 6 steps .* exceeds the 4 steps",
        ),
        ({"eval_every_steps": None, "eval_every_epochs": 0.1}, {"num_train": 24}, "0 steps"),
    ],
)
def test_config_values_checked_against_devices_and_dataset(overrides, kwargs, message):
    config = build_config(*CLASSIFICATION)
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        tc.validate_config(config, **kwargs)


def test_valid_configs_pass_validation():
    tc.validate_config(build_config(*CLASSIFICATION), num_devices=8, num_train=60_000)
    tc.validate_config(build_config(*PIXELS), num_devices=2, num_train=60_000)  # 2 x 2 examples
    config = build_config(*CLASSIFICATION)
    config.update_from_flattened_dict({"grad_clip_norm": None, "warmup_steps": 4, "wd": 0.0})
    tc.validate_config(config, num_devices=2, num_train=24)


def test_training_with_a_negative_learning_rate_fails_before_any_work(tmp_path):
    config = build_config(*CLASSIFICATION)
    config.lr = -1.0
    with pytest.raises(ValueError, match=r"config.lr=-1.0 is not allowed"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unknown_model_is_a_clear_error(tmp_path):
    config = build_config(*CLASSIFICATION)
    config.model_name = "vit_huge"
    with pytest.raises(ValueError, match=r"unknown model 'vit_huge'; known models: .*kvit_t4"):
        train_and_evaluate(config, tmp_path)
    with pytest.raises(
        ValueError, match=r"Unknown model 'vit_huge' for this config; known: .*kvit_s4"
    ):
        build_config("configs/cifar_vit.py", "model=vit_huge", {})


def test_unknown_dataset_is_a_clear_error(tmp_path):
    config = build_config(*CLASSIFICATION)
    config.input.dataset = "svhn"
    with pytest.raises(
        ValueError, match=r"Unknown dataset 'svhn'; known datasets: .*fashion_mnist"
    ):
        train_and_evaluate(config, tmp_path)


def test_missing_dataset_directory_names_it_and_the_fix(tmp_path):
    config = build_config(*CLASSIFICATION)
    config.input.data_dir = str(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError) as error:
        train_and_evaluate(config, tmp_path / "run")
    message = str(error.value)
    assert str(tmp_path / "no_such_dir") in message
    assert "python -m krause.data.prepare --dataset fashion_mnist" in message
    assert "train-images-idx3-ubyte.gz" in message


def test_model_and_dataset_mismatch_is_an_error(tmp_path):
    config = build_config(*CLASSIFICATION)
    config.model.num_classes = 100
    with pytest.raises(ValueError, match="num_classes=100 but fashion_mnist has 10 classes"):
        train_and_evaluate(config, tmp_path)


def test_unknown_config_argument_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"Unknown config argument 'modle'.*known arguments: model"
    ):
        build_config("configs/cifar_vit.py", "modle=kvit_s4", {})


def test_cli_unknown_field_lists_the_fields(tmp_path):
    command = [
        sys.executable,
        "-m",
        "krause.main",
        "--config=configs/fashion_mnist_vit.py:smoke",
        f"--workdir={tmp_path}",
        "--config.totl_steps=5",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode != 0
    assert "No field 'totl_steps' (override --config.totl_steps)" in done.stderr
    assert "total_steps" in done.stderr and "input.global_batch_size" in done.stderr
    assert not (tmp_path / "config.json").exists()


def test_cli_unknown_nested_field_lists_that_level(tmp_path, monkeypatch):
    argv = ["krause.main", "--config=configs/fashion_mnist_vit.py:smoke", f"--workdir={tmp_path}"]
    argv.append("--config.model.dpeth=3")
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads sys.argv
    with pytest.raises(SystemExit) as error:
        krause_main.parse_flags(argv)
    message = str(error.value.code)
    assert "No field 'dpeth' in config.model" in message
    assert "depth" in message and "width" in message


# ------------------------------------------------------------------------------ helpers


def read_event_scalars(logdir: pathlib.Path) -> dict[tuple[int, str], float]:
    """{(step, tag): value} of every scalar in `logdir`'s event files, by TensorBoard's reader
    (clu writes scalars as tensor summaries)."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    reader = event_accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    reader.Reload()
    return {
        (event.step, tag): tensor_util.make_ndarray(event.tensor_proto).item()
        for tag in reader.Tags()["tensors"]
        for event in reader.Tensors(tag)
    }


def test_validation_part_is_evaluated_beside_the_test_split(tmp_path):
    """input.validation_size: the held-out training examples are evaluated as "val/...", the
    reported test numbers are unchanged in kind (whole test split)."""
    spec = (CLASSIFICATION[0], CLASSIFICATION[1], {**CLASSIFICATION[2], "input.validation_size": 8})
    results = run(spec, tmp_path)
    assert results["val/images"] == 8 and results["test/images"] == NUM_EXAMPLES
    assert 0.0 <= results["val/accuracy"] <= 1.0 and math.isfinite(results["val/loss"])
    evals = [r for r in read_metrics(tmp_path) if "val/accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4] and all("test/accuracy" in r for r in evals)

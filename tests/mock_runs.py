"""Tiny training runs on `tfds.testing.mock_data` shared by test_train.py and test_runs.py, and a
fake trainer for the tests of the commands that launch runs (test_reproduce.py, test_sweep.py).

The fixtures built from them (`classification_run`, `pixel_run`, `compilation_cache`) live in
conftest.py.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import orbax.checkpoint as ocp
import tensorflow_datasets as tfds

from krause.train import config as tc
from krause.train import train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 24  # mock train and test split size
CLASSIFICATION = (
    "configs/fashion_mnist_vit.py",
    "model=kvit_t4,smoke",  # depth 2, paper layout: post-LN, drop-path 0.1 in block 1
    {"total_steps": 4, "checkpoint_every_steps": 2, "eval_every_steps": 2, "keep_checkpoints": 5},
)
# The pixel run reads the (mock) tfds files every time (the classification run caches them) and
# accumulates gradients over 2 micro-batches; without dropout it must match whole batches.
PIXELS = (
    "configs/pixel_ar.py",
    "dataset=mnist,attention=krause,smoke",
    {"total_steps": 2, "cache_dataset": False, "grad_accum_steps": 2, "model.dropout_rate": 0.0},
)


def build_config(path: str, arg: str, overrides: dict):
    config = tc.load_config_module(str(REPO / path)).get_config(arg)
    config.update_from_flattened_dict(overrides)
    return config


def run(spec, workdir, num_examples: int = NUM_EXAMPLES) -> dict:
    with tfds.testing.mock_data(num_examples=num_examples):
        return train_and_evaluate(build_config(*spec), workdir)


def restore_params(workdir: pathlib.Path, step: int):
    with ocp.CheckpointManager(workdir / "checkpoints") as manager:
        return manager.restore(step, args=ocp.args.StandardRestore())["params"]


class FakeTrainer:
    """Stands in for `train_and_evaluate`: writes config.json, then results.json with random
    metrics; with `validation`, a val/accuracy anti-correlated with the test accuracy (so that a
    selection made on test numbers would pick another setting)."""

    def __init__(self, rng: np.random.Generator, validation: bool = False):
        self.rng, self.validation = rng, validation
        self.calls: list[pathlib.Path] = []  # workdirs, in call order
        self.results: dict[pathlib.Path, dict] = {}

    def __call__(self, config, workdir):
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        val = float(self.rng.uniform(0.5, 1.0))
        results = {"step": 3, "test/accuracy": 1.5 - val, "test/loss": float(self.rng.uniform())}
        results |= {"train/loss": float(self.rng.uniform()), "num_params": 10}
        results["dataset"] = config.input.dataset
        if self.validation:
            results["val/accuracy"] = val
        self.calls.append(workdir)
        self.results[workdir] = results
        (workdir / "results.json").write_text(json.dumps(results))
        return results

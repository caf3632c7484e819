"""Finished (or interrupted) runs, read back: `load_run(workdir, step=None)`.

A run's workdir holds `config_typed.json` (the config with its field types, written by the
trainer) and orbax checkpoints `checkpoints/<step>/`; `load_run` rebuilds the model that was
trained and restores its parameters:

    config, model, params = load_run("runs/kvit_fmnist")
    logits = model.apply({"params": params}, images, train=False)
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from krause import data as kdata
from krause.train import tasks
from krause.train.config import config_from_typed_json
from krause.train.trainer import CHECKPOINTS, TYPED_CONFIG, build_model, example_input


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run was trained with (from `config_typed.json`; a run written before it
    existed falls back to `config.json`, whose tuples read back as lists)."""
    workdir = pathlib.Path(workdir).expanduser()
    typed, plain = workdir / TYPED_CONFIG, workdir / "config.json"
    if typed.exists():
        return config_from_typed_json(typed.read_text())
    if plain.exists():
        logging.warning("%s has no %s; reading %s (tuples become lists).", workdir, typed, plain)
        return ml_collections.ConfigDict(json.loads(plain.read_text()))
    raise FileNotFoundError(
        f"{workdir} holds no run: neither {TYPED_CONFIG} nor config.json is there"
        " (a run's workdir is the --workdir given to `python -m krause.main`)."
    )


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of a run's checkpoints, ascending ([] if none)."""
    directory = pathlib.Path(workdir).expanduser() / CHECKPOINTS
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def load_run(
    workdir: str | os.PathLike, step: int | None = None, *, sharding: Any = None
) -> tuple[ml_collections.ConfigDict, Any, Any]:
    """(config, model, params) of the run in `workdir` at checkpoint `step` (None: latest).

    `model` is the Flax module the trainer built from the saved config (same fields, compute
    dtype); `params` the float32 parameters of the checkpoint, placed with `sharding` (default:
    the first device). Raises FileNotFoundError for a workdir without a run or without
    checkpoints, ValueError for a step without a checkpoint (the available steps are listed).
    """
    workdir = pathlib.Path(workdir).expanduser().absolute()
    config = load_config(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"{workdir / CHECKPOINTS} holds no checkpoint.")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(
            f"No checkpoint of step {step} in {workdir / CHECKPOINTS}; available steps:"
            f" {', '.join(map(str, steps))}."
        )
    info = kdata.get_dataset_info(config.input.dataset)
    task = tasks.task_of(config.input)
    model = build_model(config, info, task)
    example = example_input(config.input, info, task)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, example, train=False)["params"]
    )
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )
    with ocp.CheckpointManager(workdir / CHECKPOINTS) as manager:
        restored = manager.restore(step, args=restore_args({"params": abstract}))
    return config, model, restored["params"]


def restore_args(abstract_tree) -> ocp.args.PyTreeRestore:
    """Orbax arguments restoring the parts of a saved train state that `abstract_tree` names."""
    return ocp.args.PyTreeRestore(
        item=abstract_tree,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree),
        partial_restore=True,
    )

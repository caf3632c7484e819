"""Experiment 1: every (std, seed) of one architecture trained as one vmapped, jitted program.

Protocol of the authors' MLP code: Adam (lr 1e-3, PyTorch defaults), batch 256 with the last
partial batch kept (235 steps per epoch on 60,000 images), a new permutation every epoch,
cross-entropy, pixels / 255 flattened, test accuracy after every epoch.

Parameters and optimizer states carry two leading axes [num_stds, num_seeds]. Seed s fixes the
initial draws (for every std: interior weights are std times the same N(0, 1) draws, as with
`torch.manual_seed(s)` before building the model) and the data order (permutation of epoch e:
`np.random.default_rng([s, e])`), shared by all stds.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions

from krause.goldstone.models import DeepMLP, block_size_of, parse_group, sigma_w

MODELS = ("equivariant", "generic")


def load_arrays(input_config: Any) -> dict[str, np.ndarray]:
    """Train/test splits of a prepared tfds dataset as float32 [n, 784] pixels / 255, int32 [n]."""
    import krause.data as kdata
    from krause.train.trainer import check_dataset_prepared

    check_dataset_prepared(input_config)
    info = kdata.get_dataset_info(input_config.dataset)
    arrays = {}
    for name, split in (("train", info.train_split), ("test", info.test_split)):
        source = kdata.data_source(input_config, split)
        examples = source.__getitems__(list(range(len(source))))
        images = np.stack([e["image"] for e in examples]).reshape(len(examples), -1)
        arrays[f"{name}_x"] = images.astype(np.float32) / 255.0
        arrays[f"{name}_y"] = np.asarray([e["label"] for e in examples], np.int32)
    return arrays


def build_model(config: Any) -> tuple[DeepMLP, int]:
    """The config's DeepMLP (std 1: the std is applied by `init_params`) and its block size."""
    group, k = parse_group(config.group)
    if config.model not in MODELS:
        raise ValueError(f"Unknown model {config.model!r}; allowed: {list(MODELS)}.")
    if config.depth < 1:
        raise ValueError(f"depth must be >= 1, got {config.depth!r}.")
    block = block_size_of(group, k)
    name = group if config.model == "equivariant" else "generic"
    model = DeepMLP(name, config.width, config.depth, 1.0, block, config.num_classes)
    return model, block


def init_params(model: DeepMLP, stds: jax.Array, seeds: jax.Array, input_dim: int) -> Any:
    """Parameters [num_stds, num_seeds, ...]: interior weights std * N(0, 1), outer PyTorch's."""
    if not bool(jnp.all(stds > 0)):
        raise ValueError(f"every std must be > 0, got {np.asarray(stds).tolist()}.")

    def one_seed(seed):
        return model.init(jax.random.key(seed), jnp.zeros((1, input_dim)))["params"]

    base = jax.vmap(one_seed)(seeds)

    def scaled(std):
        interior = jax.tree.map(lambda w: w * std, base["interior"])
        return {**base, "interior": interior}

    return jax.vmap(scaled)(stds)


def make_functions(model: DeepMLP, learning_rate: float):
    """(optimizer, train_step, accuracy) vmapped over [std, seed]; batches carry a seed axis."""
    tx = optax.adam(learning_rate)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # inner vmap: seeds (own params, own batch); outer: stds (own params, shared batches).
    step = jax.vmap(jax.vmap(step), in_axes=(0, 0, None, None))

    def correct(params, x, y):
        return jnp.sum(jnp.argmax(model.apply({"params": params}, x), -1) == y)

    correct = jax.vmap(jax.vmap(correct, in_axes=(0, None, None)), in_axes=(0, None, None))
    return tx, jax.jit(step, donate_argnums=(0, 1)), jax.jit(correct)


def epoch_batches(num_examples: int, batch_size: int, seeds: np.ndarray, epoch: int):
    """Index arrays [num_seeds, b] of one epoch (last partial batch kept), per-seed permutations."""
    perms = np.stack(
        [np.random.default_rng([int(s), epoch]).permutation(num_examples) for s in seeds]
    )
    for start in range(0, num_examples, batch_size):
        yield perms[:, start : start + batch_size]


def evaluate(correct_fn, params, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
    """Test accuracy [num_stds, num_seeds] in [0, 1]."""
    total = 0
    for start in range(0, len(x), batch_size):
        total = total + correct_fn(
            params, x[start : start + batch_size], y[start : start + batch_size]
        )
    return np.asarray(total) / len(x)


def train_and_evaluate(config: Any, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains the grid of `config` and writes workdir/results.json; resumes from checkpoints."""
    workdir = pathlib.Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    model, block = build_model(config)
    stds = np.asarray(config.stds, np.float32)
    seeds = np.asarray(config.seeds, np.int32)
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError(
            f"epochs and batch_size must be >= 1, got {config.epochs}, {config.batch_size}."
        )
    data = load_arrays(config.input)
    if config.max_train_examples:
        data["train_x"] = data["train_x"][: config.max_train_examples]
        data["train_y"] = data["train_y"][: config.max_train_examples]
    num_train, input_dim = data["train_x"].shape

    tx, step_fn, correct_fn = make_functions(model, config.learning_rate)
    params = init_params(model, jnp.asarray(stds), jnp.asarray(seeds), input_dim)
    opt_state = jax.vmap(jax.vmap(tx.init))(params)
    state = {"params": params, "opt_state": opt_state}
    # Per-epoch metrics live in history.json (so a finished run can be extended to more epochs).
    history_path = workdir / "history.json"
    manager = ocp.CheckpointManager(
        workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    )
    start_epoch = manager.latest_step() or 0
    history = {"test_accuracy": [], "train_loss": [], "epoch_time_s": []}
    if start_epoch:
        state = manager.restore(start_epoch, args=ocp.args.StandardRestore(state))
        history = {k: v[:start_epoch] for k, v in json.loads(history_path.read_text()).items()}
        logging.info("Resumed after epoch %d.", start_epoch)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start_epoch == 0:
        writer.write_hparams({k: str(v) for k, v in config.items() if k != "input"})

    params, opt_state = state["params"], state["opt_state"]
    steps_per_epoch = -(-num_train // config.batch_size)
    progress = periodic_actions.ReportProgress(
        num_train_steps=steps_per_epoch * config.epochs,
        writer=writer,
        every_steps=config.log_every_steps,
    )
    for epoch in range(start_epoch, config.epochs):
        tic = time.perf_counter()
        losses = []
        for i, idx in enumerate(epoch_batches(num_train, config.batch_size, seeds, epoch)):
            params, opt_state, loss = step_fn(
                params, opt_state, data["train_x"][idx], data["train_y"][idx]
            )
            losses.append(loss)
            progress(epoch * steps_per_epoch + i + 1)
            if i % config.log_every_steps == 0:
                logging.info(
                    "epoch %d step %d/%d loss(mean) %.4f",
                    epoch + 1,
                    i,
                    steps_per_epoch,
                    float(jnp.mean(loss)),
                )
        train_time = time.perf_counter() - tic
        acc = evaluate(correct_fn, params, data["test_x"], data["test_y"], config.eval_batch_size)
        loss = np.mean(np.stack([np.asarray(x) for x in losses]), 0)
        state = {"params": params, "opt_state": opt_state}
        manager.save(epoch + 1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        history["test_accuracy"].append(acc.tolist())
        history["train_loss"].append(loss.tolist())
        history["epoch_time_s"].append(train_time)
        history_path.write_text(json.dumps(history) + "\n")
        scalars = {
            "train/epoch_time_s": train_time,
            "train/step_time_s": train_time / steps_per_epoch,
        }
        for j, std in enumerate(stds):
            scalars[f"test/accuracy/std_{std:.4f}"] = float(acc[j].mean())
            scalars[f"train/loss/std_{std:.4f}"] = float(loss[j].mean())
        writer.write_scalars(epoch + 1, scalars)
        writer.flush()
        logging.info(
            "epoch %d (%.0f s): test accuracy mean over seeds %s",
            epoch + 1,
            train_time,
            np.round(acc.mean(-1), 4).tolist(),
        )
    manager.wait_until_finished()

    accuracy = np.asarray(history["test_accuracy"])
    results = {
        "group": config.group,
        "model": config.model,
        "dataset": config.input.dataset,
        "width": config.width,
        "depth": config.depth,
        "block_size": block,
        "stds": stds.tolist(),
        "sigma_w": [float(sigma_w(s, config.width, *parse_group(config.group))) for s in stds],
        "seeds": seeds.tolist(),
        "epochs": config.epochs,
        "steps_per_epoch": steps_per_epoch,
        "test_accuracy": accuracy.tolist(),  # [epoch, std, seed]
        "train_loss": history["train_loss"],
        "epoch_time_s": history["epoch_time_s"],
        "final_mean": accuracy[-1].mean(-1).tolist(),
        "final_std": accuracy[-1].std(-1).tolist(),
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results

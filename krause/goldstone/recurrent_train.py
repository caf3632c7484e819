"""Recurrent experiments: the variable-delay copy task and permuted sequential (Fashion-)MNIST.

All seeds of one model train as one vmapped, jitted program (parameters [num_seeds, ...]).

Copy task (ours in detail; the paper gives only its outline): inputs are one-hot over
`alphabet` symbols + blank + marker. Steps 0..9 show 10 random symbols, then `delay` blanks
(uniform in [1, max_delay], per sequence), then the marker; during the 10 steps after the
marker the model must output the 10 symbols in order (inputs blank). Sequences are padded with
blanks to 2 * 10 + max_delay + 1 steps. Loss: cross-entropy over the 10 recall steps; success:
all 10 recalled symbols exact. Fresh sequences every step (keyed on seed and step).

psMNIST: pixels / 255 in one fixed permutation (np.random.default_rng(permutation_seed)), one
pixel per step; the readout sees the last hidden state.
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
from clu import metric_writers

from krause.goldstone.models import parse_group
from krause.goldstone.recurrent import SequenceModel

NUM_TOKENS = 10


def copy_batch(key: jax.Array, batch: int, max_delay: int, alphabet: int = 8):
    """-> inputs float32 [b, T, alphabet + 2], targets int32 [b, T], mask bool [b, T]."""
    if max_delay < 1:
        raise ValueError(f"max_delay must be >= 1, got {max_delay}.")
    length = 2 * NUM_TOKENS + max_delay + 1
    key_symbols, key_delay = jax.random.split(key)
    symbols = jax.random.randint(key_symbols, (batch, NUM_TOKENS), 0, alphabet)
    delay = jax.random.randint(key_delay, (batch, 1), 1, max_delay + 1)
    t = jnp.arange(length)[None, :]
    marker = NUM_TOKENS + delay  # [b, 1]
    blank, marker_id = alphabet, alphabet + 1
    padded = jnp.pad(symbols, ((0, 0), (0, length - NUM_TOKENS)))
    ids = jnp.where(t < NUM_TOKENS, padded, blank)
    ids = jnp.where(t == marker, marker_id, ids)
    recall = (t > marker) & (t <= marker + NUM_TOKENS)
    position = jnp.clip(t - marker - 1, 0, NUM_TOKENS - 1)
    targets = jnp.take_along_axis(symbols, position, axis=1)
    return jax.nn.one_hot(ids, alphabet + 2), jnp.where(recall, targets, 0), recall


def copy_metrics(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Masked cross-entropy over the recall steps and the success rate (all 10 exact)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    loss = jnp.sum(ce * mask) / jnp.sum(mask)
    wrong = (jnp.argmax(logits, -1) != targets) & mask
    return {"loss": loss, "success": jnp.mean(~jnp.any(wrong, axis=1))}


def build_model(config: Any) -> SequenceModel:
    group, k = parse_group(config.group) if config.cell.startswith("eq") else ("u1", None)
    return SequenceModel(
        cell=config.cell,
        width=config.width,
        num_outputs=config.num_outputs,
        group=group,
        k=k,
        sigma=config.sigma,
        last_only=config.experiment == "psmnist",
    )


def _psmnist_arrays(config: Any) -> dict[str, np.ndarray]:
    from krause.goldstone.train import load_arrays

    data = load_arrays(config.input)
    perm = np.random.default_rng(config.permutation_seed).permutation(data["train_x"].shape[1])
    for split in ("train", "test"):
        x = data[f"{split}_x"][:, perm]
        limit = config.max_train_examples if split == "train" else config.max_test_examples
        if limit:
            x, data[f"{split}_y"] = x[:limit], data[f"{split}_y"][:limit]
        data[f"{split}_x"] = x[..., None]  # [n, 784, 1]
    return data


def train_and_evaluate(config: Any, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains `config.seeds` copies of the config's model; writes workdir/results.json."""
    if config.experiment not in ("copy", "psmnist"):
        raise ValueError(f"experiment must be 'copy' or 'psmnist', got {config.experiment!r}.")
    workdir = pathlib.Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    model = build_model(config)
    seeds = jnp.asarray(config.seeds, jnp.int32)
    is_copy = config.experiment == "copy"
    data = None if is_copy else _psmnist_arrays(config)
    example = (
        copy_batch(jax.random.key(0), 1, config.max_delay)[0] if is_copy else jnp.zeros((1, 784, 1))
    )
    params = jax.vmap(lambda s: model.init(jax.random.key(s), example)["params"])(seeds)
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optax.adam(config.lr))
    opt_state = jax.vmap(tx.init)(params)

    def batch_for(seed, step, size, stream):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(stream), seed), step)
        return copy_batch(key, size, config.max_delay)

    def loss_fn(p, batch):
        if is_copy:
            metrics = copy_metrics(model.apply({"params": p}, batch[0]), *batch[1:])
            return metrics["loss"], metrics
        logits = model.apply({"params": p}, batch[0])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
        return loss, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch[1])}

    def step(p, o, seed, step_index, batch):
        if is_copy:
            batch = batch_for(seed, step_index, config.batch_size, 1)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, metrics

    step_fn = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None, 0 if not is_copy else None)))

    def copy_eval(p, seed):  # a held-out stream (2) of fresh sequences
        return loss_fn(p, batch_for(seed, 0, config.eval_size, 2))[1]

    copy_eval_fn = jax.jit(jax.vmap(copy_eval))
    psmnist_eval_fn = jax.jit(
        jax.vmap(lambda p, x: jnp.argmax(model.apply({"params": p}, x), -1), in_axes=(0, None))
    )

    def evaluate(p):
        if is_copy:
            return {k: np.asarray(v) for k, v in copy_eval_fn(p, seeds).items()}
        predictions = [
            psmnist_eval_fn(p, data["test_x"][i : i + config.eval_size])
            for i in range(0, len(data["test_x"]), config.eval_size)
        ]
        correct = np.concatenate([np.asarray(q) for q in predictions], 1) == data["test_y"]
        return {"accuracy": correct.mean(1)}

    state = {"params": params, "opt_state": opt_state}
    manager = ocp.CheckpointManager(
        workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    )
    history_path = workdir / "history.json"
    start = manager.latest_step() or 0
    history: list[dict] = []
    if start:
        state = manager.restore(start, args=ocp.args.StandardRestore(state))
        history = [h for h in json.loads(history_path.read_text()) if h["step"] <= start]
    writer = metric_writers.create_default_writer(workdir)
    params, opt_state = state["params"], state["opt_state"]
    rng = np.random.default_rng([int(s) for s in config.seeds] + [start])
    tic = time.perf_counter()
    for i in range(start, config.steps):
        batch = None
        if not is_copy:
            idx = rng.integers(0, len(data["train_x"]), (len(config.seeds), config.batch_size))
            batch = (data["train_x"][idx], data["train_y"][idx])
        params, opt_state, metrics = step_fn(params, opt_state, seeds, i, batch)
        if (i + 1) % config.eval_every_steps == 0 or i + 1 == config.steps:
            evaluation = evaluate(params)
            seconds = time.perf_counter() - tic
            record = {"step": i + 1, "time_s": seconds}
            record.update({f"train/{k}": np.asarray(v).tolist() for k, v in metrics.items()})
            record.update({f"eval/{k}": v.tolist() for k, v in evaluation.items()})
            history.append(record)
            writer.write_scalars(
                i + 1, {k: float(np.mean(v)) for k, v in record.items() if "/" in k}
            )
            writer.flush()
            manager.save(
                i + 1, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state})
            )
            manager.wait_until_finished()
            history_path.write_text(json.dumps(history) + "\n")
            logging.info(
                "step %d (%.0f s): %s",
                i + 1,
                seconds,
                {k: round(float(np.mean(v)), 4) for k, v in record.items() if "/" in k},
            )
    final = history[-1]
    results = {
        "experiment": config.experiment,
        "cell": config.cell,
        "width": config.width,
        "seeds": list(config.seeds),
        "steps": final["step"],
        **{f"final/{k}": v for k, v in final.items() if "/" in k},
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results

"""The trainer: `train_and_evaluate(config, workdir)` for every model family.

Read it top to bottom: setup, mesh, input, model and optimizer, checkpoint restore, update and
evaluation steps, training loop. The config schema is `krause.train.config.base_config`.

What a run leaves in `workdir`:
  config.json           the resolved config (plain JSON, to read)
  config_typed.json     the same with its field types, read back by `krause.runs.load_run`
  checkpoints/<step>/   orbax checkpoints (params, optimizer state, rng; the step is the data
                        position), written atomically, the last `keep_checkpoints` kept
  checkpoints_corrupt/  checkpoints found unreadable when resuming, moved aside for inspection
  metrics.jsonl         one JSON object per logging/evaluation step
  events.out.tfevents.* the same scalars for TensorBoard
  results.json          the final metrics (test metrics at the last step; no selection)

Resuming: a run started again with the same workdir continues from its latest checkpoint and
reproduces the uninterrupted run exactly (the data stream is a function of seed and step, and
the dropout key of step s is fold_in(rng, s)). If the latest checkpoint cannot be read
(truncated or corrupted files), it is moved to `checkpoints_corrupt/` with a warning and the run
resumes from the newest intact one.

Divergence: a non-finite loss or gradient norm stops the run with `DivergenceError` naming the
step; no checkpoint of a non-finite state is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import periodic_actions
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from krause import data as kdata
from krause.metrics import create_metric_writer, read_metrics
from krause.models import get_model
from krause.train import optim, tasks
from krause.train.config import (
    DTYPE_NAMES,
    config_to_typed_json,
    resolve_steps,
    validate_config,
)

DTYPES = {name: getattr(jnp, name) for name in DTYPE_NAMES}
CHECKPOINTS = "checkpoints"  # workdir/checkpoints/<step>/
CORRUPT_CHECKPOINTS = "checkpoints_corrupt"
TYPED_CONFIG = "config_typed.json"


class DivergenceError(FloatingPointError):
    """The loss or the gradient norm of a training step is not finite."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains `config`'s model, evaluates it on the whole test split, returns the final metrics.

    Returns {"step", "test/..." (accuracy and loss, or bpd and nll), "train/loss",
    "train/step_time_s", "num_params", ...} of the last step.
    """
    # ------------------------------------------------------------------ setup
    maybe_initialize_distributed(config)
    info = kdata.get_dataset_info(config.input.dataset)
    num_train = kdata.num_train_examples(config.input)  # minus a held-out validation part
    validate_config(config, num_devices=jax.device_count(), num_train=num_train)
    workdir = pathlib.Path(workdir).expanduser().absolute()  # orbax needs absolute paths
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        (workdir / TYPED_CONFIG).write_text(config_to_typed_json(config))
    task = tasks.task_of(config.input)
    model = build_model(config, info, task)
    check_dataset_prepared(config.input)
    train_source = test_source = None  # None: the pipeline reads the prepared tfds splits
    if config.cache_dataset:
        train_source = InMemorySource(kdata.data_source(config.input, info.train_split))
        test_source = InMemorySource(kdata.data_source(config.input, info.test_split))

    # ------------------------------------------------------------------ mesh: data parallel
    # One "data" axis over every device of every host: the batch is split, parameters and
    # optimizer state are replicated, gradients are averaged by XLA's all-reduce.
    mesh = jax.make_mesh((jax.device_count(),), ("data",), (jax.sharding.AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    # ------------------------------------------------------------------ input and durations
    accum = config.grad_accum_steps
    batch_size = config.input.global_batch_size  # examples per optimizer step
    micro_input = config.input.copy_and_resolve_references()
    micro_input.global_batch_size = batch_size // accum
    steps_per_epoch = num_train / batch_size
    total_steps = resolve_steps(config, "total", steps_per_epoch=steps_per_epoch)
    durations = {
        name: resolve_steps(config, name, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        for name in ("warmup", "eval_every", "checkpoint_every")
    }
    warmup_steps = durations["warmup"] or 0
    eval_every = durations["eval_every"] or total_steps
    checkpoint_every = durations["checkpoint_every"] or total_steps
    logging.info(
        "%s on %s: %d steps of %d examples (%.2f epochs), %d warm-up steps, %d device(s).",
        config.model_name,
        info.name,
        total_steps,
        batch_size,
        total_steps / steps_per_epoch,
        warmup_steps,
        jax.device_count(),
    )

    # ------------------------------------------------------------------ model and optimizer
    example = example_input(config.input, info, task)
    root_key = jax.random.key(config.seed)
    init_key, dropout_key = jax.random.split(root_key)

    schedule = optim.learning_rate_schedule(config.lr, total_steps, warmup_steps)
    tx = optim.make_optimizer(config, schedule)

    def init_state(key):
        params = model.init({"params": key}, example, train=False)["params"]
        return {
            "params": params,
            "opt_state": tx.init(params),
            "rng": jax.random.key_data(dropout_key),
        }

    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init_state, init_key),
    )
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state["params"]))
    logging.info("%s: %s parameters.", config.model_name, f"{num_params:,}")

    # ------------------------------------------------------------------ checkpoint restore
    manager, start_step, state = restore_newest_intact(workdir, config, abstract_state, is_main)
    if start_step > total_steps:
        raise ValueError(f"Checkpoint step {start_step} is beyond total_steps {total_steps}.")
    if start_step:
        logging.info("Resumed from %s at step %d.", workdir / CHECKPOINTS, start_step)
    else:
        state = jax.jit(init_state, out_shardings=replicated)(init_key)
    last_saved = start_step
    writer = create_metric_writer(workdir, is_main=is_main, resume_step=start_step)

    # ------------------------------------------------------------------ update step
    def train_step(state, batch, micro_step):
        """One micro-batch: loss, gradients, (accumulated) optimizer update."""
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), micro_step)

        def loss_fn(params):
            logits = model.apply(
                {"params": params},
                tasks.model_input(task, batch),
                train=True,
                rngs={"dropout": rng},
            )
            return tasks.train_loss(task, logits, batch)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)
        metrics["update_norm"] = optax.tree.norm(updates)  # 0 until the last micro-batch
        return {**state, "params": params, "opt_state": opt_state}, metrics

    train_step = jax.jit(
        train_step,
        in_shardings=(replicated, batch_sharding, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )

    # ------------------------------------------------------------------ evaluation
    evaluate = make_evaluate(config, model, task, info, batch_sharding, source=test_source)
    if config.input.validation_size:  # held-out training examples, logged as "val/..."
        evaluate_test = evaluate
        evaluate_val = make_evaluate(
            config, model, task, info, batch_sharding, source=train_source, split="validation"
        )
        evaluate = lambda params: {**evaluate_val(params), **evaluate_test(params)}

    # ------------------------------------------------------------------ training loop
    train_iter = kdata.make_train_iterator(
        micro_input, seed=config.seed, start_step=start_step * accum, source=train_source
    )
    timer = StepTimer()
    progress = periodic_actions.ReportProgress(  # logs steps/s and the ETA
        num_train_steps=total_steps, every_steps=config.log_every_steps, every_secs=None
    )
    pending: list[dict[str, jax.Array]] = []  # metrics since the last log
    pending_check: list[dict[str, jax.Array]] = []  # metrics of the last step, to check
    last_train: dict[str, float] = {}
    final_eval: dict[str, float] = {}
    try:
        for step in range(start_step + 1, total_steps + 1):
            step_metrics = []
            for micro in range(accum):
                batch = to_global(next(train_iter), batch_sharding)
                state, metrics = train_step(state, batch, np.int32((step - 1) * accum + micro))
                if micro < accum - 1:  # the optimizer updates after the last micro-batch only
                    metrics = {k: v for k, v in metrics.items() if k not in _UPDATE_METRICS}
                step_metrics.append(metrics)
            # Checked one step late (the device is then a step ahead), and before any saving.
            check_finite(step - 1, pending_check, workdir, last_saved)
            pending_check = step_metrics
            pending.extend(step_metrics)
            timer.step_done(step, state)
            progress(step)

            if step % config.log_every_steps == 0 or step == total_steps:
                last_train = {f"train/{k}": v for k, v in mean_metrics(pending).items()}
                pending = []
                last_train["train/lr"] = float(schedule(step - 1))
                last_train.update(timer.rates())
                writer.write_scalars(step, {**last_train, **sigma_metrics(state["params"])})

            if step % checkpoint_every == 0 or step == total_steps:
                check_finite(step, pending_check, workdir, last_saved)
                with timer.paused(), progress.timed("checkpoint", wait_jax_async_dispatch=False):
                    manager.save(step, args=ocp.args.StandardSave(state))
                last_saved = step

            if step % eval_every == 0 or step == total_steps:
                with timer.paused(), progress.timed("eval", wait_jax_async_dispatch=False):
                    final_eval = evaluate(state["params"])
                writer.write_scalars(step, final_eval)

        run_rates = {f"{k}_mean": v for k, v in timer.mean_rates().items()}
        if start_step == total_steps:  # resumed a finished run: report its final numbers
            final_eval = evaluate(state["params"])
            last_train = last_train_record(workdir)
    finally:  # also when interrupted: let an in-flight checkpoint finish
        manager.wait_until_finished()
        manager.close()
        writer.close()

    results = {
        "step": total_steps,
        **final_eval,
        **last_train,
        **run_rates,
        "num_params": num_params,
        "model_name": config.model_name,
        "dataset": info.name,
    }
    if is_main:
        (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    logging.info("Final (step %d): %s", total_steps, format_metrics(final_eval))
    return results


# ---------------------------------------------------------------------------------- helpers


def maybe_initialize_distributed(config) -> None:
    """`jax.distributed.initialize()` if `config.distributed` or the environment asks for it."""
    env = os.environ
    wanted = (
        config.distributed
        or "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )
    if wanted and not jax.distributed.is_initialized():
        jax.distributed.initialize()
        logging.info("Process %d of %d.", jax.process_index(), jax.process_count())


def check_dataset_prepared(input_config) -> None:
    """Raises FileNotFoundError naming the directory and the preparation command if the
    dataset cannot be read."""
    info = kdata.get_dataset_info(input_config.dataset)
    try:
        for split in (info.train_split, info.test_split):
            kdata.data_source(input_config, split)
    except Exception as error:  # tfds raises several types here, with unhelpful messages
        data_dir = input_config.data_dir or "~/tensorflow_datasets (tfds' default)"
        archives = " ".join(kdata.ARCHIVES.get(info.name, ()))
        raise FileNotFoundError(
            f"Dataset {info.name!r} is not prepared in data_dir {data_dir}. Prepare it with"
            f" `python -m krause.data.prepare --dataset {info.name} --archive_dir DIR"
            f" --data_dir {input_config.data_dir or '~/tensorflow_datasets'}`, where DIR"
            f" holds {archives}, or set --config.input.data_dir. ({type(error).__name__}:"
            f" {str(error).splitlines()[0] if str(error) else ''})"
        ) from error


class InMemorySource:
    """A split decoded once into memory: {image uint8 [H,W,C], label} by index, like tfds'
    data source (same order, so the data stream is the same with or without the cache)."""

    def __init__(self, source, chunk: int = 1000):
        images, labels = [], []
        for start in range(0, len(source), chunk):
            examples = _read(source, list(range(start, min(start + chunk, len(source)))))
            images.append(np.stack([e["image"] for e in examples]))
            labels.append(np.asarray([e["label"] for e in examples], np.int64))
        self.images, self.labels = np.concatenate(images), np.concatenate(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}


def _read(source, keys: list[int]) -> list[dict]:
    """Examples `keys` of `source`: one batched read if it has a working `__getitems__` (tfds'
    is ~3x faster than single reads), else one by one (e.g. tfds' mock data)."""
    try:
        return list(source.__getitems__(keys))
    except (AttributeError, TypeError):
        return [source[key] for key in keys]


def build_model(config, info: kdata.DatasetInfo, task: str):
    """The registered model with `config.model` fields and `config.dtype`; checks the dataset."""
    model = get_model(config.model_name, **config.model.to_dict(), dtype=DTYPES[config.dtype])
    if task == "classification":
        if getattr(model, "num_classes", None) != info.num_classes:
            raise ValueError(
                f"model {config.model_name} has num_classes={getattr(model, 'num_classes', None)}"
                f" but {info.name} has {info.num_classes} classes."
            )
    elif (
        tuple(getattr(model, "image_shape", ()))
        != (config.input.image_size or info.image_shape[0],) * 2 + info.image_shape[2:]
    ):
        raise ValueError(
            f"model {config.model_name} has image_shape={getattr(model, 'image_shape', None)},"
            f" but the {info.name} images are {info.image_shape} (a pixel model is needed for"
            " output='tokens')."
        )
    return model


def example_input(input_config, info: kdata.DatasetInfo, task: str) -> jax.Array:
    """A one-example input of the right shape and dtype, for `model.init`."""
    size = input_config.image_size or info.image_shape[0]
    channels = info.image_shape[2]
    if task == "pixels":
        return jnp.zeros((1, size * size * channels), jnp.int32)
    return jnp.zeros((1, size, size, channels), jnp.float32)


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process' rows -> global arrays split over the "data" axis of every device."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def last_train_record(workdir: pathlib.Path) -> dict[str, float]:
    """The last logged training metrics of a run (from metrics.jsonl)."""
    records = [r for r in read_metrics(workdir) if "train/loss" in r]
    if not records:
        return {}
    return {k: v for k, v in records[-1].items() if k.startswith("train/")}


def mean_metrics(metrics: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Each metric's mean over the entries that hold it."""
    fetched = jax.device_get(metrics)
    names = dict.fromkeys(k for m in fetched for k in m)
    return {k: float(np.mean([m[k] for m in fetched if k in m])) for k in names}


_UPDATE_METRICS = ("param_norm", "update_norm")


def check_finite(step: int, metrics: list[dict[str, jax.Array]], workdir, last_saved: int):
    """Raises DivergenceError if the loss or gradient norm of `step`'s `metrics` (one dict per
    micro-batch) is not finite."""
    if not metrics:
        return
    values = jax.device_get([{k: m[k] for k in ("loss", "grad_norm")} for m in metrics])
    if all(np.isfinite(v).all() for m in values for v in m.values()):
        return
    shown = ", ".join(f"{k} {float(m[k]):.4g}" for m in values for k in ("loss", "grad_norm"))
    kept = (
        f"the last good checkpoint is step {last_saved} in {workdir / CHECKPOINTS}"
        if last_saved
        else "no checkpoint was written"
    )
    raise DivergenceError(
        f"Training diverged at step {step}: {shown}. The run stops; {kept}. Lower config.lr,"
        " set config.grad_clip_norm or check the input data."
    )


def restore_newest_intact(workdir: pathlib.Path, config, abstract_state, is_main: bool):
    """(checkpoint manager, step, state) of the newest checkpoint that can be restored
    ((manager, 0, None) without checkpoints).

    A checkpoint that fails to restore while an older one restores is unreadable (truncated,
    corrupted): it is moved to `workdir/checkpoints_corrupt/<step>` with a warning. If none
    restores (e.g. the config no longer matches them), the newest one's error is raised and
    nothing is moved.
    """
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
    manager = ocp.CheckpointManager(workdir / CHECKPOINTS, options=options)
    failed: list[tuple[int, Exception]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as error:  # orbax/tensorstore raise several types for bad files
            failed.append((step, error))
            continue
        if not failed:
            return manager, step, state
        manager.close()
        for bad, error in failed:
            target = workdir / CORRUPT_CHECKPOINTS / str(bad)
            logging.warning(
                "Checkpoint %s is unreadable (%s: %s); moved to %s, resuming from step %d.",
                workdir / CHECKPOINTS / str(bad),
                type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "",
                target,
                step,
            )
            if is_main:
                if target.exists():
                    target = target.with_name(f"{bad}_{int(time.time())}")
                target.parent.mkdir(exist_ok=True)
                shutil.move(workdir / CHECKPOINTS / str(bad), target)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("krause_moved_corrupt_checkpoints")
        return ocp.CheckpointManager(workdir / CHECKPOINTS, options=options), step, state
    if failed:
        step, error = failed[0]
        raise RuntimeError(
            f"No checkpoint in {workdir / CHECKPOINTS} can be restored (steps"
            f" {', '.join(str(s) for s, _ in failed)}); the newest, step {step}, fails with"
            f" {type(error).__name__}: {str(error)[:500]}. If the config still matches the run,"
            " the checkpoints are damaged: move them away to start the run from scratch."
        ) from error
    return manager, 0, None


def make_evaluate(
    config,
    model,
    task: str,
    info: kdata.DatasetInfo,
    batch_sharding,
    source=None,
    split: str = "test",
):
    """`evaluate(params) -> {"test/...": value}`: metrics over the whole test split (every
    example once, padding masked out), batches split over `batch_sharding`'s devices.
    `source`: the split's examples (None: read from the prepared files; for "validation" the
    whole training split). `split="validation"`: the held-out part of the training split
    (`input.validation_size`), reported as "val/..."."""
    example = example_input(config.input, info, task)

    @jax.jit
    def eval_step(params, batch):
        logits = model.apply({"params": params}, tasks.model_input(task, batch), train=False)
        return tasks.eval_sums(task, logits, batch)

    def evaluate(params) -> dict[str, float]:
        sums = None
        for local_batch in kdata.make_eval_batches(config.input, split=split, source=source):
            sums = tasks.add_sums(sums, eval_step(params, to_global(local_batch, batch_sharding)))
        metrics = tasks.eval_metrics(task, sums, dims_per_image=example.size)
        if split == "test":
            return metrics
        return {f"val/{k.removeprefix('test/')}": v for k, v in metrics.items()}

    return evaluate


def sigma_metrics(params) -> dict[str, float]:
    """Krause widths sigma = exp(log_sigma) by layer (and head): {"sigma/<path>[/head_h]": v}."""
    out = {}
    for path, value in traverse_util.flatten_dict(params, sep="/").items():
        if path.endswith("log_sigma"):
            layer = path.removesuffix("/log_sigma")
            sigma = np.exp(np.asarray(jax.device_get(value), np.float64)).ravel()
            if sigma.size == 1:
                out[f"sigma/{layer}"] = float(sigma[0])
            else:
                out.update({f"sigma/{layer}/head_{h}": float(s) for h, s in enumerate(sigma)})
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


class StepTimer:
    """Training time per step, excluding the first step (compilation) and `paused()` blocks
    (evaluation, saving): `train/step_time_s` and `train/steps_per_sec`."""

    def __init__(self):
        self.step = 0
        self.first = None  # (time, step) once the first step of this process has finished
        self.mark = None  # (time, step) at the previous `rates` call
        self.excluded = self.excluded_since_mark = 0.0

    def step_done(self, step: int, state) -> None:
        self.step = step
        if self.first is None:
            jax.block_until_ready(state)
            self.first = self.mark = (time.perf_counter(), step)

    @contextlib.contextmanager
    def paused(self):
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.excluded += dt
        self.excluded_since_mark += dt

    def rates(self) -> dict[str, float]:
        """Speed since the previous call; call after fetching metrics (so the device is done)."""
        now = time.perf_counter()
        (t0, s0), excluded = self.mark, self.excluded_since_mark
        self.mark, self.excluded_since_mark = (now, self.step), 0.0
        return _rates(self.step - s0, now - t0 - excluded)

    def mean_rates(self) -> dict[str, float]:
        """Speed over every step this process ran after the first one."""
        if self.first is None:
            return {}
        t0, s0 = self.first
        return _rates(self.step - s0, time.perf_counter() - t0 - self.excluded)


def _rates(steps: int, seconds: float) -> dict[str, float]:
    if steps <= 0 or seconds <= 0:
        return {}
    return {"train/steps_per_sec": steps / seconds, "train/step_time_s": seconds / steps}

"""Deterministic, resumable, per-process input pipelines (grain over `tfds.data_source`).

Position: the training stream is a pure function of (seed, global step). Global step s holds the
examples at stream positions [s * G, (s + 1) * G) (G = global batch); position p is example
perm_e(p mod N) of epoch e = p // N, perm_e being grain's index shuffle seeded with
(shuffle_seed + e). Process i of P takes rows [i * G/P, (i + 1) * G/P) of every global batch.
Per-example augmentation randomness is keyed on (augment_seed, position), batch mixing on
(mix_seed, s * P + i); the three seeds are derived from `seed`. So a trainer resumes by storing
its step and calling `make_train_iterator(..., start_step=step)`: no iterator state is needed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from krause.data import augment as aug
from krause.data.config import AUGMENT_OPS
from krause.data.mixing import mix_batch, one_hot, smooth_labels
from krause.data.registry import DatasetInfo, get_dataset_info

Batch = dict[str, np.ndarray]


def data_source(config: Any, split: str) -> Sequence[dict[str, Any]]:
    """Random-access source of decoded examples {image uint8 [h,w,c], label} of a prepared split."""
    import tensorflow_datasets as tfds

    info = get_dataset_info(config.dataset)
    return tfds.data_source(info.tfds_name, split=split, data_dir=config.data_dir, download=False)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(
            f"Batch {global_batch_size} does not split over {process_count} processes."
        )
    return global_batch_size // process_count


def _image_size(config: Any, info: DatasetInfo) -> int:
    return config.image_size or info.image_shape[0]


def _resize_if_needed(image: np.ndarray, config: Any, info: DatasetInfo) -> np.ndarray:
    size = _image_size(config, info)
    if image.shape[:2] == (size, size):
        return image
    return aug.resize_center_crop(image, size=size, crop_fraction=config.eval_crop_fraction)


def _normalise(image: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """uint8 [H,W,C] -> float32 (x / 255 - mean) / std."""
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    return (image.astype(np.float32) / 255.0 - mean) / std


def _finish(image: np.ndarray, label: Any, config: Any, info: DatasetInfo) -> dict[str, Any]:
    if config.output == "tokens":
        return {"tokens": image.reshape(-1).astype(np.int32), "label": np.int32(label)}
    return {"image": _normalise(image, info), "label": np.int32(label)}


def _augment_op(name: str, config: Any, info: DatasetInfo):
    size = _image_size(config, info)
    ops = {
        "random_crop": functools.partial(aug.random_crop, padding=config.crop_padding),
        "flip": aug.flip,
        "random_resized_crop": functools.partial(
            aug.random_resized_crop,
            size=size,
            scale=tuple(config.rrc_scale),
            ratio=tuple(config.rrc_ratio),
        ),
        "color_jitter": functools.partial(aug.color_jitter, strength=config.color_jitter),
        "rand_augment": functools.partial(
            aug.rand_augment,
            num_ops=config.rand_augment_num_ops,
            magnitude=config.rand_augment_magnitude,
        ),
    }
    return ops[name]


def preprocess_train(
    example: dict[str, Any], rng: np.random.Generator, *, config: Any, info: DatasetInfo
) -> dict[str, Any]:
    """One decoded example -> training example (`config.augment` ops, normalise, erasing)."""
    image = example["image"]
    if "random_resized_crop" not in config.augment:
        image = _resize_if_needed(image, config, info)
    for name in config.augment:
        image = _augment_op(name, config, info)(image, rng)
    out = _finish(np.ascontiguousarray(image), example["label"], config, info)
    if config.random_erasing > 0:
        out["image"] = aug.random_erasing(out["image"], rng, prob=config.random_erasing)
    return out


def preprocess_eval(example: dict[str, Any], *, config: Any, info: DatasetInfo) -> dict[str, Any]:
    """One decoded example -> evaluation example (resize/centre-crop if needed, normalise)."""
    return _finish(
        _resize_if_needed(example["image"], config, info), example["label"], config, info
    )


def _mix_and_smooth(
    batch: Batch, rng: np.random.Generator, *, config: Any, info: DatasetInfo
) -> Batch:
    """Adds soft_label float32 [b, K]: one-hot, then MixUp/CutMix, then label smoothing."""
    images, targets = mix_batch(
        batch["image"],
        one_hot(batch["label"], info.num_classes),
        rng,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        mix_prob=config.mix_prob,
        cutmix_prob=config.cutmix_prob,
    )
    return {**batch, "image": images, "soft_label": smooth_labels(targets, config.label_smoothing)}


def _check(config: Any) -> None:
    if config.output not in ("image", "tokens"):
        raise ValueError(f"config.output must be 'image' or 'tokens', got {config.output!r}.")
    for name in config.augment:
        if name not in AUGMENT_OPS:
            raise ValueError(f"Unknown augmentation {name!r}; known: {list(AUGMENT_OPS)}.")
    transforms = (
        config.augment or config.random_erasing or config.mixup_alpha or config.cutmix_alpha
    )
    if config.output == "tokens" and (transforms or config.label_smoothing):
        raise ValueError("output='tokens' takes raw pixels: no augmentation, mixing or smoothing.")


def _to_iterator(dataset: grain.MapDataset, config: Any) -> Iterator[Batch]:
    read_options = grain.ReadOptions(
        num_threads=config.num_threads, prefetch_buffer_size=config.prefetch
    )
    iter_dataset = dataset.to_iter_dataset(read_options)
    if config.worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; use their defaults.
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=config.worker_count)
        )
    return iter(iter_dataset)


def make_train_iterator(
    config: Any,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    source: Sequence[dict[str, Any]] | None = None,
) -> Iterator[Batch]:
    """Endless local training batches from global step `start_step` on (see module docstring).

    config: the input config (`default_input_config`). Yields, per step, this process' share
    (global_batch_size / process_count rows) of the global batch: see `config.output`.
    `process_index`/`process_count` default to jax's; `source` overrides the tfds train split
    (any random-access sequence of {image uint8 [H,W,C], label} dicts).
    """
    _check(config)
    info = get_dataset_info(config.dataset)
    process_index, process_count = _process(process_index, process_count)
    local_batch = _local_batch_size(config.global_batch_size, process_count)
    source = data_source(config, info.train_split) if source is None else source
    shuffle_seed, augment_seed, mix_seed = (
        int(s) for s in np.random.SeedSequence(seed).generate_state(3)
    )
    dataset = (
        grain.MapDataset.source(source)
        .shuffle(seed=shuffle_seed)
        .repeat()  # reseeds the shuffle every epoch: epoch e uses shuffle_seed + e.
        .random_map(
            functools.partial(preprocess_train, config=config, info=info), seed=augment_seed
        )
        .batch(local_batch, drop_remainder=True)
    )
    if config.output == "image":
        mix = functools.partial(_mix_and_smooth, config=config, info=info)
        dataset = dataset.random_map(mix, seed=mix_seed)
    # Local batch k holds stream positions [k * b, (k + 1) * b): process i takes k = s * P + i.
    return _to_iterator(
        dataset[start_step * process_count + process_index :: process_count], config
    )


def num_eval_batches(num_examples: int, eval_batch_size: int) -> int:
    """Number of (padded) global eval batches covering `num_examples`."""
    return math.ceil(num_examples / eval_batch_size)


def _padded_example(examples: grain.MapDataset, index: int) -> dict[str, Any]:
    """Example `index`, or a masked-out copy of the last one past the end."""
    num_examples = len(examples)
    return {**examples[min(index, num_examples - 1)], "mask": np.bool_(index < num_examples)}


def make_eval_batches(
    config: Any,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    source: Sequence[dict[str, Any]] | None = None,
) -> Iterator[Batch]:
    """One pass over the test split in local batches, each with mask bool [b].

    Global batch k holds test examples [k * G, (k + 1) * G); the last one is padded (with copies
    of the final example) and its padding has mask False. Every process yields the same number
    of batches, num_eval_batches(N, G), and over all processes every example has mask True once.
    """
    _check(config)
    info = get_dataset_info(config.dataset)
    process_index, process_count = _process(process_index, process_count)
    local_batch = _local_batch_size(config.eval_batch_size, process_count)
    source = data_source(config, info.test_split) if source is None else source
    examples = grain.MapDataset.source(source).map(
        functools.partial(preprocess_eval, config=config, info=info)
    )
    total = num_eval_batches(len(source), config.eval_batch_size) * config.eval_batch_size
    padded = grain.MapDataset.range(total).map(functools.partial(_padded_example, examples))
    return _to_iterator(padded.batch(local_batch)[process_index::process_count], config)

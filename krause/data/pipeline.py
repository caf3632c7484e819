"""Deterministic, resumable, per-process input pipelines (grain over `tfds.data_source`).

Position: the training stream is a pure function of (seed, global step). Global step s holds the
examples at stream positions [s * G, (s + 1) * G) (G = global batch); position p is example
perm_e(p mod N) of epoch e = p // N, perm_e being grain's index shuffle seeded with
(shuffle_seed + e). Process i of P takes rows [i * G/P, (i + 1) * G/P) of every global batch.
Per-example augmentation randomness is keyed on (augment_seed, position), batch mixing on
(mix_seed, s * P + i); the three seeds are derived from `seed`. So a trainer resumes by storing
its step and calling `make_train_iterator(..., start_step=step)`: no iterator state is needed.

Validation part: with `config.validation_size` = V > 0, the training split's N examples are split
once by `split_indices` (independent of every seed): V of them form the "validation" split,
read by `make_eval_batches(config, split="validation")`, and the stream above runs over the
other N - V (positions index that subset; `num_train_examples` gives N - V).
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

# Seed of the fixed permutation that picks the validation part (`split_indices`).
VALIDATION_SEED = 0
EVAL_SPLITS = ("test", "validation")


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
            interpolation=config.rrc_interpolation,
        ),
        "color_jitter": functools.partial(aug.color_jitter, strength=config.color_jitter),
        "rand_augment": functools.partial(
            aug.rand_augment,
            num_ops=config.rand_augment_num_ops,
            magnitude=config.rand_augment_magnitude,
            num_bins=config.rand_augment_num_bins,
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
    magnitude, num_bins = config.rand_augment_magnitude, config.rand_augment_num_bins
    if not (isinstance(magnitude, int) and num_bins >= 2 and 0 <= magnitude < num_bins):
        raise ValueError(
            f"rand_augment_magnitude must be an integer bin in [0, rand_augment_num_bins - 1]"
            f" (torchvision's scale; 9 of 31 bins = 0.3 of each op's maximum), got"
            f" {magnitude!r} with rand_augment_num_bins={num_bins!r}."
        )
    if not (isinstance(config.validation_size, int) and config.validation_size >= 0):
        raise ValueError(
            f"validation_size must be an integer >= 0 (0 = no validation part), got"
            f" {config.validation_size!r}."
        )


def split_indices(num_examples: int, validation_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices into a training split of `num_examples` examples.

    The validation part is the last `validation_size` entries of the fixed permutation
    `np.random.RandomState(VALIDATION_SEED).permutation(num_examples)` (legacy RandomState, whose
    stream NumPy keeps fixed across versions), so it never depends on a run's seed; the training
    part is the rest. Both are sorted int64 arrays; with validation_size 0 the training part is
    every index in order.
    """
    if not 0 <= validation_size < num_examples:
        raise ValueError(
            f"validation_size {validation_size} must be in [0, {num_examples}) for a training"
            f" split of {num_examples} examples."
        )
    if validation_size == 0:
        return np.arange(num_examples), np.zeros(0, np.int64)
    permutation = np.random.RandomState(VALIDATION_SEED).permutation(num_examples)
    cut = num_examples - validation_size
    return np.sort(permutation[:cut]), np.sort(permutation[cut:])


class _Subset(Sequence):
    """The examples `indices` of a random-access source, in that order."""

    def __init__(self, source: Sequence[dict[str, Any]], indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[int(self.indices[index])]


def _train_part(source: Sequence[dict[str, Any]], config: Any) -> Sequence[dict[str, Any]]:
    """The training split minus its validation part (the whole split if validation_size is 0)."""
    if config.validation_size == 0:
        return source
    train, _ = split_indices(len(source), config.validation_size)
    return _Subset(source, train)


def num_train_examples(config: Any) -> int:
    """Examples per training epoch: the registry's train count minus `validation_size`."""
    _check(config)
    return get_dataset_info(config.dataset).num_train - config.validation_size


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
    (any random-access sequence of {image uint8 [H,W,C], label} dicts); either way the
    validation part (`config.validation_size`) is removed from it.
    """
    _check(config)
    info = get_dataset_info(config.dataset)
    process_index, process_count = _process(process_index, process_count)
    local_batch = _local_batch_size(config.global_batch_size, process_count)
    source = data_source(config, info.train_split) if source is None else source
    source = _train_part(source, config)
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
    split: str = "test",
    process_index: int | None = None,
    process_count: int | None = None,
    source: Sequence[dict[str, Any]] | None = None,
) -> Iterator[Batch]:
    """One pass over an evaluation split in local batches, each with mask bool [b].

    split: "test" (the registry's test split) or "validation" (the `config.validation_size`
    held-out training examples, see `split_indices`). `source` overrides the split read from
    disk: for "test" the test examples, for "validation" the *whole* training split (the
    validation part is taken from it).
    Global batch k holds examples [k * G, (k + 1) * G); the last one is padded (with copies
    of the final example) and its padding has mask False. Every process yields the same number
    of batches, num_eval_batches(N, G), and over all processes every example has mask True once.
    """
    _check(config)
    if split not in EVAL_SPLITS:
        raise ValueError(f"Unknown eval split {split!r}; known: {list(EVAL_SPLITS)}.")
    if split == "validation" and config.validation_size == 0:
        raise ValueError("split='validation' needs config.validation_size > 0 (it is 0).")
    info = get_dataset_info(config.dataset)
    process_index, process_count = _process(process_index, process_count)
    local_batch = _local_batch_size(config.eval_batch_size, process_count)
    if split == "validation":
        source = data_source(config, info.train_split) if source is None else source
        source = _Subset(source, split_indices(len(source), config.validation_size)[1])
    else:
        source = data_source(config, info.test_split) if source is None else source
    examples = grain.MapDataset.source(source).map(
        functools.partial(preprocess_eval, config=config, info=info)
    )
    total = num_eval_batches(len(source), config.eval_batch_size) * config.eval_batch_size
    padded = grain.MapDataset.range(total).map(functools.partial(_padded_example, examples))
    return _to_iterator(padded.batch(local_batch)[process_index::process_count], config)

"""Data input: dataset registry, offline preparation, deterministic grain pipelines.

Typical use in a trainer (`config.input` from `default_input_config(dataset, recipe)`):

    train_iter = make_train_iterator(config.input, seed=config.seed, start_step=step)
    for batch in make_eval_batches(config.input):  # one pass, `mask` marks real examples
        ...
    # With config.input.validation_size > 0: the held-out part of the training split.
    for batch in make_eval_batches(config.input, split="validation"):
        ...

The data position to checkpoint is the trainer's global step (see `krause.data.pipeline`).
Offline datasets: `python -m krause.data.prepare --dataset NAME --archive_dir DIR --data_dir DIR`.
"""

from krause.data.config import AUGMENT_OPS, RECIPES, default_input_config
from krause.data.pipeline import (
    data_source,
    make_eval_batches,
    make_train_iterator,
    num_eval_batches,
    num_train_examples,
    split_indices,
)
from krause.data.prepare import ARCHIVES, prepare
from krause.data.registry import DATASETS, DatasetInfo, get_dataset_info

__all__ = [
    "ARCHIVES",
    "AUGMENT_OPS",
    "DATASETS",
    "RECIPES",
    "DatasetInfo",
    "data_source",
    "default_input_config",
    "get_dataset_info",
    "make_eval_batches",
    "make_train_iterator",
    "num_eval_batches",
    "num_train_examples",
    "prepare",
    "split_indices",
]

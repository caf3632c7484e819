"""Data input: dataset registry, offline preparation, deterministic grain pipelines."""

from krause.data.config import AUGMENT_OPS, RECIPES, default_input_config
from krause.data.pipeline import (
    data_source,
    make_eval_batches,
    make_train_iterator,
    num_eval_batches,
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
    "prepare",
]

"""Datasets the project knows, by name: shapes, sizes, splits and normalisation."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one image-classification dataset.

    `image_shape` is the (H, W, C) shape of the images the pipeline yields; for ImageNet the
    stored images vary in size and are cropped or resized to it. `mean` and `std` are per-channel
    normalisation constants for pixels scaled to [0, 1].
    """

    name: str
    tfds_name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_split: str = "train"
    test_split: str = "test"


_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # experiments.md, CIFAR recipe
_CIFAR_STD = (0.2023, 0.1994, 0.2010)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", "cifar10", (32, 32, 3), 10, 50_000, 10_000, _CIFAR_MEAN, _CIFAR_STD),
        DatasetInfo(
            "cifar100", "cifar100", (32, 32, 3), 100, 50_000, 10_000, _CIFAR_MEAN, _CIFAR_STD
        ),
        DatasetInfo("mnist", "mnist", (28, 28, 1), 10, 60_000, 10_000, (0.1307,), (0.3081,)),
        DatasetInfo(
            "fashion_mnist", "fashion_mnist", (28, 28, 1), 10, 60_000, 10_000, (0.2860,), (0.3530,)
        ),
        DatasetInfo(
            "imagenet2012",
            "imagenet2012",
            (224, 224, 3),
            1000,
            1_281_167,
            50_000,
            _IMAGENET_MEAN,
            _IMAGENET_STD,
            test_split="validation",
        ),
    )
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Returns the `DatasetInfo` registered under `name`; `ValueError` lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}.") from None

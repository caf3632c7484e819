"""Offline preparation: standard archive files -> tensorflow-datasets `array_record` datasets.

Usage:
  python -m krause.data.prepare --dataset fashion_mnist \
      --archive_dir /usr/share/datasets/fashion-mnist --data_dir ~/tensorflow_datasets

`archive_dir` holds the files the official sites distribute (see `ARCHIVES`). The result is the
dataset tfds itself would build (same name, version and features), stored as `array_record`, so
`tfds.data_source(name, data_dir=data_dir)` and grain read it without TensorFlow.
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import pickle
import tarfile
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums

from krause.data.registry import DATASETS, DatasetInfo, get_dataset_info

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

ARCHIVES: dict[str, tuple[str, ...]] = {
    "mnist": _IDX_FILES,
    "fashion_mnist": _IDX_FILES,
    "cifar10": ("cifar-10-python.tar.gz",),
    "cifar100": ("cifar-100-python.tar.gz",),
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
}


def prepare(name: str, *, data_dir: str | pathlib.Path, archive_dir: str | pathlib.Path) -> None:
    """Builds dataset `name` in `data_dir` from the archives in `archive_dir`, then verifies it.

    Idempotent: an already prepared dataset is only re-verified. Raises `FileNotFoundError`
    (naming `archive_dir` and the expected files) if an archive is missing, and `RuntimeError`
    if the content (example counts, image shapes, labels) is not what the registry says.
    """
    info = get_dataset_info(name)
    data_dir = pathlib.Path(data_dir).expanduser()
    archive_dir = pathlib.Path(archive_dir).expanduser()
    builder_cls = tfds.builder_cls(info.tfds_name)
    if not builder_cls(data_dir=data_dir, file_format="array_record").is_prepared():
        _check_archives(name, archive_dir)
        builder = _offline_builder_cls(info, builder_cls, archive_dir)(
            data_dir=data_dir, file_format="array_record"
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir, prefix="downloads.") as download_dir:
            builder.download_and_prepare(
                download_dir=download_dir,
                download_config=tfds.download.DownloadConfig(manual_dir=archive_dir),
            )
    verify(info, data_dir)


def verify(info: DatasetInfo, data_dir: str | pathlib.Path) -> None:
    """Checks the prepared splits' example counts, image shapes and label range against `info`."""
    for split, expected in ((info.train_split, info.num_train), (info.test_split, info.num_test)):
        source = tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False)
        if len(source) != expected:
            raise RuntimeError(f"{info.name}/{split}: {len(source)} examples, expected {expected}.")
        for index in (0, len(source) - 1):
            example = source[index]
            image, label = example["image"], int(example["label"])
            fixed_shape = info.name != "imagenet2012"  # ImageNet images vary in size.
            shape_ok = image.shape == info.image_shape if fixed_shape else image.shape[2] == 3
            if not shape_ok or image.dtype != np.uint8 or not 0 <= label < info.num_classes:
                raise RuntimeError(
                    f"{info.name}/{split}[{index}]: image {image.dtype}{image.shape},"
                    f" label {label}; expected uint8{info.image_shape}"
                    f" and a label in [0, {info.num_classes})."
                )


def _check_archives(name: str, archive_dir: pathlib.Path) -> None:
    expected = ARCHIVES[name]
    missing = [f for f in expected if not (archive_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Cannot prepare {name!r}: looked in {archive_dir} for {list(expected)};"
            f" missing {missing}. Put the archive files from the dataset's official site there."
        )


def _offline_builder_cls(
    info: DatasetInfo, builder_cls: type[tfds.core.DatasetBuilder], archive_dir: pathlib.Path
) -> type[tfds.core.DatasetBuilder]:
    """A subclass of tfds' builder that reads `archive_dir` and never downloads."""
    if info.name in ("mnist", "fashion_mnist"):
        # tfds' builder, unchanged, finds the idx files in `manual_dir`; its registered checksums
        # are replaced by the files' own, since redistributed copies (e.g. Debian's, re-compressed)
        # differ from the originals byte-wise. Content is checked instead: the idx headers here,
        # counts and shapes after preparation.
        _check_idx_files(info, archive_dir)
        url_infos = {
            url: checksums.compute_url_info(archive_dir / url_info.filename)
            for url, url_info in builder_cls.url_infos.items()
        }
        namespace = {"name": builder_cls.name, "url_infos": url_infos}
    elif info.name in ("cifar10", "cifar100"):
        # tfds' builder reads the *binary* CIFAR distribution; we take the python one (the one
        # most people have), so only the example generation is replaced. Features, version and
        # example ids stay tfds' own, so the result is indistinguishable from tfds' dataset.
        namespace = {
            "name": builder_cls.name,
            "_split_generators": lambda self, dl_manager: _cifar_python_splits(
                self, archive_dir / ARCHIVES[info.name][0]
            ),
        }
    else:  # imagenet2012: tfds' builder reads `manual_dir` as is.
        return builder_cls
    return type(builder_cls.__name__, (builder_cls,), namespace, skip_registration=True)


def _read_idx_header(path: pathlib.Path) -> tuple[int, ...]:
    """Returns the dimensions stored in an idx (.gz) file header; checks the uint8 magic."""
    with gzip.open(path, "rb") as f:
        magic = f.read(4)
        if magic[:3] != b"\x00\x00\x08":
            raise RuntimeError(f"{path} is not an idx file of uint8 (magic {magic.hex()}).")
        return tuple(int.from_bytes(f.read(4), "big") for _ in range(magic[3]))


def _check_idx_files(info: DatasetInfo, archive_dir: pathlib.Path) -> None:
    height, width, _ = info.image_shape
    for prefix, count in (("train", info.num_train), ("t10k", info.num_test)):
        images = _read_idx_header(archive_dir / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx_header(archive_dir / f"{prefix}-labels-idx1-ubyte.gz")
        if images != (count, height, width) or labels != (count,):
            raise RuntimeError(
                f"{archive_dir}/{prefix}-*: images {images}, labels {labels};"
                f" expected ({count}, {height}, {width}) and ({count},)."
            )


def _cifar_python_splits(builder, archive: pathlib.Path) -> dict[str, object]:
    """Split generators for tfds' CIFAR builders, reading the pickled python archive."""
    batches = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                batches[pathlib.PurePath(member.name).name] = pickle.load(
                    tar.extractfile(member), encoding="bytes"
                )
    if "batches.meta" in batches:  # CIFAR-10
        train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
        test = [batches["test_batch"]]
        names = {"label": batches["batches.meta"][b"label_names"]}
        keys = {"label": b"labels"}
    else:  # CIFAR-100
        train, test = [batches["train"]], [batches["test"]]
        meta = batches["meta"]
        names = {"label": meta[b"fine_label_names"], "coarse_label": meta[b"coarse_label_names"]}
        keys = {"label": b"fine_labels", "coarse_label": b"coarse_labels"}
    for key, label_names in names.items():
        builder.info.features[key].names = [n.decode() for n in label_names]
    return {
        "train": _cifar_examples("train_", train, keys),
        "test": _cifar_examples("test_", test, keys),
    }


def _cifar_examples(prefix: str, batches: Sequence[dict], keys: dict[str, bytes]):
    """Yields (key, example) like tfds' CIFAR builder: rows are 3072 bytes, channel-planar."""
    index = 0
    for batch in batches:
        images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for row, image in enumerate(images):
            example = {key: int(batch[field][row]) for key, field in keys.items()}
            yield index, {"id": f"{prefix}{index:05d}", "image": image, **example}
            index += 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--archive_dir", required=True, help="directory holding the archives")
    parser.add_argument("--data_dir", default="~/tensorflow_datasets", help="tfds data_dir")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    prepare(args.dataset, data_dir=args.data_dir, archive_dir=args.archive_dir)
    info = get_dataset_info(args.dataset)
    print(
        f"{args.dataset}: {info.num_train} train / {info.num_test} test examples verified in"
        f" {pathlib.Path(args.data_dir).expanduser()} ({time.perf_counter() - start:.1f} s)."
    )


if __name__ == "__main__":
    main()

"""Tests for krause.data: preparation from archives, pipeline determinism/sharding, mixing."""

from __future__ import annotations

import dataclasses
import gzip
import io
import itertools
import pickle
import tarfile

import numpy as np
import optax
import pytest
from PIL import Image

from krause.data import (
    DATASETS,
    default_input_config,
    get_dataset_info,
    make_eval_batches,
    make_train_iterator,
    num_eval_batches,
    num_train_examples,
    prepare,
    split_indices,
)
from krause.data import augment as aug
from krause.data.mixing import mix_batch, one_hot
from krause.data.prepare import main as prepare_main

# ----------------------------------------------------------------------------- fixtures


def _write_idx(path, array: np.ndarray) -> None:
    """Writes a uint8 array in the idx format (magic 0x0000 08 ndim, big-endian dims), gzipped."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _shrink(monkeypatch, name: str, num_train: int, num_test: int) -> None:
    """Makes the registry expect a tiny dataset."""
    info = dataclasses.replace(DATASETS[name], num_train=num_train, num_test=num_test)
    monkeypatch.setitem(DATASETS, name, info)


def _cifar_row(image: np.ndarray) -> np.ndarray:
    """The CIFAR python layout: 1024 red, then 1024 green, then 1024 blue bytes, row-major."""
    return np.concatenate([image[..., channel].ravel() for channel in range(3)])


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


def _read_split(name: str, split: str, data_dir) -> list[dict]:
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return [source[i] for i in range(len(source))]


def _images(rng, n: int, shape) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ----------------------------------------------------------------------------- registry, errors


def test_registry_and_unknown_dataset():
    info = get_dataset_info("cifar100")
    assert (info.image_shape, info.num_classes, info.num_train) == ((32, 32, 3), 100, 50_000)
    assert get_dataset_info("imagenet2012").test_split == "validation"
    with pytest.raises(ValueError, match="known datasets") as error:
        get_dataset_info("svhn")
    for name in ("cifar10", "cifar100", "mnist", "fashion_mnist", "imagenet2012"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="fashion_mnist"):
        prepare("svhn", data_dir="/nonexistent", archive_dir="/nonexistent")


@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("fashion_mnist", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]),
        ("cifar10", ["cifar-10-python.tar.gz"]),
        ("cifar100", ["cifar-100-python.tar.gz"]),
        ("imagenet2012", ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"]),
    ],
)
def test_missing_archive_names_directory_and_files(tmp_path, name, files):
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        prepare(name, data_dir=tmp_path / "tfds", archive_dir=archive_dir)
    message = str(error.value)
    assert str(archive_dir) in message
    for file in files:
        assert file in message


# ----------------------------------------------------------------------------- preparation


def test_prepare_idx_round_trips_pixels_and_labels(tmp_path, monkeypatch, capsys):
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    # tfds' builder hard-codes the real sizes; the fixture is tiny.
    monkeypatch.setattr(tfds_mnist, "_TRAIN_EXAMPLES", 11)
    monkeypatch.setattr(tfds_mnist, "_TEST_EXAMPLES", 5)
    _shrink(monkeypatch, "fashion_mnist", 11, 5)
    rng = np.random.default_rng()
    archive_dir, data_dir = tmp_path / "archives", tmp_path / "tfds"
    archive_dir.mkdir()
    expected = {}
    for prefix, split, n in (("train", "train", 11), ("t10k", "test", 5)):
        images, labels = _images(rng, n, (28, 28)), rng.integers(0, 10, n)
        _write_idx(archive_dir / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(archive_dir / f"{prefix}-labels-idx1-ubyte.gz", labels)
        expected[split] = sorted((int(y), x.tobytes()) for x, y in zip(images, labels, strict=True))

    prepare("fashion_mnist", data_dir=data_dir, archive_dir=archive_dir)

    for split, examples in expected.items():
        got = _read_split("fashion_mnist", split, data_dir)
        assert all(e["image"].shape == (28, 28, 1) and e["image"].dtype == np.uint8 for e in got)
        assert sorted((int(e["label"]), e["image"][..., 0].tobytes()) for e in got) == examples
    assert list(data_dir.glob("fashion_mnist/*/*.array_record*"))
    assert not list(data_dir.glob("downloads*"))  # Temporary extraction is cleaned up.

    # Idempotent: a second call rebuilds nothing and no longer needs the archives.
    stamps = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")}
    for path in archive_dir.iterdir():
        path.unlink()
    prepare_main(
        ["--dataset=fashion_mnist", f"--archive_dir={archive_dir}", f"--data_dir={data_dir}"]
    )
    assert "11 train / 5 test examples verified" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")} == stamps


def test_prepare_idx_rejects_wrong_counts(tmp_path):
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    rng = np.random.default_rng()
    for prefix in ("train", "t10k"):
        _write_idx(archive_dir / f"{prefix}-images-idx3-ubyte.gz", _images(rng, 3, (28, 28)))
        _write_idx(archive_dir / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, 3))
    with pytest.raises(RuntimeError, match="60000"):
        prepare("mnist", data_dir=tmp_path / "tfds", archive_dir=archive_dir)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_prepare_cifar_python_archive_round_trips(tmp_path, monkeypatch, name):
    rng = np.random.default_rng()
    cifar100 = name == "cifar100"
    sizes = {"train": [4] if cifar100 else [2, 1, 2, 1, 2], "test": [3]}
    _shrink(monkeypatch, name, sum(sizes["train"]), 3)
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    images = {split: _images(rng, sum(n), (32, 32, 3)) for split, n in sizes.items()}
    fine = {split: rng.integers(0, 100 if cifar100 else 10, len(x)) for split, x in images.items()}
    coarse = {split: rng.integers(0, 20, len(x)) for split, x in images.items()}
    if cifar100:
        folder, archive = "cifar-100-python", "cifar-100-python.tar.gz"
        files = {
            "train": {b"data": np.stack([_cifar_row(x) for x in images["train"]])},
            "test": {b"data": np.stack([_cifar_row(x) for x in images["test"]])},
            "meta": {
                b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
            },
        }
        for split in ("train", "test"):
            files[split][b"fine_labels"] = fine[split].tolist()
            files[split][b"coarse_labels"] = coarse[split].tolist()
    else:
        folder, archive = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        starts = np.cumsum([0, *sizes["train"]])
        files = {
            f"data_batch_{i + 1}": {
                b"data": np.stack([_cifar_row(x) for x in images["train"][a:b]]),
                b"labels": fine["train"][a:b].tolist(),
            }
            for i, (a, b) in enumerate(itertools.pairwise(starts))
        }
        files["test_batch"] = {
            b"data": np.stack([_cifar_row(x) for x in images["test"]]),
            b"labels": fine["test"].tolist(),
        }
        files["batches.meta"] = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    with tarfile.open(archive_dir / archive, "w:gz") as tar:
        for member, content in files.items():
            _tar_add(tar, f"{folder}/{member}", pickle.dumps(content, protocol=2))

    prepare(name, data_dir=tmp_path / "tfds", archive_dir=archive_dir)

    for split in ("train", "test"):
        got = sorted(_read_split(name, split, tmp_path / "tfds"), key=lambda e: e["id"])
        assert [e["id"].decode() for e in got] == [f"{split}_{i:05d}" for i in range(len(got))]
        np.testing.assert_array_equal(np.stack([e["image"] for e in got]), images[split])
        np.testing.assert_array_equal([e["label"] for e in got], fine[split])
        if cifar100:
            np.testing.assert_array_equal([e["coarse_label"] for e in got], coarse[split])


def test_prepare_imagenet_manual_archives(tmp_path, monkeypatch):
    rng = np.random.default_rng()
    _shrink(monkeypatch, "imagenet2012", 3, 2)

    def jpeg() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(_images(rng, 1, (20, 26, 3))[0]).save(buffer, format="JPEG")
        return buffer.getvalue()

    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    train = {"n01440764": 2, "n01443537": 1}  # Classes 0 and 1 of tfds' label list.
    with tarfile.open(archive_dir / "ILSVRC2012_img_train.tar", "w") as tar:
        for synset, count in train.items():
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as inner_tar:
                for i in range(count):
                    _tar_add(inner_tar, f"{synset}_{i}.JPEG", jpeg())
            _tar_add(tar, f"{synset}.tar", inner.getvalue())
    with tarfile.open(archive_dir / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in (1, 2):  # tfds' validation labels: n01751748 (65), n09193705 (970).
            _tar_add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", jpeg())

    prepare("imagenet2012", data_dir=tmp_path / "tfds", archive_dir=archive_dir)

    labels = {
        e["file_name"].decode(): int(e["label"])
        for e in _read_split("imagenet2012", "train", tmp_path / "tfds")
    }
    assert labels == {"n01440764_0.JPEG": 0, "n01440764_1.JPEG": 0, "n01443537_0.JPEG": 1}
    val = _read_split("imagenet2012", "validation", tmp_path / "tfds")
    assert sorted(int(e["label"]) for e in val) == [65, 970]
    assert all(e["image"].shape == (20, 26, 3) for e in val)

    config = default_input_config("imagenet2012", "imagenet")
    config.update(data_dir=str(tmp_path / "tfds"), global_batch_size=2, eval_batch_size=4)
    batch = next(make_train_iterator(config, seed=0, process_index=0, process_count=1))
    assert batch["image"].shape == (2, 224, 224, 3) and batch["soft_label"].shape == (2, 1000)
    (eval_batch,) = make_eval_batches(config, process_index=0, process_count=1)
    assert eval_batch["image"].shape == (4, 224, 224, 3)
    assert eval_batch["mask"].tolist() == [True, True, False, False]


# ----------------------------------------------------------------------------- pipeline


def _indexed_source(n: int, shape=(32, 32, 3), num_classes: int = 10, seed=None) -> list[dict]:
    """Random images whose first two bytes encode their index."""
    rng = np.random.default_rng(seed)
    images = _images(rng, n, shape)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(n) % 256, np.arange(n) // 256
    return [{"image": x, "label": rng.integers(num_classes)} for x in images]


def _ids(batch: dict) -> list[int]:
    tokens = batch["tokens"]
    channels = 3
    return (tokens[:, 0] + 256 * tokens[:, channels]).tolist()


def _tokens_config(global_batch: int = 12, eval_batch: int = 12):
    config = default_input_config("cifar10", "pixels")
    config.update(global_batch_size=global_batch, eval_batch_size=eval_batch, num_threads=2)
    return config


def _take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def test_train_epochs_are_reshuffled_permutations():
    n, g = 36, 12
    source = _indexed_source(n)
    batches = _take(
        make_train_iterator(
            _tokens_config(g), seed=7, process_count=1, process_index=0, source=source
        ),
        9,
    )
    epochs = [[i for b in batches[e * 3 : e * 3 + 3] for i in _ids(b)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(n))


def test_train_determinism_and_resume():
    config = default_input_config("cifar10", "cifar_swin")
    config.update(global_batch_size=8, num_threads=3)
    source = _indexed_source(20)  # 2.5 steps per epoch: resuming crosses epoch boundaries.

    def run(seed, start_step=0, steps=6):
        kwargs = dict(seed=seed, start_step=start_step, process_index=0, process_count=1)
        return _take(make_train_iterator(config, source=source, **kwargs), steps)

    reference = run(seed=3407)
    for a, b in zip(reference, run(seed=3407), strict=True):
        for key in ("image", "label", "soft_label"):
            np.testing.assert_array_equal(a[key], b[key])
    for start in (1, 3, 4):
        for a, b in zip(
            reference[start:], run(seed=3407, start_step=start, steps=6 - start), strict=True
        ):
            for key in ("image", "label", "soft_label"):
                np.testing.assert_array_equal(a[key], b[key])
    other = run(seed=3408, steps=1)[0]
    assert not np.array_equal(other["image"], reference[0]["image"])


@pytest.mark.parametrize("recipe", ["pixels", "cifar_swin"])
def test_processes_read_disjoint_shards_of_the_global_batch(recipe):
    config = default_input_config("cifar10", recipe)
    config.update(global_batch_size=12, mixup_alpha=0.0, cutmix_alpha=0.0, num_threads=2)
    source = _indexed_source(30)
    key = "tokens" if recipe == "pixels" else "image"

    def run(index, count):
        kwargs = dict(seed=1, process_index=index, process_count=count, source=source)
        return _take(make_train_iterator(config, start_step=2, **kwargs), 4)

    whole = run(0, 1)
    shards = [run(i, 3) for i in range(3)]
    for step, global_batch in enumerate(whole):
        parts = [shard[step] for shard in shards]
        assert all(p[key].shape[0] == 4 for p in parts)
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), global_batch[key])
        np.testing.assert_array_equal(
            np.concatenate([p["label"] for p in parts]), global_batch["label"]
        )
    tokens_config = _tokens_config(12)
    ids = [
        _ids(b)
        for i in range(3)
        for b in _take(
            make_train_iterator(
                tokens_config, seed=1, process_index=i, process_count=3, source=source
            ),
            2,
        )
    ]
    flat = [i for batch_ids in ids for i in batch_ids]
    assert len(flat) == len(set(flat)) == 24  # Disjoint, never duplicated.


@pytest.mark.parametrize(("n", "process_count"), [(50, 2), (48, 2), (7, 1), (13, 4)])
def test_eval_covers_every_example_exactly_once(n, process_count):
    config = _tokens_config(eval_batch=8)
    source = _indexed_source(n)
    seen, counts = [], []
    for index in range(process_count):
        batches = list(
            make_eval_batches(
                config, process_index=index, process_count=process_count, source=source
            )
        )
        counts.append(len(batches))
        for batch in batches:
            assert batch["tokens"].shape == (8 // process_count, 32 * 32 * 3)
            assert batch["mask"].dtype == np.bool_
            seen += [i for i, m in zip(_ids(batch), batch["mask"], strict=True) if m]
    assert counts == [num_eval_batches(n, 8)] * process_count
    assert sorted(seen) == list(range(n))


def test_pixel_tokens_are_row_column_channel_ordered():
    image = np.zeros((32, 32, 3), np.uint8)
    image[0, 0] = [1, 2, 3]
    image[0, 1] = [4, 5, 6]
    image[1, 0] = [7, 8, 9]
    image[31, 31] = [250, 251, 255]
    source = [{"image": image, "label": 4}]
    (batch,) = make_eval_batches(
        _tokens_config(eval_batch=1), process_index=0, process_count=1, source=source
    )
    tokens = batch["tokens"][0]
    assert tokens.dtype == np.int32 and tokens.shape == (3072,)
    assert tokens[:6].tolist() == [1, 2, 3, 4, 5, 6]
    assert tokens[6:96].tolist() == [0] * 90
    assert tokens[96:99].tolist() == [7, 8, 9]  # Row 1 starts at 32 pixels * 3 channels.
    assert tokens[-3:].tolist() == [250, 251, 255]
    assert batch["label"].tolist() == [4]


def test_eval_images_are_normalised_with_dataset_statistics():
    rng = np.random.default_rng()
    images = _images(rng, 3, (28, 28, 1))
    config = default_input_config("mnist")
    config.eval_batch_size = 3
    (batch,) = make_eval_batches(
        config, process_index=0, process_count=1, source=[{"image": x, "label": 1} for x in images]
    )
    expected = (images / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(batch["image"], expected, rtol=1e-5, atol=1e-6)
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32


# ----------------------------------------------------------------------------- validation part


def _stream_ids(config, source, seed: int, steps: int) -> list[int]:
    it = make_train_iterator(config, seed=seed, process_index=0, process_count=1, source=source)
    return [i for batch in _take(it, steps) for i in _ids(batch)]


def _validation_ids(config, source, process_count: int = 1) -> list[int]:
    ids = []
    for index in range(process_count):
        for batch in make_eval_batches(
            config,
            split="validation",
            process_index=index,
            process_count=process_count,
            source=source,
        ):
            ids += [i for i, m in zip(_ids(batch), batch["mask"], strict=True) if m]
    return ids


@pytest.mark.parametrize(("n", "validation_size"), [(40, 7), (23, 1), (30, 29)])
def test_validation_part_is_held_out_of_the_train_stream(n, validation_size):
    source = _indexed_source(n)
    config = _tokens_config(global_batch=4, eval_batch=4)
    config.validation_size = validation_size
    # The documented fixed subset: the last V of RandomState(0)'s permutation, for every seed.
    expected = set(np.random.RandomState(0).permutation(n)[n - validation_size :].tolist())
    validation = _validation_ids(config, source)
    assert len(validation) == validation_size and set(validation) == expected
    assert sorted(_validation_ids(config, source, process_count=2)) == sorted(validation)
    train_size = n - validation_size
    steps = -(-2 * train_size // 4)  # Two epochs of the reduced split.
    for seed in (0, 1, 3407):
        ids = _stream_ids(config, source, seed, steps)
        assert sorted(ids[:train_size]) == sorted(set(range(n)) - expected)  # One epoch.
        assert not set(ids) & expected
        assert ids == _stream_ids(config, source, seed, steps)  # Deterministic.
    train, held_out = split_indices(n, validation_size)
    assert (len(train), len(held_out)) == (train_size, validation_size)
    assert set(held_out.tolist()) == expected and not set(train.tolist()) & expected
    assert _validation_ids(config, source) == validation  # Deterministic.


def test_validation_examples_are_preprocessed_for_evaluation(monkeypatch):
    _shrink(monkeypatch, "cifar10", 24, 5)
    source = _indexed_source(24)
    config = default_input_config("cifar10", "cifar")
    config.update(validation_size=5, eval_batch_size=5, num_threads=1)
    assert num_train_examples(config) == 19
    (batch,) = make_eval_batches(
        config, split="validation", process_index=0, process_count=1, source=source
    )
    _, held_out = split_indices(24, 5)
    info = get_dataset_info("cifar10")
    images = np.stack([source[i]["image"] for i in held_out])
    expected = (images / 255.0 - np.asarray(info.mean)) / np.asarray(info.std)
    np.testing.assert_allclose(batch["image"], expected, rtol=1e-5, atol=1e-5)  # No augmentation.
    np.testing.assert_array_equal(batch["label"], [source[i]["label"] for i in held_out])
    assert batch["mask"].all() and "soft_label" not in batch


def test_validation_config_errors():
    source = _indexed_source(10)
    config = _tokens_config()
    with pytest.raises(ValueError, match="validation_size > 0"):
        make_eval_batches(config, split="validation", process_index=0, process_count=1)
    with pytest.raises(ValueError, match="'train'"):
        make_eval_batches(config, split="train", process_index=0, process_count=1)
    config.validation_size = 10
    with pytest.raises(ValueError, match=r"validation_size 10 must be in \[0, 10\)"):
        make_train_iterator(config, seed=0, process_index=0, process_count=1, source=source)
    config.validation_size = -1
    with pytest.raises(ValueError, match="validation_size must be an integer >= 0"):
        make_train_iterator(config, seed=0, process_index=0, process_count=1, source=source)
    config = default_input_config("imagenet2012", "imagenet")
    config.rand_augment_magnitude = 31
    with pytest.raises(ValueError, match="rand_augment_magnitude"):
        make_train_iterator(config, seed=0, process_index=0, process_count=1, source=source)


# ----------------------------------------------------------------------------- mixing


def test_label_smoothing_is_applied_after_mixing():
    source = _indexed_source(16)
    config = default_input_config("cifar10", "cifar")
    config.update(global_batch_size=8, num_threads=1)
    assert (config.mix_prob, config.cutmix_prob, config.label_smoothing) == (1.0, 0.8, 0.1)

    def first_batches(smoothing):
        config.label_smoothing = smoothing
        it = make_train_iterator(config, seed=5, process_index=0, process_count=1, source=source)
        return _take(it, 4)

    for mixed, smoothed in zip(first_batches(0.0), first_batches(0.1), strict=True):
        labels, partner = mixed["label"], np.roll(mixed["label"], 1)
        # Mixed targets: lam on the example's class, 1 - lam on its partner's.
        lam = mixed["soft_label"][np.arange(8), labels]
        expected = lam[:, None] * np.eye(10)[labels] + (1 - lam[:, None]) * np.eye(10)[partner]
        np.testing.assert_allclose(mixed["soft_label"], expected, atol=1e-6)
        np.testing.assert_allclose(mixed["soft_label"].sum(-1), 1.0, atol=1e-6)
        reference = np.asarray(optax.smooth_labels(mixed["soft_label"], 0.1))
        np.testing.assert_allclose(smoothed["soft_label"], reference, atol=1e-6)
        assert smoothed["soft_label"].min() >= 0.01 - 1e-6  # Smoothing survives mixing.
        np.testing.assert_allclose(smoothed["soft_label"].sum(-1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(mixed["image"], smoothed["image"])


@pytest.mark.parametrize("trial", range(5))
def test_cutmix_pasted_area_equals_label_weight(trial):
    rng = np.random.default_rng()
    b, h, w = 6, int(rng.integers(5, 40)), int(rng.integers(5, 40))
    labels = rng.permutation(10)[:b]
    values = rng.permutation(np.arange(1, 200))[:b].astype(np.float32)  # Distinct per image.
    images = np.broadcast_to(values[:, None, None, None], (b, h, w, 3)).copy()
    mixed, targets = mix_batch(images, one_hot(labels, 10), rng, mixup_alpha=0.0, cutmix_alpha=1.0)
    partner = np.roll(np.arange(b), 1)
    pasted = (mixed[..., 0] == values[partner, None, None]).mean(axis=(1, 2))
    kept = (mixed[..., 0] == values[:, None, None]).mean(axis=(1, 2))
    np.testing.assert_allclose(pasted + kept, 1.0)
    np.testing.assert_allclose(targets[np.arange(b), labels[partner]], pasted, atol=1e-6)
    np.testing.assert_allclose(targets[np.arange(b), labels], kept, atol=1e-6)
    np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
    # The pasted region is one rectangle, the same for the whole batch.
    rows, cols = np.nonzero(mixed[0, ..., 0] == values[partner[0]])
    if rows.size:
        assert rows.size == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


@pytest.mark.parametrize("trial", range(3))
def test_mixup_blends_images_and_targets_with_one_lambda(trial):
    rng = np.random.default_rng()
    b = 5
    labels = rng.permutation(10)[:b]
    images = rng.normal(size=(b, 4, 4, 3)).astype(np.float32)
    mixed, targets = mix_batch(images, one_hot(labels, 10), rng, mixup_alpha=0.8, cutmix_alpha=0.0)
    lam = targets[0, labels[0]]
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(targets[np.arange(b), labels], lam, atol=1e-6)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * np.roll(images, 1, 0), atol=1e-5)


def test_mix_probabilities_choose_between_cutmix_and_mixup():
    rng = np.random.default_rng(0)
    images = np.stack([np.full((8, 8, 1), v, np.float32) for v in (1.0, 2.0)])
    targets = one_hot(np.array([0, 1]), 2)
    cutmix = 0
    for _ in range(400):
        mixed, _ = mix_batch(
            images, targets, rng, mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_prob=0.8
        )
        cutmix += np.isin(mixed, (1.0, 2.0)).all()  # CutMix copies pixels, MixUp blends them.
    assert 0.74 < cutmix / 400 < 0.86
    unmixed, same = mix_batch(images, targets, rng, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0)
    assert unmixed is images and same is targets


# ----------------------------------------------------------------------------- augmentations


def test_random_crop_is_a_window_of_the_zero_padded_image():
    rng = np.random.default_rng()
    image = _images(rng, 1, (10, 12, 3))[0]
    padded = np.zeros((18, 20, 3), np.uint8)
    padded[4:14, 4:16] = image
    windows = {padded[t : t + 10, s : s + 12].tobytes() for t in range(9) for s in range(9)}
    for _ in range(20):
        crop = aug.random_crop(image, rng, padding=4)
        assert crop.shape == image.shape and crop.tobytes() in windows


def test_geometric_and_colour_ops_keep_shape_and_dtype():
    rng = np.random.default_rng()
    for shape in ((28, 28, 1), (32, 32, 3), (40, 30, 3)):
        image = _images(rng, 1, shape)[0]
        flipped = {aug.flip(image, rng).tobytes() for _ in range(20)}
        assert flipped == {image.tobytes(), image[:, ::-1].tobytes()}
        out = aug.random_resized_crop(image, rng, size=24)
        assert out.shape == (24, 24, shape[2]) and out.dtype == np.uint8
        for _ in range(10):
            out = aug.rand_augment(image, rng, num_ops=2, magnitude=9)
            assert out.shape == shape and out.dtype == np.uint8
        assert aug.color_jitter(image, rng, strength=0.4).shape == shape
        assert aug.resize_center_crop(image, size=16, crop_fraction=0.875).shape[:2] == (16, 16)
    square = _images(rng, 1, (16, 16, 3))[0]
    full = aug.random_resized_crop(square, rng, size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(full, square)


def test_random_erasing_replaces_one_rectangle():
    rng = np.random.default_rng()
    image = np.full((32, 32, 3), 7.0, np.float32)
    assert aug.random_erasing(image, rng, prob=0.0) is image
    erased = aug.random_erasing(image, rng, prob=1.0)
    rows, cols = np.nonzero((erased != 7.0).any(-1))
    assert 12 <= rows.size <= 1024 / 3 * 1.2  # Area 2%-33%, up to rounding.
    assert rows.size == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_config_validation():
    with pytest.raises(ValueError, match="known recipes"):
        default_input_config("cifar10", "autoaugment")
    config = default_input_config("cifar10")
    config.augment = ("random_crop", "mosaic")
    with pytest.raises(ValueError, match="mosaic"):
        make_train_iterator(config, seed=0, process_index=0, process_count=1, source=[])
    config = default_input_config("cifar10", "pixels")
    config.augment = ("flip",)
    with pytest.raises(ValueError, match="tokens"):
        make_train_iterator(config, seed=0, process_index=0, process_count=1, source=[])
    config = default_input_config("cifar10")
    with pytest.raises(ValueError, match="split"):
        make_train_iterator(config, seed=0, process_index=0, process_count=3, source=[])

"""Recipe fidelity: every data-pipeline setting of the paper's recipes against the reference code's
semantics (torchvision transforms on PIL images, torchvision v2 MixUp/CutMix).

References are written here from torchvision's documented formulas (NumPy, or PIL called with
independently computed parameters, which is what torchvision itself does for PIL images); the
magnitudes, sizes and constants are never taken from the code under test.
"""

from __future__ import annotations

import gzip
import inspect
import math
import pathlib

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from krause.data import augment as aug
from krause.data import default_input_config, get_dataset_info, make_train_iterator
from krause.data.mixing import cutmix_box

# ----------------------------------------------------------------------------- recipe constants

MIX = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0, "cutmix_prob": 0.8}


def _fields(config, names):
    return {name: config[name] for name in names}


def test_cifar_recipes_match_the_paper():
    cifar = default_input_config("cifar10", "cifar")
    assert tuple(cifar.augment) == ("random_crop", "flip")
    assert cifar.crop_padding == 4 and cifar.random_erasing == 0.0
    assert _fields(cifar, MIX) == MIX and cifar.label_smoothing == 0.1
    swin = default_input_config("cifar10", "cifar_swin")
    assert tuple(swin.augment) == ("random_crop", "flip") and swin.random_erasing == 0.25
    assert _fields(swin, MIX) == MIX and swin.label_smoothing == 0.1


@pytest.mark.parametrize("recipe", ["imagenet", "imagenet_b"])
def test_imagenet_recipes_match_the_reference(recipe):
    config = default_input_config("imagenet2012", recipe)
    # Reference: RandomResizedCrop(224, bicubic), flip, RandAugment(num_ops=2, magnitude=9)
    # [, ColorJitter(0.4, 0.4, 0.4)], ToTensor, Normalize, RandomErasing(p=0.25).
    expected_ops = ("random_resized_crop", "flip", "rand_augment")
    if recipe == "imagenet_b":
        expected_ops += ("color_jitter",)
    assert tuple(config.augment) == expected_ops
    assert config.color_jitter == (0.4 if recipe == "imagenet_b" else 0.0)
    assert tuple(config.rrc_scale) == (0.08, 1.0)
    assert tuple(config.rrc_ratio) == (3 / 4, 4 / 3) and config.rrc_interpolation == "bicubic"
    assert (config.rand_augment_num_ops, config.rand_augment_magnitude) == (2, 9)
    assert config.rand_augment_num_bins == 31  # torchvision's num_magnitude_bins default
    assert config.random_erasing == 0.25
    assert _fields(config, MIX) == MIX and config.label_smoothing == 0.1
    assert config.global_batch_size == 1024
    # Evaluation: Resize(256) + CenterCrop(224).
    assert get_dataset_info("imagenet2012").image_shape == (224, 224, 3)
    assert round(224 / config.eval_crop_fraction) == 256


def test_normalisation_constants():
    for name in ("cifar10", "cifar100"):
        info = get_dataset_info(name)
        assert info.mean == (0.4914, 0.4822, 0.4465)
        assert info.std == (0.2023, 0.1994, 0.2010)
    imagenet = get_dataset_info("imagenet2012")
    assert imagenet.mean == (0.485, 0.456, 0.406) and imagenet.std == (0.229, 0.224, 0.225)
    mnist = get_dataset_info("mnist")
    assert (mnist.mean, mnist.std) == ((0.1307,), (0.3081,))


def test_fashion_mnist_constants_are_its_training_statistics():
    path = pathlib.Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    if not path.exists():
        pytest.skip(f"{path} missing (apt-get install dataset-fashion-mnist)")
    pixels = np.frombuffer(gzip.decompress(path.read_bytes())[16:], np.uint8) / 255.0
    assert pixels.size == 60_000 * 28 * 28
    info = get_dataset_info("fashion_mnist")
    np.testing.assert_allclose(info.mean, [pixels.mean()], atol=5e-5)
    np.testing.assert_allclose(info.std, [pixels.std()], atol=5e-5)


# ----------------------------------------------------------------------------- RandAugment


def _torchvision_space(num_bins: int, width: int, height: int) -> dict[str, np.ndarray | float]:
    """torchvision RandAugment._augmentation_space, in NumPy (float32 like torch.linspace)."""

    def linspace(start, stop):
        return np.linspace(start, stop, num_bins, dtype=np.float32)

    return {
        "identity": 0.0,
        "shear_x": linspace(0.0, 0.3),
        "shear_y": linspace(0.0, 0.3),
        "translate_x": linspace(0.0, 150.0 / 331.0 * width),
        "translate_y": linspace(0.0, 150.0 / 331.0 * height),
        "rotate": linspace(0.0, 30.0),
        "brightness": linspace(0.0, 0.9),
        "color": linspace(0.0, 0.9),
        "contrast": linspace(0.0, 0.9),
        "sharpness": linspace(0.0, 0.9),
        "posterize": 8 - np.round(np.arange(num_bins) / ((num_bins - 1) / 4)).astype(int),
        "solarize": linspace(255.0, 0.0),
        "autocontrast": 0.0,
        "equalize": 0.0,
    }


@pytest.mark.parametrize(("magnitude", "num_bins"), [(9, 31), (0, 31), (30, 31), (5, 10)])
def test_rand_augment_magnitudes_are_torchvision_bins(rng, magnitude, num_bins):
    width, height = (int(v) for v in rng.integers(8, 300, size=2))
    got = aug.rand_augment_magnitudes(magnitude, num_bins, width=width, height=height)
    space = _torchvision_space(num_bins, width, height)
    assert set(got) == set(space)
    for name, values in space.items():
        expected = values if np.ndim(values) == 0 else values[magnitude]
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-5, err_msg=name)


def test_rand_augment_magnitude_9_is_three_tenths_of_each_maximum():
    got = aug.rand_augment_magnitudes(9, 31, width=224, height=224)
    assert got["rotate"] == pytest.approx(9.0)  # degrees, not 27
    assert got["shear_x"] == pytest.approx(0.09)
    assert int(got["translate_x"]) == 30  # 150/331 * 224 * 0.3 = 30.45 pixels
    assert got["brightness"] == pytest.approx(0.27)
    assert got["posterize"] == 7 and got["solarize"] == pytest.approx(178.5)
    with pytest.raises(ValueError, match="31"):
        aug.rand_augment_magnitudes(31, 31, width=8, height=8)


def _affine_nearest(image: np.ndarray, a, b, c, d, e, f) -> np.ndarray:
    """Output pixel (x, y) reads input floor(a x' + b y' + c, d x' + e y' + f) at pixel centres
    x' = x + 0.5, y' = y + 0.5 (PIL's inverse-map convention); 0 outside."""
    height, width, _ = image.shape
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    xi = np.floor(a * xs + b * ys + c).astype(int)
    yi = np.floor(d * xs + e * ys + f).astype(int)
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    read = image[np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)]
    return np.where(inside[..., None], read, 0).astype(np.uint8)


def _shift(image: np.ndarray, pixels: int, axis: int) -> np.ndarray:
    """Output reads input at +pixels along `axis` (x: 1, y: 0), zero fill."""
    out = np.zeros_like(image)
    size = image.shape[axis]
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    if pixels >= 0:
        src[axis], dst[axis] = slice(pixels, size), slice(0, size - pixels)
    else:
        src[axis], dst[axis] = slice(0, size + pixels), slice(-pixels, size)
    out[tuple(dst)] = image[tuple(src)]
    return out


def _blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(degenerate + factor * (image - degenerate), 0, 255)


def _reference_op(image: np.ndarray, name: str, m: float) -> tuple[np.ndarray, float]:
    """(reference output as float, allowed max abs difference) for op `name` at signed m."""
    x = image.astype(np.float64)
    height, width, channels = image.shape
    if name == "identity":
        return x, 0
    if name == "shear_x":
        return _affine_nearest(image, 1, m, 0, 0, 1, 0).astype(float), 0
    if name == "shear_y":
        return _affine_nearest(image, 1, 0, 0, m, 1, 0).astype(float), 0
    if name == "translate_x":
        return _shift(image, int(m), axis=1).astype(float), 0
    if name == "translate_y":
        return _shift(image, int(m), axis=0).astype(float), 0
    if name == "rotate":  # counter-clockwise by m degrees about the centre
        t = math.radians(m)
        cx, cy = width / 2, height / 2
        coeffs = (math.cos(t), -math.sin(t), 0, math.sin(t), math.cos(t), 0)
        a, b, _, d, e, _ = coeffs
        c = cx - a * cx - b * cy
        f = cy - d * cx - e * cy
        return _affine_nearest(image, a, b, c, d, e, f).astype(float), 0
    if name == "brightness":
        return _blend(0.0, x, 1 + m), 1
    if name == "contrast":
        gray = x if channels == 1 else x @ np.array([0.299, 0.587, 0.114])
        return _blend(float(int(gray.mean() + 0.5)), x, 1 + m), 1
    if name == "color":
        gray = x if channels == 1 else (x @ np.array([0.299, 0.587, 0.114]))[..., None]
        return _blend(gray, x, 1 + m), 1.2
    if name == "sharpness":  # PIL's own filter, at the independently computed factor
        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
        out = np.asarray(ImageEnhance.Sharpness(pil).enhance(1 + m), dtype=float)
        return out.reshape(image.shape), 0
    if name == "posterize":
        return (image & np.uint8(256 - 2 ** (8 - int(m)))).astype(float), 0
    if name == "solarize":
        return np.where(x >= m, 255 - x, x), 0
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    op = {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize}[name]
    return np.asarray(op(pil), dtype=float).reshape(image.shape), 0


@pytest.mark.parametrize("shape", [(36, 40, 3), (28, 28, 1)])
def test_rand_augment_ops_at_bin_9_of_31_match_torchvision(rng, shape):
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    image[0, 0], image[0, 1] = 178, 179  # Straddle the solarize threshold 178.5.
    height, width, _ = shape
    space = _torchvision_space(31, width, height)
    for name, values in space.items():
        unsigned = float(values if np.ndim(values) == 0 else values[9])
        signs = (1, -1) if name in aug.RAND_AUGMENT_SIGNED else (1,)
        for sign in signs:
            got = aug.rand_augment_op(image, name, sign * unsigned).astype(float)
            expected, tolerance = _reference_op(image, name, sign * unsigned)
            assert got.shape == shape
            if name in ("shear_x", "shear_y", "rotate"):
                # Nearest-neighbour sampling: a float tie may land on the other neighbour.
                mismatched = (got != expected).any(-1).mean()
                assert mismatched < 0.01, (name, sign, mismatched)
            else:
                np.testing.assert_allclose(got, expected, atol=tolerance, err_msg=f"{name} {sign}")


def test_rand_augment_composes_ops_drawn_uniformly(rng):
    image = rng.integers(0, 256, size=(24, 30, 3), dtype=np.uint8)
    space = _torchvision_space(31, 30, 24)
    names = list(space)
    for _ in range(20):
        seed = int(rng.integers(1 << 31))
        got = aug.rand_augment(image, np.random.default_rng(seed), num_ops=2, magnitude=9)
        draw = np.random.default_rng(seed)
        expected = image
        for i in draw.integers(0, len(names), size=2):
            value = float(space[names[i]] if np.ndim(space[names[i]]) == 0 else space[names[i]][9])
            if names[i] in aug.RAND_AUGMENT_SIGNED and draw.random() < 0.5:
                value = -value
            expected = aug.rand_augment_op(expected, names[i], value)
        np.testing.assert_array_equal(got, expected)
    assert len(names) == 14


# ----------------------------------------------------------------------------- crops and resizes


def _torchvision_rrc_box(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params, in NumPy."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return h, w


def test_random_resized_crop_box_distribution_matches_torchvision(rng):
    height, width = 120, 90
    ours = np.array(
        [aug.random_resized_crop_box(height, width, rng)[2:] for _ in range(4000)], float
    )
    reference_rng = np.random.default_rng(int(rng.integers(1 << 31)))
    reference = np.array(
        [_torchvision_rrc_box(height, width, reference_rng) for _ in range(4000)], float
    )
    for boxes in (ours, reference):
        assert boxes.min() >= 1 and (boxes[:, 0] <= height).all() and (boxes[:, 1] <= width).all()
    area_ours, area_ref = (b.prod(1) / (height * width) for b in (ours, reference))
    log_ratio_ours, log_ratio_ref = (np.log(b[:, 1] / b[:, 0]) for b in (ours, reference))
    assert area_ours.min() >= 0.07 and area_ours.max() <= 1.0
    assert abs(log_ratio_ours).max() <= math.log(4 / 3) + 0.05
    # Means and spreads agree within ~5 standard errors.
    assert abs(area_ours.mean() - area_ref.mean()) < 5 * area_ref.std() / math.sqrt(2000)
    assert abs(log_ratio_ours.mean() - log_ratio_ref.mean()) < 5 * log_ratio_ref.std() / 40
    assert abs(area_ours.std() - area_ref.std()) < 0.02


def test_random_resized_crop_fallback_is_the_centred_clipped_box(rng):
    # No draw can fit a 10 x 100 image at full area: torchvision falls back to a centred box of
    # height 10 and width round(10 * 4/3) = 13, left (100 - 13) // 2 = 43.
    box = aug.random_resized_crop_box(10, 100, rng, scale=(1.0, 1.0))
    assert box == (0, 43, 10, 13)


def test_random_resized_crop_crops_then_resizes_bicubically(rng):
    image = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    seed = int(rng.integers(1 << 31))
    got = aug.random_resized_crop(image, np.random.default_rng(seed), size=32)
    top, left, h, w = aug.random_resized_crop_box(50, 70, np.random.default_rng(seed))
    crop = Image.fromarray(image[top : top + h, left : left + w])
    expected = np.asarray(crop.resize((32, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("height", "width", "new_h", "new_w", "top", "left"),
    [
        # torchvision Resize(256): shorter side 256, longer int(256 * long / short) (truncated);
        # CenterCrop(224): offset int(round((side - 224) / 2)), Python's round (half to even).
        (512, 518, 256, 259, 16, 18),  # 259 - 224 = 35: round(17.5) = 18
        (300, 403, 256, 343, 16, 60),  # 343.89 truncates to 343: round(59.5) = 60
        (403, 300, 343, 256, 60, 16),
        (375, 500, 256, 341, 16, 58),  # 341.33 -> 341: round(58.5) = 58
    ],
)
def test_eval_resize_and_center_crop(rng, height, width, new_h, new_w, top, left):
    assert new_w == int(256 * width / height) or new_h == int(256 * height / width)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    got = aug.resize_center_crop(image, size=224, crop_fraction=0.875)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(got, resized[top : top + 224, left : left + 224])


# ----------------------------------------------------------------------------- colour jitter


def test_color_jitter_0_4_scales_brightness_in_0_6_to_1_4(rng):
    # A grey image is unchanged by contrast and saturation; brightness multiplies it by U[0.6, 1.4].
    grey = np.full((4, 4, 3), 100, np.uint8)
    values = np.array([aug.color_jitter(grey, rng, strength=0.4)[0, 0, 0] for _ in range(400)])
    assert values.min() >= 59 and values.max() <= 140
    assert values.min() <= 65 and values.max() >= 135
    assert abs(values.mean() - 100) < 4


# ----------------------------------------------------------------------------- random erasing


def _torchvision_erasing_area(height, width, rng, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    """torchvision RandomErasing.get_params, in NumPy: erased area in pixels (0 if none fits)."""
    log_ratio = np.log(ratio)
    for _ in range(10):
        erase_area = height * width * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        h = round(math.sqrt(erase_area * aspect))
        w = round(math.sqrt(erase_area / aspect))
        if h < height and w < width:
            return h * w
    return 0


def test_random_erasing_defaults_are_torchvision_s():
    params = inspect.signature(aug.random_erasing_box).parameters
    assert params["scale"].default == (0.02, 0.33) and params["ratio"].default == (0.3, 3.3)
    assert inspect.signature(aug.random_erasing).parameters["value"].default == 0.0


def test_random_erasing_sets_one_rectangle_to_zero_per_example_with_probability(rng):
    height, width = 40, 30
    image = np.full((height, width, 3), 7.0, np.float32)
    erased_count, areas = 0, []
    for _ in range(3000):
        out = aug.random_erasing(image, rng, prob=0.25)
        changed = (out != 7.0).any(-1)
        if changed.any():
            erased_count += 1
            rows, cols = np.nonzero(changed)
            h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert rows.size == h * w and (out[changed] == 0.0).all()
            assert 0.3 * 0.7 <= h / w <= 3.3 / 0.7  # aspect range, up to rounding
            areas.append(h * w)
    # Probability per example: 0.25, within ~5 standard errors.
    assert abs(erased_count / 3000 - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 3000)
    reference_rng = np.random.default_rng(int(rng.integers(1 << 31)))
    reference = [_torchvision_erasing_area(height, width, reference_rng) for _ in range(3000)]
    reference = np.array([a for a in reference if a > 0], float)
    areas = np.array(areas, float)
    assert areas.max() <= 0.33 * height * width * 1.25
    standard_error = reference.std() * math.sqrt(1 / len(areas) + 1 / len(reference))
    assert abs(areas.mean() - reference.mean()) < 5 * standard_error


def test_pipeline_erases_after_normalisation_with_zeros(rng):
    # cifar_swin: random crop (zero padding, which normalises to -mean/std, never 0), flip,
    # normalise, then RandomErasing(0.25) writes exact zeros.
    images = rng.integers(1, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    source = [{"image": x, "label": i % 10} for i, x in enumerate(images)]
    config = default_input_config("cifar10", "cifar_swin")
    config.update(global_batch_size=16, mixup_alpha=0.0, cutmix_alpha=0.0, num_threads=1)
    config.random_erasing = 1.0
    iterator = make_train_iterator(config, seed=3, process_index=0, process_count=1, source=source)
    batch = next(iterator)
    zeros = (batch["image"] == 0.0).all(-1)
    assert zeros.any(axis=(1, 2)).mean() > 0.9  # (a draw can fail to fit: rarely)
    for mask in zeros:
        rows, cols = np.nonzero(mask)
        if rows.size:
            assert rows.size == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


# ----------------------------------------------------------------------------- mixing


def _torchvision_cutmix_box(height, width, lam, r_y, r_x):
    """torchvision v2.CutMix's box: (y1, y2, x1, x2)."""
    r = 0.5 * math.sqrt(1.0 - lam)
    r_w_half, r_h_half = int(r * width), int(r * height)
    x1, x2 = max(r_x - r_w_half, 0), min(r_x + r_w_half, width)
    y1, y2 = max(r_y - r_h_half, 0), min(r_y + r_h_half, height)
    return y1, y2, x1, x2


def test_cutmix_box_matches_torchvision(rng):
    for _ in range(500):
        height, width = (int(v) for v in rng.integers(2, 64, size=2))
        lam = float(rng.beta(1.0, 1.0))
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        assert cutmix_box(height, width, lam, cy, cx) == _torchvision_cutmix_box(
            height, width, lam, cy, cx
        )

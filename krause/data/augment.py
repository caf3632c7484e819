"""Per-example image augmentations: pure functions of (image, numpy Generator).

Images are uint8 [H, W, C] (C = 1 or 3) unless stated otherwise; inputs are never modified.
Geometric and colour operations use PIL. The caller derives `rng` from (seed, example position),
which makes every augmentation reproducible and resumable.

Semantics follow the paper's reference code, which applies torchvision's transforms to PIL images
(torchvision then calls the same PIL operations): RandomCrop(padding) with zero fill,
RandomHorizontalFlip, RandomResizedCrop (bicubic in the ImageNet recipe), Resize + CenterCrop for
evaluation, ColorJitter, RandAugment (31 magnitude bins, nearest-neighbour, fill 0) and
RandomErasing (value 0, on the normalised tensor). `tests/test_recipes.py` checks each against
torchvision's documented formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_FILL = 0  # torchvision's RandAugment default (fill=None): black where geometric ops leave gaps.
_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(image: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def random_crop(image: np.ndarray, rng: np.random.Generator, *, padding: int) -> np.ndarray:
    """Zero-pads `padding` pixels on each side, then crops back to [H, W] at a random offset."""
    height, width, _ = image.shape
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, size=2)
    return padded[top : top + height, left : left + width]


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def _interpolation(name: str) -> Image.Resampling:
    if name not in _INTERPOLATIONS:
        raise ValueError(f"Unknown interpolation {name!r}; known: {sorted(_INTERPOLATIONS)}.")
    return _INTERPOLATIONS[name]


def _box_draws(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    fits,
) -> tuple[int, int, int, int] | None:
    """torchvision's box sampling: up to 10 draws of an area fraction ~ U(scale) and a
    log-uniform aspect ratio in `ratio`, each giving (long, short) = (sqrt(area * aspect),
    sqrt(area / aspect)) rounded; `fits(long, short)` returns (h, w) if the box fits, else None.
    (top, left, h, w) of the first box that fits (then uniform top and left), else None."""
    area = height * width
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        box = fits(round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect)))
        if box is not None:
            h, w = box
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return None


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's RandomResizedCrop.get_params: up to 10 draws of an area
    fraction ~ U(scale) and a log-uniform aspect ratio w/h in `ratio`, kept if the box fits;
    otherwise the largest centred box whose aspect ratio is clipped to `ratio`."""
    # aspect is w / h: (long, short) = (w, h)
    fits = lambda w, h: (h, w) if 0 < w <= width and 0 < h <= height else None
    box = _box_draws(height, width, rng, scale, ratio, fits)
    if box is not None:
        return box
    w, h = width, height
    if width / height < min(ratio):
        h = round(width / min(ratio))
    elif width / height > max(ratio):
        w = round(height * max(ratio))
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> np.ndarray:
    """Inception-style crop (`random_resized_crop_box`), then resized to [size, size] with PIL's
    `interpolation` (torchvision's RandomResizedCrop: crop, then resize)."""
    height, width, channels = image.shape
    top, left, h, w = random_resized_crop_box(height, width, rng, scale=scale, ratio=ratio)
    crop = _to_pil(image[top : top + h, left : left + w])
    return _from_pil(crop.resize((size, size), _interpolation(interpolation)), channels)


def resize_center_crop(
    image: np.ndarray, *, size: int, crop_fraction: float, interpolation: str = "bilinear"
) -> np.ndarray:
    """Evaluation view, torchvision's Resize(S) + CenterCrop(size) with S = round(size /
    crop_fraction) (256 for 224 at 0.875): the shorter side becomes S, the longer one
    int(S * long / short) (truncated); the crop starts at round((side - size) / 2) (half to
    even). Bilinear, torchvision's Resize default."""
    height, width, channels = image.shape
    shorter = round(size / crop_fraction)
    if height <= width:
        new_h, new_w = shorter, int(shorter * width / height)
    else:
        new_h, new_w = int(shorter * height / width), shorter
    pil = _to_pil(image).resize((new_w, new_h), _interpolation(interpolation))
    resized = _from_pil(pil, channels)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return resized[top : top + size, left : left + size]


def color_jitter(image: np.ndarray, rng: np.random.Generator, *, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by a factor drawn from
    U[max(0, 1 - strength), 1 + strength], in random order (torchvision ColorJitter(s, s, s),
    hue 0)."""
    enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    pil = _to_pil(image)
    for i in rng.permutation(len(enhancers)):
        pil = enhancers[i](pil).enhance(rng.uniform(max(0.0, 1 - strength), 1 + strength))
    return _from_pil(pil, image.shape[-1])


def _affine(pil: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    """PIL's inverse affine map (output (x, y) reads input (a x + b y + c, d x + e y + f)),
    nearest neighbour, fill 0."""
    fill = _FILL if pil.mode == "L" else (_FILL,) * 3
    return pil.transform(pil.size, Image.Transform.AFFINE, coeffs, fillcolor=fill)


# RandAugment: torchvision's 14 ops. Each maps (PIL image, signed magnitude in the op's own unit,
# see `rand_augment_magnitudes`) to a PIL image.
_RAND_AUGMENT_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "identity": lambda im, m: im,
    "shear_x": lambda im, m: _affine(im, (1, m, 0, 0, 1, 0)),  # about the top-left corner
    "shear_y": lambda im, m: _affine(im, (1, 0, 0, m, 1, 0)),
    "translate_x": lambda im, m: _affine(im, (1, 0, int(m), 0, 1, 0)),  # whole pixels
    "translate_y": lambda im, m: _affine(im, (1, 0, 0, 0, 1, int(m))),
    "rotate": lambda im, m: im.rotate(m, fillcolor=_FILL if im.mode == "L" else (_FILL,) * 3),
    "brightness": lambda im, m: ImageEnhance.Brightness(im).enhance(1 + m),
    "color": lambda im, m: ImageEnhance.Color(im).enhance(1 + m),
    "contrast": lambda im, m: ImageEnhance.Contrast(im).enhance(1 + m),
    "sharpness": lambda im, m: ImageEnhance.Sharpness(im).enhance(1 + m),
    "posterize": lambda im, m: ImageOps.posterize(im, int(m)),
    "solarize": lambda im, m: ImageOps.solarize(im, m),  # inverts pixels >= m
    "autocontrast": lambda im, m: ImageOps.autocontrast(im),
    "equalize": lambda im, m: ImageOps.equalize(im),
}
RAND_AUGMENT_SIGNED = frozenset(
    {"shear_x", "shear_y", "translate_x", "translate_y", "rotate"}
    | {"brightness", "color", "contrast", "sharpness"}
)


def rand_augment_magnitudes(
    magnitude: int, num_bins: int, *, width: int, height: int
) -> dict[str, float]:
    """Each RandAugment op's unsigned magnitude at bin `magnitude` of `num_bins` (torchvision's
    `_augmentation_space`: bin i of linspace(0, max, num_bins), i.e. max * i / (num_bins - 1)).

    Maxima: shear 0.3 (the affine coefficient), translate 150/331 of the width/height in pixels
    (truncated to whole pixels when applied), rotate 30 degrees, brightness/color/contrast/
    sharpness factor offset 0.9; posterize keeps 8 - round(4 i / (num_bins - 1)) bits; solarize
    inverts pixels >= 255 (1 - i / (num_bins - 1)). torchvision's RandAugment(2, 9) has
    num_bins 31, so magnitude 9 is 9/30 of each maximum.
    """
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"RandAugment magnitude {magnitude} not in [0, {num_bins - 1}].")
    frac = magnitude / (num_bins - 1)
    return {
        "identity": 0.0,
        "shear_x": 0.3 * frac,
        "shear_y": 0.3 * frac,
        "translate_x": 150.0 / 331.0 * width * frac,
        "translate_y": 150.0 / 331.0 * height * frac,
        "rotate": 30.0 * frac,
        "brightness": 0.9 * frac,
        "color": 0.9 * frac,
        "contrast": 0.9 * frac,
        "sharpness": 0.9 * frac,
        "posterize": float(8 - round(4 * frac)),
        "solarize": 255.0 - 255.0 * frac,
        "autocontrast": 0.0,
        "equalize": 0.0,
    }


def rand_augment_op(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
    """Applies RandAugment op `name` at a signed `magnitude` in the op's own unit."""
    return _from_pil(_RAND_AUGMENT_OPS[name](_to_pil(image), magnitude), image.shape[-1])


def rand_augment(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    num_ops: int,
    magnitude: int,
    num_bins: int = 31,
) -> np.ndarray:
    """RandAugment as torchvision's RandAugment(num_ops, magnitude, num_magnitude_bins=num_bins):
    `num_ops` ops drawn uniformly with replacement from the 14, each at bin `magnitude`
    (`rand_augment_magnitudes`), signed ops with a random sign."""
    height, width, _ = image.shape
    magnitudes = rand_augment_magnitudes(magnitude, num_bins, width=width, height=height)
    pil = _to_pil(image)
    names = list(_RAND_AUGMENT_OPS)
    for i in rng.integers(0, len(names), size=num_ops):
        name = names[i]
        value = magnitudes[name]
        if name in RAND_AUGMENT_SIGNED and rng.random() < 0.5:
            value = -value
        pil = _RAND_AUGMENT_OPS[name](pil, value)
    return _from_pil(pil, image.shape[-1])


def random_erasing_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of torchvision's RandomErasing.get_params: up to 10 draws of an area
    fraction ~ U(scale) and a log-uniform aspect ratio h/w in `ratio`, kept if h < H and w < W;
    None if no draw fits (the image is left unchanged)."""
    # aspect is h / w: (long, short) = (h, w)
    fits = lambda h, w: (h, w) if h < height and w < width else None
    return _box_draws(height, width, rng, scale, ratio, fits)


def random_erasing(
    image: np.ndarray, rng: np.random.Generator, *, prob: float, value: float = 0.0
) -> np.ndarray:
    """torchvision's RandomErasing(p=prob) on a *normalised* float32 [H, W, C] image: with
    probability `prob`, one rectangle (`random_erasing_box`: area 2%-33%, aspect 0.3-3.3) is set
    to `value` (0, torchvision's default, i.e. the dataset mean colour). (timm's RandomErasing
    differs: per-pixel N(0, 1) noise, area up to 1/3, aspect up to 1/0.3.)"""
    if rng.random() >= prob:
        return image
    height, width, _ = image.shape
    box = random_erasing_box(height, width, rng)
    if box is None:
        return image
    top, left, h, w = box
    image = image.copy()
    image[top : top + h, left : left + w] = value
    return image

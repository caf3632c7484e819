"""Per-example image augmentations: pure functions of (image, numpy Generator).

Images are uint8 [H, W, C] (C = 1 or 3) unless stated otherwise; inputs are never modified.
Geometric and colour operations use PIL. The caller derives `rng` from (seed, example position),
which makes every augmentation reproducible and resumable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_FILL = 128  # Grey, for pixels that geometric RandAugment ops move into the frame.


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


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Inception-style crop (area fraction in `scale`, aspect ratio in `ratio`), resized to
    [size, size] bilinearly; after 10 failed draws, falls back to a centre crop (torchvision's
    RandomResizedCrop)."""
    height, width, channels = image.shape
    area = height * width
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        w, h = width, height
        if width / height < ratio[0]:
            h = round(width / ratio[0])
        elif width / height > ratio[1]:
            w = round(height * ratio[1])
        top, left = (height - h) // 2, (width - w) // 2
    box = (left, top, left + w, top + h)
    resized = _to_pil(image).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return _from_pil(resized, channels)


def resize_center_crop(image: np.ndarray, *, size: int, crop_fraction: float) -> np.ndarray:
    """Evaluation view: resizes the shorter side to round(size / crop_fraction), then takes the
    central [size, size] crop."""
    height, width, channels = image.shape
    shorter = round(size / crop_fraction)
    new_h, new_w = (
        (shorter, max(shorter, round(width * shorter / height)))
        if height <= width
        else (max(shorter, round(height * shorter / width)), shorter)
    )
    resized = _from_pil(_to_pil(image).resize((new_w, new_h), Image.Resampling.BILINEAR), channels)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def color_jitter(image: np.ndarray, rng: np.random.Generator, *, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by a factor drawn from
    U[max(0, 1 - strength), 1 + strength], in random order (torchvision ColorJitter(s, s, s))."""
    enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    pil = _to_pil(image)
    for i in rng.permutation(len(enhancers)):
        pil = enhancers[i](pil).enhance(rng.uniform(max(0.0, 1 - strength), 1 + strength))
    return _from_pil(pil, image.shape[-1])


def _affine(pil: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    fill = _FILL if pil.mode == "L" else (_FILL,) * 3
    return pil.transform(pil.size, Image.Transform.AFFINE, coeffs, fillcolor=fill)


# RandAugment ops (torchvision's set of 14). Each maps (image, level) to an image, level in
# [-1, 1] being magnitude / 10 with a random sign; unsigned ops use |level|.
_RAND_AUGMENT_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "identity": lambda im, v: im,
    "shear_x": lambda im, v: _affine(im, (1, 0.3 * v, 0, 0, 1, 0)),
    "shear_y": lambda im, v: _affine(im, (1, 0, 0, 0.3 * v, 1, 0)),
    "translate_x": lambda im, v: _affine(im, (1, 0, 0.45 * v * im.size[0], 0, 1, 0)),
    "translate_y": lambda im, v: _affine(im, (1, 0, 0, 0, 1, 0.45 * v * im.size[1])),
    "rotate": lambda im, v: im.rotate(30 * v, fillcolor=_FILL if im.mode == "L" else (_FILL,) * 3),
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(1 + 0.9 * v),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(1 + 0.9 * v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(1 + 0.9 * v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(1 + 0.9 * v),
    "posterize": lambda im, v: ImageOps.posterize(im, 8 - round(4 * abs(v))),
    "solarize": lambda im, v: ImageOps.solarize(im, round(255 * (1 - abs(v)))),
    "autocontrast": lambda im, v: ImageOps.autocontrast(im),
    "equalize": lambda im, v: ImageOps.equalize(im),
}


def rand_augment(
    image: np.ndarray, rng: np.random.Generator, *, num_ops: int, magnitude: float
) -> np.ndarray:
    """RandAugment (Cubuk et al. 2020): `num_ops` ops drawn uniformly with replacement, each at
    `magnitude` on the paper's 0-10 scale (10 = shear 0.3, translate 45%, rotate 30 degrees,
    enhance factor 1 +- 0.9, posterize to 4 bits, solarize at 0), with a random sign.

    Note: torchvision's RandAugment(magnitude=9) uses 31 bins, i.e. 9/30 of the maximum; pass
    magnitude=3 to match it.
    """
    pil = _to_pil(image)
    names = list(_RAND_AUGMENT_OPS)
    for i in rng.integers(0, len(names), size=num_ops):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        pil = _RAND_AUGMENT_OPS[names[i]](pil, sign * magnitude / 10)
    return _from_pil(pil, image.shape[-1])


def random_erasing(image: np.ndarray, rng: np.random.Generator, *, prob: float) -> np.ndarray:
    """With probability `prob`, replaces one rectangle (area 2%-33%, aspect 0.3-3.3) of a
    *normalised* float32 [H, W, C] image by N(0, 1) noise per pixel (timm's mode='pixel')."""
    if rng.random() >= prob:
        return image
    height, width, channels = image.shape
    for _ in range(10):
        target_area = height * width * rng.uniform(0.02, 1 / 3)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        h = round(math.sqrt(target_area * aspect))
        w = round(math.sqrt(target_area / aspect))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            image = image.copy()
            image[top : top + h, left : left + w] = rng.standard_normal((h, w, channels))
            return image
    return image

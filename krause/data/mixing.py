"""Batch-level MixUp / CutMix and label smoothing, in numpy (run inside the input pipeline)."""

from __future__ import annotations

import numpy as np


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int [b] -> float32 [b, num_classes]."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def smooth_labels(targets: np.ndarray, smoothing: float) -> np.ndarray:
    """(1 - smoothing) * targets + smoothing / K for float32 targets [b, K] (= optax.smooth_labels,
    in numpy so that the pipeline never touches an accelerator)."""
    return ((1.0 - smoothing) * targets + smoothing / targets.shape[-1]).astype(np.float32)


def cutmix_box(height: int, width: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the CutMix box centred at (cy, cx): half-sides
    int(sqrt(1 - lam) / 2 * side), clipped at the border (torchvision's v2.CutMix, as in Yun et
    al. 2019). Clipping makes the box smaller than (1 - lam) H W; callers recompute lam from it."""
    half = 0.5 * np.sqrt(1.0 - lam)
    half_h, half_w = int(half * height), int(half * width)
    top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
    left, right = max(cx - half_w, 0), min(cx + half_w, width)
    return top, bottom, left, right


def mix_batch(
    images: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    mix_prob: float = 1.0,
    cutmix_prob: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Mixes each example with the previous one in the batch (partner of i is i - 1, cyclically,
    as torchvision's v2.MixUp / v2.CutMix roll the batch by one).

    images: float32 [b, H, W, C]; targets: float32 [b, K] (one-hot or soft). With probability
    `mix_prob` the batch is mixed, using CutMix with probability `cutmix_prob` (timm's
    `switch_prob`) and MixUp otherwise; an alpha of 0 disables that method. One method and one
    lam ~ Beta(alpha, alpha) per call. MixUp: x = lam x_i + (1 - lam) x_partner. CutMix: a box
    (`cutmix_box`, centre uniform over the pixels) from the partner is pasted and lam is
    recomputed as the exact unpasted area fraction of the clipped box.
    Targets become lam t_i + (1 - lam) t_partner, so they still sum to 1.
    """
    use_mixup, use_cutmix = mixup_alpha > 0, cutmix_alpha > 0
    if not (use_mixup or use_cutmix) or rng.random() >= mix_prob:
        return images, targets
    cutmix = use_cutmix and (not use_mixup or rng.random() < cutmix_prob)
    alpha = cutmix_alpha if cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    partner_images, partner_targets = np.roll(images, 1, axis=0), np.roll(targets, 1, axis=0)
    if cutmix:
        _, height, width, _ = images.shape
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom, left, right = cutmix_box(height, width, lam, cy, cx)
        images = images.copy()
        images[:, top:bottom, left:right] = partner_images[:, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        images = lam * images + (1.0 - lam) * partner_images
    targets = lam * targets + (1.0 - lam) * partner_targets
    return images.astype(np.float32), targets.astype(np.float32)

"""The input config schema (`config.input`) and the paper's recipes as presets."""

from __future__ import annotations

import ml_collections

# Per-example ops for uint8 images, applied in the order given in `augment`.
AUGMENT_OPS = ("random_crop", "flip", "random_resized_crop", "color_jitter", "rand_augment")

_MIX = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0, "cutmix_prob": 0.8}
# experiments.md, "Recipes", with the reference code's torchvision semantics (checked in
# tests/test_recipes.py). Mixing: every batch mixed, CutMix (alpha 1.0) with probability 0.8,
# else MixUp (alpha 0.8); label smoothing 0.1 is applied to the mixed targets. ImageNet:
# RandomResizedCrop(224) bicubic, flip, RandAugment(num_ops=2, magnitude=9) on torchvision's 31
# bins (9/30 of each op's maximum), then (B models) ColorJitter(0.4, 0.4, 0.4), normalise,
# RandomErasing(p=0.25) with value 0; evaluation Resize(256) + CenterCrop(224), bilinear.
RECIPES: dict[str, dict] = {
    "none": {},
    "cifar": {
        "augment": ("random_crop", "flip"),
        "crop_padding": 4,
        "label_smoothing": 0.1,
        **_MIX,
    },
    "cifar_swin": {
        "augment": ("random_crop", "flip"),
        "crop_padding": 4,
        "random_erasing": 0.25,
        "label_smoothing": 0.1,
        **_MIX,
    },
    "imagenet": {
        "augment": ("random_resized_crop", "flip", "rand_augment"),
        "random_erasing": 0.25,
        "label_smoothing": 0.1,
        "global_batch_size": 1024,
        **_MIX,
    },
    "imagenet_b": {  # ViT-B / KViT-B: ImageNet recipe plus ColorJitter 0.4 after RandAugment.
        "augment": ("random_resized_crop", "flip", "rand_augment", "color_jitter"),
        "color_jitter": 0.4,
        "random_erasing": 0.25,
        "label_smoothing": 0.1,
        "global_batch_size": 1024,
        **_MIX,
    },
    "pixels": {"output": "tokens"},
}


def default_input_config(
    dataset: str = "cifar10", recipe: str = "none"
) -> ml_collections.ConfigDict:
    """The input config with every field, set for `dataset` and a recipe from `RECIPES`.

    Fields:
      dataset: registry name (`krause.data.get_dataset_info`).
      data_dir: tfds data_dir holding the prepared dataset; None = tfds' default.
      output: "image" -> {image float32 [b,H,W,C] normalised, label int32 [b], soft_label float32
        [b,K] (training only: one-hot, mixed, smoothed)}; "tokens" -> {tokens int32 [b, H*W*C]
        in (row, column, channel) order, values 0..255, label int32 [b]}. Eval batches add
        mask bool [b].
      global_batch_size / eval_batch_size: summed over processes; must divide by process count.
      image_size: side of the yielded images; None = the registry's image_shape.
      augment: ops from AUGMENT_OPS applied in this order to uint8 training images.
      crop_padding: zero padding of random_crop (the crop is back to the original size).
      rrc_scale, rrc_ratio, rrc_interpolation: random_resized_crop area fraction and aspect
        ratio ranges, and its resize filter ("nearest" | "bilinear" | "bicubic").
      color_jitter: brightness/contrast/saturation strength of color_jitter.
      rand_augment_num_ops, rand_augment_magnitude, rand_augment_num_bins: torchvision's
        RandAugment(num_ops, magnitude, num_magnitude_bins): the magnitude is a bin index in
        [0, num_bins - 1], i.e. magnitude / (num_bins - 1) of each op's maximum (9 of 31 bins
        = 0.3: shear 0.09, rotate 9 degrees, ...; `augment.rand_augment_magnitudes`).
      random_erasing: probability of RandomErasing (after normalisation, per example; the
        rectangle is set to 0, torchvision's default).
      mixup_alpha, cutmix_alpha: Beta parameters; 0 disables the method.
      mix_prob: probability that a batch is mixed; cutmix_prob: probability of CutMix (rather
        than MixUp) when both are enabled (timm's switch_prob).
      label_smoothing: applied after mixing, to the mixed targets.
      eval_crop_fraction: eval images whose size differs from image_size are resized
        (bilinear) so that the shorter side is round(image_size / eval_crop_fraction), then
        centre-cropped (224 at 0.875: Resize(256) + CenterCrop(224)).
      validation_size: number of training examples held out as the "validation" split (0 =
        none): a fixed subset, independent of the seed (`krause.data.pipeline.split_indices`),
        removed from the training stream and read by make_eval_batches(..., split="validation").
      num_threads, prefetch: grain read threads and prefetch buffer (in examples).
      worker_count: grain worker processes (0 = threads in the main process only).
    """
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {recipe!r}; known recipes: {sorted(RECIPES)}.")
    config = ml_collections.ConfigDict(
        {
            "dataset": dataset,
            "data_dir": None,
            "output": "image",
            "global_batch_size": 256,
            "eval_batch_size": 256,
            "image_size": None,
            "augment": (),
            "crop_padding": 4,
            "rrc_scale": (0.08, 1.0),
            "rrc_ratio": (3 / 4, 4 / 3),
            "rrc_interpolation": "bicubic",
            "color_jitter": 0.0,
            "rand_augment_num_ops": 2,
            "rand_augment_magnitude": 9,
            "rand_augment_num_bins": 31,
            "random_erasing": 0.0,
            "mixup_alpha": 0.0,
            "cutmix_alpha": 0.0,
            "mix_prob": 1.0,
            "cutmix_prob": 0.5,
            "label_smoothing": 0.0,
            "eval_crop_fraction": 0.875,
            "validation_size": 0,
            "num_threads": 4,
            "prefetch": 256,
            "worker_count": 0,
        }
    )
    config.data_dir = ml_collections.config_dict.placeholder(str)
    config.image_size = ml_collections.config_dict.placeholder(int)
    config.update(RECIPES[recipe])
    return config

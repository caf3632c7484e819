"""The arguments that every ViT config file shares, parsed once.

`configs/cifar_vit.py`, `configs/imagenet_vit.py` and `configs/fashion_mnist_vit.py` take, after
the colon, `model=NAME` plus these variant arguments (comma separated):

  layout=paper|pre_ln|post_ln  paper: KViT post-LN + drop-path, ViT pre-LN (the paper's comparison);
                               pre_ln / post_ln: the same block for both (controlled comparison)
  rope                         2-D axial RoPE on q and k (the "(RoPE)" rows; no extra parameters)
  top_k=none|K                 Krause without top-k (ablation), or k0 = K (default: the model's)
  locality=false               every token sees every token (with top_k=none: "RBF only")
  decay_all                    weight-decay every parameter, as the paper's reference code does
  smoke                        a tiny model, 3 steps of 8 images (seconds on a CPU)

Each file adds what differs (dataset, recipe, sizes) and its own arguments.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from krause.train import config as tc

VARIANT_ARGS = dict(
    layout="paper", rope=False, top_k="default", locality=True, decay_all=False, smoke=False
)
SMOKE_MODEL = dict(depth=2, width=32, heads=2, mlp_dim=64)


def parse_vit_arg(
    arg: str | None, *, models: tuple[str, ...], default_model: str, **extra: Any
) -> tuple[ConfigDict, dict[str, Any]]:
    """(parsed arguments, model field overrides) of a ViT config file's argument string.

    `models`: the names this file accepts (an unknown one is an error listing them); `extra`:
    the file's own arguments with their defaults.
    """
    arg = tc.parse_arg(arg, model=default_model, **VARIANT_ARGS, **extra)
    if arg.model not in models:
        raise ValueError(f"Unknown model {arg.model!r} for this config; known: {list(models)}.")
    model = dict(layout=arg.layout, rope=arg.rope, locality=arg.locality)
    if arg.top_k != "default":
        model["k0"] = None if arg.top_k is None else int(arg.top_k)
    return arg, model


def vit_config(arg: ConfigDict, model: dict[str, Any], input_config: ConfigDict) -> ConfigDict:
    """The trainer config of a ViT run: `base_config()` with the model, input and the variant's
    `decay_all`; `smoke` shrinks the model here (call `finish` after the recipe)."""
    if arg.smoke:
        model = {**model, **SMOKE_MODEL}
    config = tc.base_config()
    config.seed = 3407
    config.model_name = arg.model
    config.model = tc.model_config(arg.model, **model)
    config.input = input_config
    config.decay_all = arg.decay_all
    return config


def finish(config: ConfigDict, arg: ConfigDict, **smoke_kwargs: Any) -> ConfigDict:
    """Applies `smoke` (3 steps of tiny batches) after the file has set its recipe."""
    return tc.shrink_to_smoke(config, **smoke_kwargs) if arg.smoke else config


def cifar_recipe(config: ConfigDict) -> ConfigDict:
    """The paper's CIFAR recipe (experiments.md), in place: AdamW (0.9, 0.999), lr 3e-4, wd 0.05,
    300 epochs with 10 linear warm-up epochs then cosine to 0, clipping at global norm 1.0."""
    config.total_epochs = 300.0
    config.warmup_epochs = 10.0
    config.lr = 3e-4
    config.wd = 0.05
    config.adam.b1, config.adam.b2 = 0.9, 0.999
    config.grad_clip_norm = 1.0
    config.log_every_steps = 100
    config.eval_every_epochs = 10.0
    config.checkpoint_every_epochs = 5.0
    return config

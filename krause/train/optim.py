"""Optimizer: AdamW, warm-up + cosine schedule, clipping, weight-decay mask, accumulation."""

from __future__ import annotations

import jax
import optax

# Parameters that are never weight-decayed unless `config.decay_all` (nor is any parameter of
# fewer than 2 dimensions).
NO_DECAY_NAMES = (
    "bias",  # Dense/conv biases (DenseGeneral's are 2-D or 3-D) and LayerNorm offsets
    "scale",  # LayerNorm scales
    "log_sigma",  # Krause width (scalar per layer, or one per head)
    "cls",  # ViT's CLS token
    "pos_embedding",  # ViT's learned position embedding
    "position_embed",  # pixel models' learned position embedding
    "embedding",  # token embedding table (nn.Embed)
    "relative_position_bias_table",  # Swin
)


def decay_mask(params):
    """Pytree of bools like `params`: True for weight matrices and convolution kernels only
    (at least 2-D and not named in `NO_DECAY_NAMES`)."""

    def decays(path, leaf) -> bool:
        return leaf.ndim >= 2 and path[-1].key not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """0 -> lr linearly over `warmup_steps` optimizer steps, then cosine to 0 at `total_steps`."""
    warmup_steps = min(warmup_steps, total_steps)
    if warmup_steps == total_steps:  # warm-up only (tiny runs)
        return optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=0.0,
    )


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """AdamW (`config.adam`, `config.wd`, mask unless `config.decay_all`) after global-norm
    clipping (`config.grad_clip_norm`), wrapped in `optax.MultiSteps` if
    `config.grad_accum_steps` > 1 (gradients of that many micro-batches are averaged)."""
    adamw = optax.adamw(
        schedule,
        b1=config.adam.b1,
        b2=config.adam.b2,
        eps=config.adam.eps,
        weight_decay=config.wd,
        mask=None if config.decay_all else decay_mask,
    )
    clip = config.grad_clip_norm
    tx = adamw if clip is None else optax.chain(optax.clip_by_global_norm(clip), adamw)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
    return tx

"""Building blocks shared by the models: initialisers, MLP, DropPath, patch embedding, RoPE.

Conventions (all models): activations are [batch, ..., features] and attention arrays
[batch, length, heads, head_dim]; `dtype` is the computation dtype and `param_dtype` the storage
dtype of parameters (Flax style); the single rng stream "dropout" drives dropout and drop-path.

Initialisation (the ViT/Swin defaults of timm and big_vision):
  * every Dense kernel: truncated normal, std 0.02 (`dense_init`); every bias: zeros;
  * the patch-embedding convolution: LeCun normal (fan-in scaled, as big_vision and Flax);
  * LayerNorm: scale ones, bias zeros (Flax defaults).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

dense_init = nn.initializers.truncated_normal(stddev=0.02)
zeros = nn.initializers.zeros_init()
# PyTorch's default for nn.Linear and nn.Conv2d weights: kaiming_uniform(a=sqrt(5)), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias init of a layer with `fan_in` inputs: U(-1/sqrt(fan_in), +)."""
    bound = fan_in**-0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Mlp(nn.Module):
    """Dense(hidden) -> GELU -> Dropout -> Dense(out or input width) -> Dropout; biases everywhere.

    GELU is the exact (erf) form, as torch.nn.GELU and the papers' models use.
    """

    hidden_dim: int
    out_dim: int | None = None
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = dense_init
    bias_init: Any = zeros
    fc2_bias_init: Any = None  # None: bias_init

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dense = functools.partial(
            nn.Dense, kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        out_dim = x.shape[-1] if self.out_dim is None else self.out_dim
        x = dense(self.hidden_dim, bias_init=self.bias_init, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = dense(out_dim, bias_init=self.fc2_bias_init or self.bias_init, name="fc2")(x)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per example with probability `rate`.

    Survivors are scaled by 1 / (1 - rate) so the expectation is unchanged; identity at eval.
    Uses the "dropout" rng stream.
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return x * jnp.where(mask, 1.0 / keep, 0.0).astype(x.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution with bias: [B, H, W, C] -> [B, H/p, W/p, D].

    The image side must be divisible by the patch size (checked).
    """

    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = zeros

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(
                f"images must be [batch, height, width, channels], got {images.shape}."
            )
        p = self.patch_size
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(
                f"image size {images.shape[1:3]} is not divisible by the patch size {p}."
            )
        return nn.Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=True,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="proj",
        )(images)


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (no parameters). Rotation pairs feature j with feature j + dim/2
# ("rotate half", GPT-NeoX layout); `angles` has one column per pair.


def rope_angles(positions: np.ndarray, dim: int, base: float = 10000.0) -> np.ndarray:
    """1-D RoPE angles, float32 [len(positions), dim // 2]: position * base^(-2i / dim).

    Args:
      positions: integer or float positions [N].
      dim: number of rotated features (even).
      base: the wavelength base (10000 for text; small grids prefer ~100).
    """
    if dim % 2:
        raise ValueError(f"RoPE needs an even number of features, got {dim}.")
    freqs = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    return (np.asarray(positions, np.float64)[:, None] * freqs[None, :]).astype(np.float32)


@functools.lru_cache(maxsize=32)
def axial_rope_angles(
    height: int, width: int, head_dim: int, base: float = 100.0, num_global: int = 1
) -> np.ndarray:
    """2-D axial RoPE angles for `num_global` tokens followed by a row-major grid.

    The first half of the rotation pairs encodes the row, the second half the column (each with
    head_dim / 4 frequencies). Global tokens (CLS) get angle 0, i.e. no rotation, so their
    scores depend only on content. Returns float32 [num_global + height * width, head_dim // 2].
    """
    if head_dim % 4:
        raise ValueError(f"2-D axial RoPE needs head_dim divisible by 4, got {head_dim}.")
    rows, cols = np.divmod(np.arange(height * width), width)
    grid = np.concatenate(
        [rope_angles(rows, head_dim // 2, base), rope_angles(cols, head_dim // 2, base)], axis=1
    )
    return np.concatenate([np.zeros((num_global, head_dim // 2), np.float32), grid])


def apply_rope(x: jax.Array, angles: jax.Array | np.ndarray) -> jax.Array:
    """Rotate x [B, N, H, D] by angles [N, D // 2] (computed in >= float32, returned in x.dtype)."""
    half = x.shape[-1] // 2
    if angles.shape != (x.shape[1], half):
        raise ValueError(f"angles must be [{x.shape[1]}, {half}], got {angles.shape}.")
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    cos = jnp.cos(jnp.asarray(angles, dtype))[None, :, None, :]
    sin = jnp.sin(jnp.asarray(angles, dtype))[None, :, None, :]
    x1, x2 = x[..., :half].astype(dtype), x[..., half:].astype(dtype)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)

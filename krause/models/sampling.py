"""Cached autoregressive decoding of `PixelAR` models, and image grids.

Every driver runs one jitted `lax.scan` over the positions; each step calls
`PixelAR.decode_step` (O(length) for softmax, O(window) for Krause, O(1) for linear attention
per layer) and either samples the next token or takes it from a given prefix.

  sample(model, params, rng, num_images, temperature)             -> tokens [n, L]
  complete(model, params, rng, prefix_tokens, num_samples, temp.) -> tokens [n, num_samples, L]
  cached_logits(model, params, tokens)                            -> logits [B, L, vocab]
  save_image_grid(tokens, image_shape, path)

`params` is the model's parameter tree or the variables dict `{"params": ...}`. Temperature 0
means greedy (argmax) decoding; otherwise tokens are drawn from softmax(logits / temperature).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from krause.models.pixel_ar import PixelAR, init_cache


def _variables(params) -> dict:
    return params if "params" in params else {"params": params}


def _pick(rng: jax.Array, logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """Categorical sample of softmax(logits / temperature); argmax when temperature == 0."""
    greedy = jnp.argmax(logits, axis=-1)
    drawn = jax.random.categorical(rng, logits / jnp.maximum(temperature, 1e-30), axis=-1)
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "return_logits"))
def _decode(
    model: PixelAR,
    variables: dict,
    rng: jax.Array,
    forced: jax.Array,
    num_forced: jax.Array,
    temperature: jax.Array,
    return_logits: bool = False,
):
    """Decode all positions; position t takes forced[:, t] if t < num_forced, else a sample.

    Returns (tokens [B, L] int32, logits [B, L, vocab] float32 or None).
    """
    batch, length = forced.shape

    def step(carry, inputs):
        previous, cache, rng = carry
        position, forced_t = inputs
        logits, cache = model.apply(
            variables, previous, position, cache, method=PixelAR.decode_step
        )
        rng, key = jax.random.split(rng)
        token = jnp.where(position < num_forced, forced_t, _pick(key, logits, temperature))
        return (token, cache, rng), (token, logits if return_logits else None)

    carry = (jnp.zeros((batch,), jnp.int32), init_cache(model, batch), rng)
    inputs = (jnp.arange(length, dtype=jnp.int32), forced.T.astype(jnp.int32))
    _, (tokens, logits) = lax.scan(step, carry, inputs)
    return tokens.T, None if logits is None else jnp.swapaxes(logits, 0, 1)


def sample(
    model: PixelAR, params, rng: jax.Array, num_images: int, temperature: float = 1.0
) -> jax.Array:
    """Unconditional samples: int32 tokens [num_images, model.length]."""
    forced = jnp.zeros((num_images, model.length), jnp.int32)
    tokens, _ = _decode(
        model, _variables(params), rng, forced, jnp.int32(0), jnp.float32(temperature)
    )
    return tokens


def complete(
    model: PixelAR,
    params,
    rng: jax.Array,
    prefix_tokens: jax.Array,
    num_samples: int = 1,
    temperature: float = 1.0,
) -> jax.Array:
    """Complete each prefix `num_samples` times (e.g. the top half of an image is given).

    Args:
      prefix_tokens: int [num_images, P] with P <= model.length, the first P tokens of each image.

    Returns:
      int32 tokens [num_images, num_samples, model.length]; [..., :P] equals the prefix.
    """
    num_images, p = prefix_tokens.shape
    if p > model.length:
        raise ValueError(f"prefix of {p} tokens is longer than the model's {model.length}.")
    forced = jnp.zeros((num_images, num_samples, model.length), jnp.int32)
    forced = forced.at[:, :, :p].set(jnp.asarray(prefix_tokens, jnp.int32)[:, None])
    forced = forced.reshape(num_images * num_samples, model.length)
    tokens, _ = _decode(
        model, _variables(params), rng, forced, jnp.int32(p), jnp.float32(temperature)
    )
    return tokens.reshape(num_images, num_samples, model.length)


def cached_logits(model: PixelAR, params, tokens: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, L, vocab] of `tokens` [B, L], computed through the decoding cache.

    Equals `model.apply(variables, tokens)` up to rounding; used to test the cache.
    """
    _, logits = _decode(
        model,
        _variables(params),
        jax.random.key(0),
        jnp.asarray(tokens, jnp.int32),
        jnp.int32(tokens.shape[1]),
        jnp.float32(0.0),
        return_logits=True,
    )
    return logits


def tokens_to_images(tokens, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Tokens [..., H*W*C] in (row, column, channel) order -> uint8 images [..., H, W, C]."""
    tokens = np.asarray(tokens)
    return tokens.reshape(*tokens.shape[:-1], *image_shape).astype(np.uint8)


def images_to_tokens(images) -> np.ndarray:
    """uint8 images [..., H, W, C] -> int32 tokens [..., H*W*C] in (row, column, channel) order."""
    images = np.asarray(images)
    return images.reshape(*images.shape[:-3], -1).astype(np.int32)


def image_grid(images, columns: int | None = None, padding: int = 2, fill: int = 128) -> np.ndarray:
    """Tile uint8 images [n, H, W, C] (or [rows, columns, H, W, C]) into one [H', W', C] image."""
    images = np.asarray(images)
    if images.ndim == 5:
        columns = images.shape[1]
        images = images.reshape(-1, *images.shape[2:])
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full(
        (rows * (h + padding) + padding, columns * (w + padding) + padding, c), fill, np.uint8
    )
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def save_image_grid(
    tokens, image_shape: tuple[int, int, int], path: str | Path, columns: int | None = None
) -> Path:
    """Save tokens [n, L] (or [rows, columns, L], e.g. from `complete`) as one PNG grid."""
    from PIL import Image

    grid = image_grid(tokens_to_images(tokens, image_shape), columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path

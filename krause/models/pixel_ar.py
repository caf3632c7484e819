"""Autoregressive pixel models: ARM (softmax), LARM (linear) and KARM (Krause) attention.

An image is a sequence of `length = height * width * channels` tokens in (row, column, channel)
order, channel fastest; each token is an 8-bit intensity, vocabulary 256. The model is a GPT-style
decoder: token embedding + learned position embedding, dropout, pre-LN blocks
(causal attention, MLP 4x GELU, residual dropout), final LayerNorm, untied output Dense over the
256 values.

Position 0. The inputs are the tokens shifted right by one: the input at position t is
`token_embed[x_{t-1}] + position_embed[t]`, and at position 0 it is `position_embed[0]` alone (no
start token, so the embedding table has exactly `vocab_size` rows). `logits[:, t]` is therefore
the distribution of `x_t` given `x_{<t}`, including t = 0 (the unconditional first pixel).
Training (`__call__`) and cached decoding (`decode_step`) use the same rule.

Cached decoding (`decode_step` with `init_cache`), one position at a time:
  softmax: preallocated key/value buffers of `length` slots and a validity mask, O(length) a step;
  krause:  a ring buffer of the last `window` centred keys, their norms and the values
           (slot = position % window), O(window);
  linear:  the running sums of `LinearAttentionState`, O(1) in the position.
The drivers (`sample`, `complete`, `cached_logits`) live in `krause.models.sampling`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from krause.attention import CausalWindow, causal_window
from krause.models.attention import MultiHeadAttention, init_decoding_cache
from krause.models.layers import Mlp, dense_init

ATTENTIONS = ("softmax", "linear", "krause")

_embed_init = nn.initializers.normal(stddev=0.02)


class Block(nn.Module):
    """Pre-LN block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x)))."""

    attn: MultiHeadAttention
    mlp_hidden: int
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    capture: bool = False

    def setup(self):
        norm = functools.partial(
            nn.LayerNorm,
            epsilon=self.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.norm1 = norm()
        self.norm2 = norm()
        self.mlp = Mlp(self.mlp_hidden, dtype=self.dtype, param_dtype=self.param_dtype)
        self.drop = nn.Dropout(self.dropout_rate)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = self.attn(self.norm1(x), sow_weights=self.capture)
        x = x + self.drop(y, deterministic=not train)
        x = x + self.drop(self.mlp(self.norm2(x), train=train), deterministic=not train)
        if self.capture:
            self.sow("intermediates", "hidden", x)
        return x

    def step(self, x: jax.Array, cache, position: jax.Array):
        y, cache = self.attn(self.norm1(x), cache=cache, position=position)
        x = x + y
        return x + self.mlp(self.norm2(x), train=False), cache


class PixelAR(nn.Module):
    """Autoregressive pixel transformer (ARM / LARM / KARM by `attention`).

    Fields:
      image_shape: (height, width, channels); the sequence length is their product.
      width, depth, heads, mlp_ratio: transformer size (MLP hidden = mlp_ratio * width).
      vocab_size: token values (256 for 8-bit pixels); also the embedding table's rows.
      attention: "softmax" (ARM), "linear" (LARM, elu+1) or "krause" (KARM).
      window, top_k, sigma_init: Krause causal window W (the last W positions including the
        query; None: the whole sequence), top-k within it (None: all), initial sigma of every
        head (one log_sigma per head per layer). Ignored by the other attentions.
      attention_impl: `impl` of `krause_attention` for the full forward pass ("auto").
      dropout_rate: embedding and residual dropout (train=True only).
      dtype, param_dtype: compute and parameter dtypes; logits are returned in float32.
      capture: blocks `sow` their outputs ("hidden") and attention weights
        ("attn/attention_weights": softmax/linear [B, H, N, N], Krause `KrauseWeights`) into
        the "intermediates" collection.

    `__call__(tokens [B, N] int32, train) -> logits [B, N, vocab]` with N <= length;
    logits[:, t] predicts tokens[:, t] from tokens[:, :t].
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    width: int = 256
    depth: int = 12
    heads: int = 8
    mlp_ratio: int = 4
    vocab_size: int = 256
    attention: str = "softmax"
    window: int | None = 128
    top_k: int | None = 96
    sigma_init: float = 2.5
    attention_impl: str = "auto"
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    capture: bool = False

    @property
    def length(self) -> int:
        return math.prod(self.image_shape)

    def neighborhood(self) -> CausalWindow | None:
        """Krause: the causal window over the whole sequence (None for the other attentions)."""
        if self.attention != "krause":
            return None
        return causal_window(self.length, self.window or self.length)

    def setup(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}.")
        self.token_embed = nn.Embed(
            self.vocab_size,
            self.width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=_embed_init,
        )
        self.position_embed = self.param(
            "position_embed", _embed_init, (self.length, self.width), self.param_dtype
        )
        self.embed_drop = nn.Dropout(self.dropout_rate)
        self.blocks = [
            Block(
                MultiHeadAttention(
                    self.heads,
                    attention=self.attention,
                    causal=self.attention != "krause",
                    neighborhood=self.neighborhood(),
                    top_k=self.top_k if self.attention == "krause" else None,
                    sigma0=self.sigma_init,
                    sigma_per_head=True,
                    impl=self.attention_impl,
                    kernel_init=dense_init,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                ),
                mlp_hidden=self.mlp_ratio * self.width,
                dropout_rate=self.dropout_rate,
                layer_norm_eps=self.layer_norm_eps,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                capture=self.capture,
            )
            for _ in range(self.depth)
        ]
        self.final_norm = nn.LayerNorm(
            epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype
        )
        self.head = nn.Dense(
            self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=dense_init
        )

    def _logits(self, x: jax.Array) -> jax.Array:
        return self.head(self.final_norm(x)).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.length:
            raise ValueError(
                f"tokens must be [batch, n] with 1 <= n <= length = {self.length}, "
                f"got shape {tokens.shape}."
            )
        n = tokens.shape[1]
        previous = self.token_embed(tokens[:, :-1])  # input at t is the embedding of x_{t-1}
        x = jnp.pad(previous, ((0, 0), (1, 0), (0, 0))) + self.position_embed[:n].astype(self.dtype)
        x = self.embed_drop(x, deterministic=not train)
        for block in self.blocks:
            x = block(x, train)
        return self._logits(x)

    def decode_step(self, previous: jax.Array, position: jax.Array, cache: tuple):
        """Logits of position `position` given the previous token, through the cache.

        Args:
          previous: [B] int32, the token at position - 1 (ignored at position 0).
          position: scalar int32 in [0, length).
          cache: from `init_cache(model, B)`, holding positions < `position`.

        Returns:
          (logits [B, vocab] float32, the cache now also holding `position`).
        """
        x = jnp.where(position > 0, self.token_embed(previous), 0)
        x = (x + self.position_embed[position].astype(self.dtype))[:, None]
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x, layer_cache = block.step(x, layer_cache, position)
            new_cache.append(layer_cache)
        return self._logits(x[:, 0]), tuple(new_cache)


def init_cache(model: PixelAR, batch: int) -> tuple:
    """Empty decoding cache of `model` for `batch` sequences: one entry per layer
    (`krause.models.attention.init_decoding_cache`)."""
    return tuple(
        init_decoding_cache(
            model.attention,
            batch,
            model.heads,
            model.width // model.heads,
            model.length,
            model.window,
            model.dtype,
        )
        for _ in range(model.depth)
    )


MNIST = dict(image_shape=(28, 28, 1), width=256, depth=12, heads=8, window=128, top_k=96)
CIFAR10 = dict(image_shape=(32, 32, 3), width=512, depth=16, heads=8, window=256, top_k=192)

MODELS = {
    "pixel_ar_mnist": functools.partial(PixelAR, **MNIST),
    "pixel_ar_cifar10": functools.partial(PixelAR, **CIFAR10),
}

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
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from krause.attention import (
    causal_window,
    init_linear_attention_state,
    krause_attention,
    linear_attention,
    linear_attention_step,
    softmax_attention,
)
from krause.attention.common import compute_dtype, masked_softmax
from krause.attention.selection import kth_largest
from krause.models.layers import Mlp, dense_init

ATTENTIONS = ("softmax", "linear", "krause")

_embed_init = nn.initializers.normal(stddev=0.02)


class KVCache(NamedTuple):
    """Softmax key/value slots of one layer, head-major: [batch, heads, length, head_dim] each.

    Step t attends to the slots < t and to its own key/value, then writes them to slot t.
    """

    key: jax.Array
    value: jax.Array


class KrauseCache(NamedTuple):
    """Krause ring buffer of one layer: the last S = min(window, length) positions.

    Step t attends to the valid slots (positions t - window + 1 .. t - 1) and to its own key and
    value, then writes them to slot t % S. Keys are stored relative to `centre` (per sequence
    and head: the key of position 0, rounded to integers) together with their squared norms, so
    that a step's scores are one matrix-vector product:
    -||q - k||^2 = 2 (q - c).(k - c) - ||k - c||^2 - ||q - c||^2, where the last term is a per-row
    constant that neither top-k nor the softmax sees. Centring keeps the expansion accurate in
    float32 when all keys share a large offset (as the per-block centres of `causal_blocked`).

    Fields: key, value [B, H, S, D]; key_sq_norm [B, H, S] float32; centre [B, H, D].
    """

    key: jax.Array
    value: jax.Array
    key_sq_norm: jax.Array
    centre: jax.Array


# Decoding attention: one query per sequence against the cache (head-major, [B, H, S, D]) in
# which slot `current` stands for the current position, whose key/value are passed separately
# and written to the cache only afterwards. This keeps a step O(S) with the cache updated in
# place (checked in the compiled HLO of the decoding loop, XLA CPU):
#  * head-major caches: with the [B, S, H, D] layout of the `krause.attention` functions, XLA's
#    CPU dot transposes the whole cache at every step (about 20x slower for 784 slots);
#  * reading the *old* cache: when the updated cache also fed the attention, XLA duplicated the
#    dynamic-update-slice into both users and copied the whole cache several times per step;
#  * the write depends on the attention output (see `CausalSelfAttention.step`);
#  * the current position replaces its slot's score instead of being appended, so rows keep S
#    entries (the top-k radix select is ~2x slower on 129 than on 128 entries).


def _with_current(cached_scores, current_score, current):
    """Scores [B, H, S] with slot `current` (bool [S]) replaced by the current position's."""
    return jnp.where(current, current_score[..., None], cached_scores)


def _mix(p, value, v, current):
    """sum_s p_s value_s, where slot `current` holds the current position's v: [B, H, D]."""
    p_current = jnp.sum(jnp.where(current, p, 0.0), axis=-1, keepdims=True)
    return jnp.einsum("bhs,bhsd->bhd", jnp.where(current, 0.0, p), value) + p_current * v


def cached_softmax_attention(q, k, v, key, value, valid, current) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over the valid slots (the current position at `current`).

    q, k, v [B, H, D] (current position); key, value [B, H, S, D] (cache); valid, current
    bool [S], `current` one-hot and inside `valid`. Returns [B, H, D] in the compute dtype.
    """
    dtype = compute_dtype(q.dtype)
    q, k, v, key, value = (x.astype(dtype) for x in (q, k, v, key, value))
    scores = _with_current(jnp.einsum("bhd,bhsd->bhs", q, key), jnp.sum(q * k, -1), current)
    p = jax.nn.softmax(jnp.where(valid, scores * q.shape[-1] ** -0.5, -jnp.inf), axis=-1)
    return _mix(p, value, v, current)


def cached_krause_attention(
    q, k, v, key, key_sq_norm, value, valid, current, *, sigma, top_k
) -> jax.Array:
    """Krause attention over the valid slots (the current position at `current`).

    Scores -||q - k||^2 / (2 sigma_h^2) up to a per-row constant, top-k over the valid slots,
    softmax over the survivors (`krause.attention.common`, as `rbf_attention`). q, k and the
    cached `key` are relative to the same centre (`KrauseCache`), `key_sq_norm` = ||key||^2
    [B, H, S]; other shapes as `cached_softmax_attention`; sigma [H].
    """
    dtype = compute_dtype(q.dtype)
    q, k, v, key, value = (x.astype(dtype) for x in (q, k, v, key, value))
    cached = jnp.einsum("bhd,bhsd->bhs", 2.0 * q, key) - key_sq_norm.astype(dtype)
    scores = _with_current(cached, jnp.sum((2.0 * q - k) * k, axis=-1), current)
    scores = scores * (0.5 / jnp.square(sigma.astype(dtype)))[:, None]
    if top_k is None or top_k >= scores.shape[-1]:
        return _mix(masked_softmax(scores, valid), value, v, current)
    # No argmax guard (`keep_above`'s variadic reduction, ~50 us per layer): XLA recomputes the
    # scores in the radix select's fusion and in the comparison's, but from the same
    # materialised dot and reduction by a subtract, a select and a multiply (nothing to contract
    # into an FMA), so both copies are bit-identical and the k-th key meets its own threshold.
    keep = valid & (scores >= kth_largest(scores, top_k, valid))
    return _mix(masked_softmax(scores, keep), value, v, current)


def _linear_weights(q: jax.Array, k: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Dense causal weights of elu+1 linear attention, [B, H, N, N] (for analysis only)."""
    phi_q, phi_k = (jax.nn.elu(x.astype(jnp.float32)) + 1.0 for x in (q, k))
    a = jnp.einsum("bihd,bjhd->bhij", phi_q, phi_k)
    a = jnp.where(jnp.tril(jnp.ones(a.shape[-2:], bool)), a, 0.0)
    return a / (jnp.sum(a, axis=-1, keepdims=True) + eps)


class CausalSelfAttention(nn.Module):
    """Causal self-attention with a softmax, linear or Krause kernel; `[B, N, width]` in and out."""

    width: int
    heads: int
    attention: str = "softmax"
    window: int = 128
    top_k: int | None = 96
    sigma_init: float = 2.5
    attention_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    capture: bool = False

    def setup(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}.")
        head_dim = self.width // self.heads
        dense = functools.partial(
            nn.DenseGeneral,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=dense_init,
        )
        self.qkv = dense(features=(3, self.heads, head_dim))
        self.out = dense(features=self.width, axis=(-2, -1))
        if self.attention == "krause":
            self.log_sigma = self.param(
                "log_sigma",
                nn.initializers.constant(math.log(self.sigma_init)),
                (self.heads,),
                self.param_dtype,
            )

    def _sigma(self) -> jax.Array:
        return jnp.exp(self.log_sigma.astype(jnp.float32))

    def _project(self, x):
        qkv = self.qkv(x)  # [B, N, 3, H, D]
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = self._project(x)
        weights = None
        if self.attention == "softmax":
            out = softmax_attention(q, k, v, causal=True, return_weights=self.capture)
        elif self.attention == "linear":
            out = linear_attention(q, k, v)
            weights = _linear_weights(q, k) if self.capture else None
        else:
            out = krause_attention(
                q,
                k,
                v,
                sigma=self._sigma(),
                neighborhood=causal_window(x.shape[1], self.window),
                top_k=self.top_k,
                impl=self.attention_impl,
                return_weights=self.capture,
            )
        if isinstance(out, tuple):
            out, weights = out
        if self.capture:
            self.sow("intermediates", "attention_weights", weights)
        return self.out(out)

    def step(self, x: jax.Array, cache, position: jax.Array):
        """One position: x [B, 1, width], this layer's cache, position scalar int32."""
        q, k, v = (y[:, 0] for y in self._project(x))  # [B, H, D]
        if self.attention == "linear":
            cache, out = linear_attention_step(cache, q, k, v)
            return self.out(out[:, None]), cache
        slots = cache.key.shape[2]
        slot = position % slots
        # Slot `slot` stands for the current position: it is empty (position < slots) or holds
        # position - slots, which has just left the ring buffer's window.
        current = jnp.arange(slots) == slot
        valid = (jnp.arange(slots) < position) | current
        write = lambda buffer, y: lax.dynamic_update_slice_in_dim(
            buffer, y[:, :, None].astype(buffer.dtype), slot, axis=2
        )
        # The writes depend on the attention output, so that XLA orders them after the reads of
        # the old cache and updates it in place (without this dependency it copies the whole
        # cache twice per step; `optimization_barrier` does not survive on CPU).
        if self.attention == "softmax":
            out = cached_softmax_attention(q, k, v, cache.key, cache.value, valid, current)
            after_reads = 0 * out[..., :1].astype(k.dtype)
            cache = KVCache(write(cache.key, k + after_reads), write(cache.value, v + after_reads))
        else:
            dtype = compute_dtype(k.dtype)
            centre = jnp.where(position == 0, jnp.round(k.astype(dtype)), cache.centre)
            q = q.astype(dtype) - centre
            k = (k.astype(dtype) - centre).astype(cache.key.dtype)  # as stored in the cache
            cached = (cache.key, cache.key_sq_norm, cache.value)
            out = cached_krause_attention(
                q, k, v, *cached, valid, current, sigma=self._sigma(), top_k=self.top_k
            )
            after_reads = 0 * out[..., :1]
            k_sq_norm = jnp.sum(jnp.square(k.astype(dtype)), axis=-1, keepdims=True) + after_reads
            cache = KrauseCache(
                write(cache.key, k + after_reads.astype(k.dtype)),
                write(cache.value, v + after_reads.astype(v.dtype)),
                write(cache.key_sq_norm, k_sq_norm[..., 0]),
                centre + after_reads,
            )
        return self.out(out[:, None].astype(x.dtype)), cache


class Block(nn.Module):
    """Pre-LN block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x)))."""

    attn: CausalSelfAttention
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
        x = x + self.drop(self.attn(self.norm1(x)), deterministic=not train)
        x = x + self.drop(self.mlp(self.norm2(x), train=train), deterministic=not train)
        if self.capture:
            self.sow("intermediates", "hidden", x)
        return x

    def step(self, x: jax.Array, cache, position: jax.Array):
        y, cache = self.attn.step(self.norm1(x), cache, position)
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
        query), top-k within it (None: all), initial sigma of every head (one log_sigma per
        head per layer). Ignored by the other attentions.
      attention_impl: `impl` of `krause_attention` for the full forward pass ("auto").
      dropout_rate: embedding and residual dropout (train=True only).
      dtype, param_dtype: compute and parameter dtypes; logits are returned in float32.
      capture: blocks `sow` their outputs ("hidden") and attention weights
        ("attention_weights": softmax/linear [B, H, N, N], Krause `KrauseWeights`) into
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
    window: int = 128
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
                CausalSelfAttention(
                    width=self.width,
                    heads=self.heads,
                    attention=self.attention,
                    window=self.window,
                    top_k=self.top_k,
                    sigma_init=self.sigma_init,
                    attention_impl=self.attention_impl,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    capture=self.capture,
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
    """Empty decoding cache of `model` for `batch` sequences: one entry per layer.

    softmax: `KVCache` of `length` slots; krause: `KrauseCache` of min(window, length) slots (a
    ring buffer); linear: `LinearAttentionState` (float32 running sums). Every buffer is
    distinct, so the cache can be donated.
    """
    head_dim = model.width // model.heads
    if model.attention == "linear":
        return tuple(
            init_linear_attention_state(batch, model.heads, head_dim, head_dim, jnp.float32)
            for _ in range(model.depth)
        )
    buffer = lambda slots: jnp.zeros((batch, model.heads, slots, head_dim), model.dtype)
    if model.attention == "softmax":
        return tuple(
            KVCache(buffer(model.length), buffer(model.length)) for _ in range(model.depth)
        )
    slots = min(model.window, model.length)
    dtype = compute_dtype(model.dtype)
    return tuple(
        KrauseCache(
            buffer(slots),
            buffer(slots),
            jnp.zeros((batch, model.heads, slots), dtype),
            jnp.zeros((batch, model.heads, head_dim), dtype),
        )
        for _ in range(model.depth)
    )


MNIST = dict(image_shape=(28, 28, 1), width=256, depth=12, heads=8, window=128, top_k=96)
CIFAR10 = dict(image_shape=(32, 32, 3), width=512, depth=16, heads=8, window=256, top_k=192)

MODELS = {
    "pixel_ar_mnist": functools.partial(PixelAR, **MNIST),
    "pixel_ar_cifar10": functools.partial(PixelAR, **CIFAR10),
}

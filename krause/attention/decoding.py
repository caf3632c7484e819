"""One decoding step of causal attention against a cache: softmax and Krause (ring buffer).

One query per sequence attends to a cache of S slots, heads-major ([B, H, S, D]), in which slot
`current` stands for the current position: its key and value are passed separately and written to
the cache only after the step. This keeps a step O(S) with the cache updated in place (checked in
the compiled HLO of the decoding loop, XLA CPU):
  * heads-major caches: with the [B, S, H, D] layout of the other `krause.attention` functions,
    XLA's CPU dot transposes the whole cache at every step (about 20x slower for 784 slots);
  * reading the old cache: when the updated cache also fed the attention, XLA duplicated the
    dynamic-update-slice into both users and copied the whole cache several times per step;
  * the current position replaces its slot's score instead of being appended, so rows keep S
    entries (the top-k radix select is ~2x slower on 129 than on 128 entries).
The write-back that completes a step lives with the caller (`krause.models.attention`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from krause.attention.common import compute_dtype, masked_softmax
from krause.attention.selection import kth_largest


class KVCache(NamedTuple):
    """Softmax key/value slots of one layer, heads-major: [batch, heads, length, head_dim] each.

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
    float32 when all keys share a large offset.

    Fields: key, value [B, H, S, D]; key_sq_norm [B, H, S] float32; centre [B, H, D].
    """

    key: jax.Array
    value: jax.Array
    key_sq_norm: jax.Array
    centre: jax.Array


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
    softmax over the survivors. q, k and the cached `key` are relative to the same centre
    (`KrauseCache`), `key_sq_norm` = ||key||^2 [B, H, S]; other shapes as
    `cached_softmax_attention`; sigma [H].
    """
    dtype = compute_dtype(q.dtype)
    q, k, v, key, value = (x.astype(dtype) for x in (q, k, v, key, value))
    cached = jnp.einsum("bhd,bhsd->bhs", 2.0 * q, key) - key_sq_norm.astype(dtype)
    scores = _with_current(cached, jnp.sum((2.0 * q - k) * k, axis=-1), current)
    scores = scores * (0.5 / jnp.square(sigma.astype(dtype)))[:, None]
    if top_k is None or top_k >= scores.shape[-1]:
        return _mix(masked_softmax(scores, valid), value, v, current)
    # No argmax guard: XLA recomputes the scores in the radix select's fusion and in the
    # comparison's, but from the same materialised dot and reduction by a subtract, a select and
    # a multiply (nothing to contract into an FMA), so both copies are bit-identical and the k-th
    # key meets its own threshold (tested at XLA optimisation levels 0 and 2).
    keep = valid & (scores >= kth_largest(scores, top_k, valid))
    return _mix(masked_softmax(scores, keep), value, v, current)

"""Pieces shared by every Krause attention implementation: scores, selection, normalisation."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from krause.attention.selection import kth_largest


class KrauseWeights(NamedTuple):
    """Attention probabilities in compact per-query form.

    local_values:  [batch, length, heads, width]; weight of query i on slot s of `indices`.
    indices:       [length, width] int32 key index of each slot, -1 for unused slots
                   (and for every slot of the global queries).
    global_values: [batch, num_global_queries, heads, length]; dense rows of the first queries,
                   which see every key.
    """

    local_values: jax.Array
    indices: jax.Array
    global_values: jax.Array


def compute_dtype(dtype) -> jnp.dtype:
    """float64 stays float64; everything else (bf16, f16, f32) is computed in float32."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def neg_sq_dist(q: jax.Array, k: jax.Array, axis: int = -1) -> jax.Array:
    """-||q - k||^2 along `axis`, computed from the difference (well conditioned)."""
    return -jnp.sum(jnp.square(q - k), axis=axis)


def centred_heads_major(
    q: jax.Array, k: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, N, H, D] q, k, v -> heads-major [B, H, N, D], q and k centred on the keys' mean.

    Centring is exact (distances are translation invariant) and keeps the matmul form of the
    scores accurate in float32 when q and k are large but close; the centre is rounded to
    integers so that small or integer-valued inputs stay exact (ties stay ties). Heads-major
    operands: XLA CPU then runs every matmul of the forward and backward pass in its fast form
    (on [B, N, H, D] operands it picked forms up to 1.9x slower).
    """
    centre = jax.lax.stop_gradient(jnp.round(jnp.mean(k, axis=1, keepdims=True)))
    return tuple(jnp.swapaxes(x, 1, 2) for x in (q - centre, k - centre, v))


def matmul_scores(q: jax.Array, k: jax.Array, inv_two_sigma_sq: jax.Array) -> jax.Array:
    """(2 q.k - ||k||^2) / (2 sigma^2): -||q - k||^2 / (2 sigma^2) up to the row constant ||q||^2.

    q [B, H, Nq, D], k [B, H, Nk, D] (heads-major, centred), inv_two_sigma_sq [H] ->
    [B, H, Nq, Nk]. XLA recomputes the scores inside every fusion that reads them (a slot
    gather, the comparison with a threshold, the softmax). Written as (dot - ||k||^2) * inv,
    with the matmul and the reduction materialised, each copy is the same two IEEE operations
    (there is no a * b + c to contract into an FMA), so the k-th key meets its own threshold.
    """
    sq_norms = jnp.sum(jnp.square(k), axis=-1)[:, :, None, :]  # [B, H, 1, Nk]
    dots = jnp.einsum("bhid,bhjd->bhij", 2.0 * q, k)
    return (dots - sq_norms) * inv_two_sigma_sq[:, None, None]


def top_k_keep(scores: jax.Array, valid: jax.Array | None, top_k: int | None) -> jax.Array:
    """bool [..., n]: valid entries whose score is >= the row's top_k-th largest valid score.

    Ties at the k-th value are all kept. top_k None (or >= n) keeps every valid entry.
    """
    keep = jnp.ones(scores.shape, bool) if valid is None else jnp.broadcast_to(valid, scores.shape)
    if top_k is None or top_k >= scores.shape[-1]:
        return keep
    return keep_above(scores, keep, kth_largest(scores, top_k, keep))


def keep_above(scores: jax.Array, keep: jax.Array, threshold: jax.Array) -> jax.Array:
    """keep & (scores >= threshold), and always each row's best kept entry.

    XLA may recompute `scores` inside several fusions and round the copies differently (e.g. FMA
    contraction in one but not another), so the entry that defined the threshold can fall one
    ulp below it. The row's argmax, a materialised reduction, is kept by index: rows are never
    empty (the result can only lose entries within rounding of the threshold).
    """
    best = jnp.argmax(jnp.where(keep, scores, -jnp.inf), axis=-1, keepdims=True)
    is_best = jnp.arange(scores.shape[-1]) == best
    return keep & ((scores >= threshold) | is_best)


def slot_threshold_and_best(
    slot_scores: jax.Array, slot_valid: jax.Array, positions: jax.Array, top_k: int
) -> tuple[jax.Array, jax.Array]:
    """Top-k threshold of each row's neighbour slots, and where its best slot sits in the row.

    For paths that select on a wide row (dense, banded) from the few slots a query can see.
    slot_scores [..., w] are the row's scores gathered at `positions` (int, broadcastable to
    slot_scores); slot_valid marks the slots in use. Returns (threshold [..., 1], best [..., 1]):
    keep `(row >= threshold) | (arange(row length) == best)`, the best slot kept by index as in
    `keep_above`, so a row can never end up empty.
    """
    threshold = kth_largest(slot_scores, top_k, slot_valid)
    best_slot = jnp.argmax(jnp.where(slot_valid, slot_scores, -jnp.inf), axis=-1, keepdims=True)
    positions = jnp.asarray(positions)
    positions = positions.reshape((1,) * (slot_scores.ndim - positions.ndim) + positions.shape)
    return threshold, jnp.take_along_axis(positions, best_slot, axis=-1)


def masked_softmax(scores: jax.Array, keep: jax.Array) -> jax.Array:
    """Softmax over the kept entries of each row; zero elsewhere. Rows need >= 1 kept entry."""
    return jax.nn.softmax(jnp.where(keep, scores, -jnp.inf), axis=-1)


def select_and_normalize(
    scores: jax.Array, valid: jax.Array | None, top_k: int | None
) -> jax.Array:
    """Neighbourhood mask, then top-k over the valid scores, then softmax over the survivors.

    Args:
      scores: [..., n] finite scores (larger = more affine).
      valid: bool broadcastable to scores, or None (all valid). Every row needs >= 1 valid entry.
      top_k: keep the top_k largest valid scores per row; None keeps all. Ties at the k-th value
        are all kept (every valid key whose score is >= the k-th largest survives).

    Returns:
      probabilities [..., n], zero outside the kept set, rows sum to one.
    """
    return masked_softmax(scores, top_k_keep(scores, valid, top_k))

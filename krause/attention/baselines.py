"""Baselines in the [batch, length, heads, dim] convention: softmax and causal linear attention."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from krause.attention.common import compute_dtype


def softmax_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """softmax(q k^T / sqrt(d) + bias) v, accumulated in float32.

    Args:
      q: [B, Nq, H, D]; k: [B, Nk, H, D]; v: [B, Nk, H, Dv].
      causal: query i sees keys j <= i + (Nk - Nq) (the last Nq positions of the keys).
      mask: optional bool broadcastable to [B, H, Nq, Nk] (True = attend).
      bias: optional float broadcastable to [B, H, Nq, Nk].

    Returns:
      out [B, Nq, H, Dv] in q.dtype; with return_weights also the probabilities [B, H, Nq, Nk].
    """
    dtype = compute_dtype(q.dtype)
    # Scale q, not the [B, H, Nq, Nk] scores (as Flax does): one pass over N x D, not N x N.
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    # Heads-major [B, H, N, D] operands: XLA CPU then runs every matmul of the forward and
    # backward pass in its fast form (on [B, N, H, D] operands it picked forms up to 1.9x slower;
    # the einsums of flax.linen.dot_product_attention have the same problem).
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    scores = jnp.einsum("bhid,bhjd->bhij", q, k, preferred_element_type=dtype)
    if bias is not None:
        scores = scores + bias.astype(dtype)
    nq, nk = q.shape[2], k.shape[2]
    if causal:
        allowed = jnp.arange(nk)[None, :] <= jnp.arange(nq)[:, None] + (nk - nq)
        mask = allowed if mask is None else mask & allowed
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(dtype).min)
    p = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhij,bhjd->bhid", p, v.astype(dtype)).astype(q.dtype)
    out = jnp.swapaxes(out, 1, 2)
    return (out, p) if return_weights else out


def _elu_feature(x: jax.Array) -> jax.Array:
    return jax.nn.elu(x) + 1.0


class LinearAttentionState(NamedTuple):
    """Running sums of causal linear attention.

    kv: [B, H, D, Dv] = sum_j phi(k_j) v_j^T;  k_sum: [B, H, D] = sum_j phi(k_j).
    """

    kv: jax.Array
    k_sum: jax.Array


def init_linear_attention_state(
    batch: int, heads: int, head_dim: int, value_dim: int, dtype=jnp.float32
) -> LinearAttentionState:
    return LinearAttentionState(
        jnp.zeros((batch, heads, head_dim, value_dim), dtype),
        jnp.zeros((batch, heads, head_dim), dtype),
    )


def linear_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, chunk_size: int = 64, eps: float = 1e-6
) -> jax.Array:
    """Causal linear attention with phi(x) = elu(x) + 1, by chunked prefix sums.

    out_i = phi(q_i) . sum_{j<=i} phi(k_j) v_j^T / (phi(q_i) . sum_{j<=i} phi(k_j) + eps).
    Within a chunk of C positions the causal part is a masked C x C product; across chunks a
    `lax.scan` carries the [B, H, D, Dv] running sums, so no per-position D x Dv tensor exists.

    Args:
      q, k: [B, T, H, D]; v: [B, T, H, Dv]. Returns [B, T, H, Dv] in q.dtype.
    """
    batch, t, heads, d = q.shape
    dtype = compute_dtype(q.dtype)
    c = min(chunk_size, t)
    chunks = -(-t // c)
    pad = ((0, 0), (0, chunks * c - t), (0, 0), (0, 0))

    def to_chunks(x):  # [B, T, H, X] -> [chunks, B, H, C, X]; padding only reaches padded queries
        x = jnp.pad(x, pad).reshape(batch, chunks, c, heads, x.shape[-1])
        return jnp.transpose(x, (1, 0, 3, 2, 4))

    phi_q = to_chunks(_elu_feature(q.astype(dtype)))
    phi_k = to_chunks(_elu_feature(k.astype(dtype)))
    vc = to_chunks(v.astype(dtype))
    causal_mask = jnp.tril(jnp.ones((c, c), bool))

    def step(state: LinearAttentionState, chunk):
        pq, pk, vv = chunk
        intra = jnp.where(causal_mask, jnp.einsum("bhid,bhjd->bhij", pq, pk), 0.0)
        num = jnp.einsum("bhid,bhde->bhie", pq, state.kv) + jnp.einsum("bhij,bhje->bhie", intra, vv)
        den = jnp.einsum("bhid,bhd->bhi", pq, state.k_sum) + jnp.sum(intra, axis=-1)
        new_state = LinearAttentionState(
            state.kv + jnp.einsum("bhjd,bhje->bhde", pk, vv), state.k_sum + jnp.sum(pk, axis=2)
        )
        return new_state, num / (den[..., None] + eps)

    init = init_linear_attention_state(batch, heads, d, v.shape[-1], dtype)
    _, out = lax.scan(step, init, (phi_q, phi_k, vc))  # [chunks, B, H, C, Dv]
    out = jnp.transpose(out, (1, 0, 3, 2, 4)).reshape(batch, chunks * c, heads, -1)
    return out[:, :t].astype(q.dtype)


def linear_attention_step(
    state: LinearAttentionState, q: jax.Array, k: jax.Array, v: jax.Array, *, eps: float = 1e-6
) -> tuple[LinearAttentionState, jax.Array]:
    """One decoding step of causal linear attention: q, k [B, H, D], v [B, H, Dv] -> [B, H, Dv]."""
    dtype = state.kv.dtype
    pq, pk = _elu_feature(q.astype(dtype)), _elu_feature(k.astype(dtype))
    state = LinearAttentionState(
        state.kv + jnp.einsum("bhd,bhe->bhde", pk, v.astype(dtype)), state.k_sum + pk
    )
    num = jnp.einsum("bhd,bhde->bhe", pq, state.kv)
    den = jnp.einsum("bhd,bhd->bh", pq, state.k_sum)
    return state, (num / (den[..., None] + eps)).astype(q.dtype)

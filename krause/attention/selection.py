"""Exact k-th largest value along the last axis, fast on CPUs.

XLA's CPU `top_k` and `sort` call a compiled comparator per comparison and take ~10-30 us per row
of 128-256 entries. A bitwise radix select on order-preserving integer keys needs 32 (float32) or
64 (float64) vectorised count passes and is >10x faster; rows are processed in cache-sized
chunks. The result equals `lax.top_k(x, k)[0][..., k - 1]` exactly (ties counted with multiplicity).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_CHUNK_ELEMENTS = 1 << 16  # elements per chunk (~256 KiB of float32) to stay in cache
_UNCHUNKED_ELEMENTS = 1 << 20  # below this, one pass per bit over everything is faster
_TRANSPOSE_MAX_N = 1536  # rows up to this length are counted in the transposed layout


def _order_preserving_keys(x: jax.Array) -> jax.Array:
    """Map floats to unsigned ints with the same order (-inf < ... < -0 < +0 < ... < inf)."""
    bits = x.dtype.itemsize * 8
    utype = jnp.uint32 if bits == 32 else jnp.uint64
    u = lax.bitcast_convert_type(x, utype)
    sign = u >> (bits - 1)
    return jnp.where(sign == 1, ~u, u | (utype(1) << (bits - 1)))


def _keys_to_float(key: jax.Array, dtype) -> jax.Array:
    bits = key.dtype.itemsize * 8
    top = key.dtype.type(1) << (bits - 1)
    u = jnp.where(key >= top, key ^ top, ~key)
    return lax.bitcast_convert_type(u, dtype)


def _kth_largest_key(key: jax.Array, k: int) -> jax.Array:
    """Largest key t with #{key >= t} >= k, per row of `key` [rows, n] -> [rows]."""
    bits = key.dtype.itemsize * 8
    utype = key.dtype.type
    # Short rows (neighbourhoods, decoding caches) are transposed so that each count reduces
    # over the leading axis, vectorised across rows: on XLA CPU 1.1-1.8x faster for n from 26
    # to 1537. From n = 2049 on a chunk holds < 32 rows, and counting along the rows is faster.
    transposed = key.shape[1] <= _TRANSPOSE_MAX_N
    columns, axis = (key.T, 0) if transposed else (key, 1)

    def step(i, prefix):
        candidate = prefix | (utype(1) << lax.convert_element_type(bits - 1 - i, key.dtype))
        above = columns >= (candidate if transposed else candidate[:, None])
        count = jnp.sum(above, axis=axis, dtype=jnp.int32)
        return jnp.where(count >= k, candidate, prefix)

    return lax.fori_loop(0, bits, step, jnp.zeros(key.shape[:1], key.dtype))


def kth_largest(x: jax.Array, k: int, valid: jax.Array | None = None) -> jax.Array:
    """The k-th largest entry of each row of `x` over the `valid` entries.

    Args:
      x: float32 or float64 [..., n].
      k: static int >= 1.
      valid: optional bool broadcastable to `x`; invalid entries never count.

    Returns:
      [..., 1] of x.dtype; -inf where a row has fewer than k valid entries (so that
      `valid & (x >= kth)` keeps every valid entry). No gradient flows through the result.
    """
    x = lax.stop_gradient(x)
    if x.dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"kth_largest expects float32 or float64, got {x.dtype}.")
    key = _order_preserving_keys(x)
    if valid is not None:
        key = jnp.where(valid, key, key.dtype.type(0))
    n = x.shape[-1]
    rows = key.reshape(-1, n)
    if rows.size <= _UNCHUNKED_ELEMENTS:
        kth = _kth_largest_key(rows, k)
    else:  # cache-sized chunks of rows; zero keys pad the last one
        per_chunk = max(1, _CHUNK_ELEMENTS // n)
        chunks = -(-rows.shape[0] // per_chunk)
        padded = jnp.pad(rows, ((0, chunks * per_chunk - rows.shape[0]), (0, 0)))
        kth = lax.map(lambda r: _kth_largest_key(r, k), padded.reshape(chunks, per_chunk, n))
        kth = kth.reshape(-1)[: rows.shape[0]]
    kth = kth.reshape(x.shape[:-1] + (1,))
    value = _keys_to_float(kth, x.dtype)
    return jnp.where(kth == 0, -jnp.inf, value).astype(x.dtype)

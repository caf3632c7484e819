"""O(N * w) Krause attention for the two structured neighbourhoods.

* `grid_stencil`: patch grids. Each window offset (dr, dc) is a shifted view of the zero-padded
  key/value grid, so the scores are computed offset by offset from the q - k difference; no
  gather, no [N, N] array. Global (CLS) queries are dense rows, O(N) each.
* `grid_banded`: patch grids with matmuls. Queries are cut into blocks of R grid rows; block b
  attends to the global keys and the R + 2 r grid rows around it (its band), so every query
  scores g + (R + 2 r) W keys instead of N, with batched matmuls on [B, H, blocks, ...] arrays.
* `causal_blocked`: causal windows. Queries are cut into blocks of C; block b attends to the
  key blocks b - P .. b with P = ceil((W - 1) / C), i.e. (P + 1) * C ~ W + C keys per query
  instead of N. Scores use matmuls: -||q - k||^2 = 2 q.k - ||k||^2 - ||q||^2 on block-centred
  q and k, where ||q||^2 is dropped: a per-row constant changes neither top-k nor the softmax.

All take inputs already in the compute dtype and `inv_two_sigma_sq` of shape [heads], and return
(out [B, N, H, Dv], `KrauseWeights` if `return_weights` else None).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from krause.attention.common import (
    KrauseWeights,
    centred_heads_major,
    matmul_scores,
    neg_sq_dist,
    select_and_normalize,
    slot_threshold_and_best,
)
from krause.attention.neighborhoods import CausalWindow, GridNeighborhood, index_table


def global_rows(
    q_global: jax.Array, k: jax.Array, v: jax.Array, inv_two_sigma_sq: jax.Array, top_k
) -> tuple[jax.Array, jax.Array]:
    """Queries that see every key. q_global [B, G, H, D] -> (out [B, G, H, Dv], p [B, G, H, N])."""
    scores = neg_sq_dist(q_global[:, :, None], k[:, None])  # [B, G, N, H]
    scores = jnp.swapaxes(scores, -1, -2) * inv_two_sigma_sq[:, None]
    p = select_and_normalize(scores, None, top_k)
    return jnp.einsum("bghn,bnhd->bghd", p, v), p


def grid_stencil(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    inv_two_sigma_sq: jax.Array,
    nb: GridNeighborhood,
    top_k: int | None,
    return_weights: bool = False,
) -> tuple[jax.Array, KrauseWeights | None]:
    """Krause attention on a patch grid by shifted views of the padded key grid."""
    batch, _, heads, _ = q.shape
    g, h, w, r = nb.num_global, nb.height, nb.width, nb.radius
    grid = lambda x: x[:, g:].reshape(batch, h, w, heads, x.shape[-1])
    pad = ((0, 0), (r, r), (r, r), (0, 0), (0, 0))
    q_grid = grid(q)
    k_pad, v_pad = jnp.pad(grid(k), pad), jnp.pad(grid(v), pad)
    shifted = lambda x, dr, dc: x[:, r + dr : r + dr + h, r + dc : r + dc + w]

    # Slot order matches `index_table`: global keys first, then the window offsets.
    scores = [neg_sq_dist(q_grid, k[:, j, None, None]) for j in range(g)]
    scores += [neg_sq_dist(q_grid, shifted(k_pad, dr, dc)) for dr, dc in nb.offsets]
    scores = jnp.stack(scores, axis=-1) * inv_two_sigma_sq[:, None]  # [B, h, w, H, slots]
    valid = (index_table(nb)[g:] >= 0).reshape(h, w, 1, -1)
    p = select_and_normalize(scores, valid, top_k)

    values = [v[:, j, None, None] for j in range(g)]
    values += [shifted(v_pad, dr, dc) for dr, dc in nb.offsets]
    out_grid = sum(p[..., s, None] * x for s, x in enumerate(values))
    out_grid = out_grid.reshape(batch, h * w, heads, -1)
    p = p.reshape(batch, h * w, heads, -1)
    out_global, p_global = global_rows(q[:, :g], k, v, inv_two_sigma_sq, top_k)
    out = jnp.concatenate([out_global, out_grid], axis=1)
    if not return_weights:
        return out, None
    p = jnp.concatenate([jnp.zeros((batch, g) + p.shape[2:], p.dtype), p], axis=1)
    return out, KrauseWeights(p, jnp.asarray(index_table(nb)), p_global)


# `grid_banded` pads the global queries to this many rows: XLA turns a single-row dot into
# broadcasts and reductions that end up fused, slowly, into the backward pass's transposes.
GLOBAL_QUERY_ROWS = 4


def grid_band_rows(nb: GridNeighborhood) -> int:
    """Grid rows R per query block of `grid_banded`.

    Each query scores g + (R + 2 r) W keys, so small R wastes fewer scores, but tiny matmuls
    run far below peak on CPUs: R is the smallest number of rows giving >= 24 queries per block
    (a layer's projections + attention, forward + backward on 2 CPU cores at 14 x 14, radius 2:
    R = 1, 3 and 7 take 1.04-1.09x the time of R = 2).
    """
    return int(min(nb.height, max(1, math.ceil(24 / nb.width))))


@functools.lru_cache(maxsize=64)
def grid_band_tables(nb: GridNeighborhood, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static tables of `grid_banded` with R = `rows` grid rows per query block.

    Band layout of block b: the g global keys, then grid rows b R - r .. b R + R - 1 + r
    (rows outside the grid are zero padding), W keys per row: L = g + (R + 2 r) W positions.
    Scores of a block are key-major, [L, R W].

    Returns:
      mask:  bool [blocks, L, R W], key at band position in query t's neighbourhood. Padding
             queries (grid rows >= height) see position 0 only, so their columns stay finite.
      slots: int32 [blocks, R W, w], flat index position * R W + t of each neighbour slot of
             query t (slot order of `index_table`); 0 for unused slots.
      valid: bool [blocks, R W, w], slot in use.
    """
    g, h, w, r = nb.num_global, nb.height, nb.width, nb.radius
    blocks = math.ceil(h / rows)
    band = g + (rows + 2 * r) * w
    table = index_table(nb)[g:]  # [h w, slots]
    query = np.arange(blocks * rows * w).reshape(blocks, rows * w)  # grid index of each query
    inside = query < h * w
    keys = np.where(inside[..., None], table[np.minimum(query, h * w - 1)], -1)
    block = np.arange(blocks)[:, None, None]
    key_row, key_col = np.divmod(keys - g, w)
    position = np.where(keys < g, keys, g + (key_row - block * rows + r) * w + key_col)
    valid = keys >= 0
    position = np.where(valid, position, 0)
    mask = np.zeros((blocks, band, rows * w), bool)
    b_idx, t_idx, s_idx = np.nonzero(valid)
    mask[b_idx, position[b_idx, t_idx, s_idx], t_idx] = True
    pad_block, pad_query = np.nonzero(~inside)
    mask[pad_block, 0, pad_query] = True
    slots = position * (rows * w) + np.arange(rows * w)[None, :, None]
    return mask, slots.astype(np.int32), valid


def grid_banded(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    inv_two_sigma_sq: jax.Array,
    nb: GridNeighborhood,
    top_k: int | None,
    return_weights: bool = False,
    rows: int | None = None,
) -> tuple[jax.Array, KrauseWeights | None]:
    """Krause attention on a patch grid by blocks of R grid rows against their bands.

    The band probabilities [B, H, blocks, L, R W] become `KrauseWeights` through
    `grid_band_weights`. Scores use
    matmuls on keys centred on their (rounded) mean, as the dense path: -||q - k||^2 =
    2 q.k - ||k||^2 - ||q||^2 with the row constant ||q||^2 dropped. A block's scores are
    key-major ([L, R W]): XLA CPU gives its fast matmul library (YNNPACK) only dots whose left
    operand is contracted along its minor axis; two of the six dots of forward + backward are
    not, and key-major they produce the small [R W, D] query-side results instead of [L, D]
    band-side ones (7% less time for a layer's projections + attention on one core).
    """
    batch, n, heads, _ = q.shape
    g, h, w, r = nb.num_global, nb.height, nb.width, nb.radius
    rows = rows or grid_band_rows(nb)
    blocks = math.ceil(h / rows)
    mask, slots, valid = grid_band_tables(nb, rows)
    to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # [B, N, H, D] <-> [B, H, N, D]
    qh, kh, vh = centred_heads_major(q, k, v)

    def grid_rows(x, front, back):  # [B, H, N, D] -> [B, H, front + h + back, W, D], zero rows
        x = x[:, :, g:].reshape(batch, heads, h, w, x.shape[-1])
        return jnp.pad(x, ((0, 0), (0, 0), (front, back), (0, 0), (0, 0)))

    def bands(x):  # [B, H, N, D] -> [B, H, blocks, L, D]
        padded = grid_rows(x, r, blocks * rows - h + r)
        span = (rows + 2 * r) * w
        parts = [padded[:, :, b * rows : b * rows + rows + 2 * r] for b in range(blocks)]
        local_keys = jnp.stack(parts, axis=2).reshape(batch, heads, blocks, span, x.shape[-1])
        global_keys = jnp.broadcast_to(x[:, :, None, :g], (batch, heads, blocks, g, x.shape[-1]))
        return jnp.concatenate([global_keys, local_keys], axis=3)

    q_blocks = grid_rows(qh, 0, blocks * rows - h).reshape(batch, heads, blocks, rows * w, -1)
    k_bands, v_bands = bands(kh), bands(vh)
    sq_norms = jnp.sum(jnp.square(k_bands), axis=-1, keepdims=True)  # [B, H, blocks, L, 1]
    dots = jnp.einsum("bhnld,bhntd->bhnlt", k_bands, 2.0 * q_blocks)
    scores = (dots - sq_norms) * inv_two_sigma_sq[:, None, None, None]  # [B, H, blocks, L, R W]
    keep = jnp.asarray(mask)
    if top_k is not None and top_k < slots.shape[-1]:
        flat = jax.lax.stop_gradient(scores).reshape(batch, heads, blocks, -1)
        slot_scores = jnp.take_along_axis(flat, jnp.asarray(slots.reshape(1, 1, blocks, -1)), -1)
        slot_scores = slot_scores.reshape(batch, heads, blocks, rows * w, -1)
        positions = slots // (rows * w)  # band position of each slot
        threshold, best = slot_threshold_and_best(slot_scores, valid, positions, top_k)
        threshold, best = jnp.swapaxes(threshold, -1, -2), jnp.swapaxes(best, -1, -2)
        is_best = jnp.arange(mask.shape[1])[:, None] == best
        keep = keep & ((jax.lax.stop_gradient(scores) >= threshold) | is_best)
    p = jax.nn.softmax(jnp.where(keep, scores, -jnp.inf), axis=-2)
    out = jnp.einsum("bhnlt,bhnld->bhntd", p, v_bands).reshape(batch, heads, blocks * rows * w, -1)
    out = out[:, :, : h * w]
    weights = lambda p_global: (
        KrauseWeights(grid_band_weights(p, nb), jnp.asarray(index_table(nb)), p_global)
        if return_weights
        else None
    )
    if g == 0:
        return to_heads(out), weights(jnp.zeros((batch, 0, heads, n), p.dtype))
    # Global queries see every key: the same matmul form on heads-major arrays, the query rows
    # zero-padded to at least GLOBAL_QUERY_ROWS.
    pad = max(0, GLOBAL_QUERY_ROWS - g)
    q_global = jnp.pad(qh[:, :, :g], ((0, 0), (0, 0), (0, pad), (0, 0)))
    scores_global = matmul_scores(q_global, kh, inv_two_sigma_sq)  # [B, H, G + pad, N]
    p_global = select_and_normalize(scores_global, None, top_k)
    out_global = jnp.einsum("bhgn,bhnd->bhgd", p_global, vh)[:, :, :g]
    p_global = p_global[:, :, :g]
    out = to_heads(jnp.concatenate([out_global, out], axis=2))
    return out, weights(jnp.swapaxes(p_global, 1, 2))


def grid_band_weights(p: jax.Array, nb: GridNeighborhood) -> jax.Array:
    """Band probabilities [B, H, blocks, L, R W] -> compact [B, N, H, w] (global rows zero)."""
    batch, heads, blocks, _, queries = p.shape
    _, slots, valid = grid_band_tables(nb, queries // nb.width)
    flat = jnp.take_along_axis(
        p.reshape(batch, heads, blocks, -1), jnp.asarray(slots.reshape(1, 1, blocks, -1)), axis=-1
    )
    flat = jnp.where(jnp.asarray(valid.reshape(blocks, -1)), flat, 0)
    local = flat.reshape(batch, heads, blocks * queries, -1)[:, :, : nb.height * nb.width]
    local = jnp.concatenate(
        [jnp.zeros((batch, heads, nb.num_global, local.shape[-1]), p.dtype), local], axis=2
    )
    return jnp.swapaxes(local, 1, 2)


def causal_block_size(window: int) -> int:
    """Query block C for a causal window W: small blocks waste fewer scores (W + C per query)."""
    return int(np.clip(window, 16, 64))


def causal_blocked(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    inv_two_sigma_sq: jax.Array,
    nb: CausalWindow,
    top_k: int | None,
    return_weights: bool = False,
    block_size: int | None = None,
) -> tuple[jax.Array, KrauseWeights | None]:
    """Krause attention over a causal window by query blocks against the key blocks reaching them.

    The blocked probabilities [B, H, blocks, C, (P+1)C] become `KrauseWeights` through
    `causal_blocked_weights`.
    """
    batch, n, heads, _ = q.shape
    window = min(nb.window, n)
    c = block_size or causal_block_size(window)
    prev = math.ceil((window - 1) / c)  # key blocks before the query's own block
    blocks = math.ceil(n / c)
    tail = blocks * c - n

    to_blocks = lambda x, front: jnp.pad(
        jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (front, tail), (0, 0))
    ).reshape(batch, heads, -1, c, x.shape[-1])
    q_blk = to_blocks(q, 0)  # [B, H, blocks, C, D]
    context = lambda x: jnp.concatenate(
        [x[:, :, p : p + blocks] for p in range(prev + 1)], axis=3
    )  # [B, H, blocks, (prev + 1) * C, D]
    k_ctx, v_ctx = context(to_blocks(k, prev * c)), context(to_blocks(v, prev * c))

    # Centre each block on the mean of its own keys: exact (distances are translation invariant)
    # and keeps the expanded form accurate in float32 when q and k are large but close.
    # The centre (mean of the block's real keys) is rounded to integers so that small or
    # integer-valued inputs stay exact.
    real_keys = np.minimum(c, n - c * np.arange(blocks)).reshape(blocks, 1, 1)
    centre = jnp.sum(to_blocks(k, 0), axis=3, keepdims=True) / real_keys
    centre = jax.lax.stop_gradient(jnp.round(centre))
    q_blk, k_ctx = q_blk - centre, k_ctx - centre
    dots = jnp.einsum("bhntd,bhncd->bhntc", q_blk, k_ctx)
    scores = 2.0 * dots - jnp.sum(jnp.square(k_ctx), axis=-1)[:, :, :, None, :]
    scores = scores * inv_two_sigma_sq[None, :, None, None, None]

    # Query b*C + t, key (b - prev)*C + col: inside the window and not in the front padding.
    blk = jnp.arange(blocks)[:, None, None]
    t = jnp.arange(c)[None, :, None]
    col = jnp.arange((prev + 1) * c)[None, None, :]
    lag = t + prev * c - col
    valid = (lag >= 0) & (lag < window) & (col >= (prev - blk) * c)
    p = select_and_normalize(scores, valid, top_k)

    out = jnp.einsum("bhntc,bhncd->bhntd", p, v_ctx)
    out = jnp.swapaxes(out.reshape(batch, heads, blocks * c, -1)[:, :, :n], 1, 2)
    if not return_weights:
        return out, None
    no_global = jnp.zeros((batch, 0, heads, n), p.dtype)
    compact = causal_blocked_weights(p, n, window)
    return out, KrauseWeights(compact, jnp.asarray(index_table(nb)), no_global)


def causal_blocked_weights(p: jax.Array, n: int, window: int) -> jax.Array:
    """Blocked probabilities [B, H, blocks, C, (P+1)C] -> compact [B, N, H, W], oldest first."""
    batch, heads, blocks, c, width = p.shape
    prev = width // c - 1
    # Slot s of query t is column t + prev*C - W + 1 + s, always inside [0, width) because
    # prev * C >= W - 1; slots of keys < 0 land in the masked front padding (p = 0).
    cols = np.arange(c)[:, None] + prev * c - window + 1 + np.arange(window)[None, :]
    compact = jnp.take_along_axis(p, jnp.asarray(cols)[None, None, None], axis=-1)
    compact = compact.reshape(batch, heads, blocks * c, window)[:, :, :n]
    return jnp.swapaxes(compact, 1, 2)

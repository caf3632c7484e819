"""O(N * w) Krause attention for the two structured neighbourhoods.

* `grid_stencil`: patch grids. Each window offset (dr, dc) is a shifted view of the zero-padded
  key/value grid, so the scores are computed offset by offset from the q - k difference; no
  gather, no [N, N] array. Global (CLS) queries are dense rows, O(N) each.
* `causal_blocked`: causal windows. Queries are cut into blocks of C; block b attends to the
  key blocks b - P .. b with P = ceil((W - 1) / C), i.e. (P + 1) * C ~ W + C keys per query
  instead of N. Scores use matmuls: -||q - k||^2 = 2 q.k - ||k||^2 - ||q||^2 on block-centred
  q and k, where ||q||^2 is dropped: a per-row constant changes neither top-k nor the softmax.

Both take inputs already in the compute dtype and `inv_two_sigma_sq` of shape [heads], and return
(out [B, N, H, Dv], probabilities in the compact per-slot layout of `index_table`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from krause.attention.common import neg_sq_dist, select_and_normalize
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
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (out [B, N, H, Dv], local p [B, N, H, w], global p [B, G, H, N])."""
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
    if g == 0:
        return out_grid, p, jnp.zeros((batch, 0, heads, nb.length), p.dtype)
    out_global, p_global = global_rows(q[:, :g], k, v, inv_two_sigma_sq, top_k)
    p = jnp.concatenate([jnp.zeros((batch, g) + p.shape[2:], p.dtype), p], axis=1)
    return jnp.concatenate([out_global, out_grid], axis=1), p, p_global


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
    block_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Returns (out [B, N, H, Dv], blocked p [B, H, blocks, C, (P+1)C]).

    `causal_blocked_weights` turns the blocked p into the compact [B, N, H, W] layout.
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
    return out, p


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

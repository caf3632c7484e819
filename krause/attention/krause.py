"""Krause attention: RBF affinities, local neighbourhoods, top-k selection.

Per head h, for query i and key j in the neighbourhood N(i):

    s_ij = -||q_i - k_j||^2 / (2 sigma_h^2)
    S_i  = keys of the top_k largest s_ij over N(i)   (all of N(i) if top_k is None or >= |N(i)|)
    out_i = sum_{j in S_i} softmax_j(s_ij) v_j

No 1/sqrt(d) factor. Ties at the k-th score: every key whose score is >= the k-th largest is kept
(deterministic; on real data ties have measure zero). All arrays are [batch, length, heads, dim].

Implementations (`impl=`):
  "reference": dense [N, N] scores from explicit differences, O(N^2 d) memory. The oracle.
  "dense":     dense masked scores via matmuls, O(N^2) memory. Fast for short sequences.
  "stencil":   grids: shifted views of the padded key grid, O(N w), no gather.
  "banded":    grids: blocks of grid rows against the rows around them, matmuls, O(N W (R + 2r)).
  "blocked":   causal windows: query blocks against the key blocks that reach them, O(N (W + C)).
  "pallas":    grids and causal windows: fused block-sparse Pallas kernel (pallas.py); interpret
               mode on CPU.
  "auto":      the fastest correct one for the neighbourhood and length (see `resolve_impl`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from krause.attention import local, pallas
from krause.attention.common import (
    KrauseWeights,
    centred_heads_major,
    compute_dtype,
    matmul_scores,
    neg_sq_dist,
    select_and_normalize,
    slot_threshold_and_best,
)
from krause.attention.neighborhoods import (
    CausalWindow,
    Full,
    GridNeighborhood,
    Neighborhood,
    dense_mask,
    index_table,
    max_neighbors,
)
from krause.attention.selection import kth_largest

IMPLS = ("auto", "reference", "dense", "stencil", "banded", "blocked", "pallas")
# "auto" on a grid picks the cheapest of dense (N keys per query), banded (g + (R + 2r) W keys)
# and stencil (w slots), in units of one key of a dense matmul row. Measured forward + backward
# on 2 CPU cores: a band key costs ~1.5 dense keys (gathers, padding, smaller matmuls), a
# stencil slot ~9 (8x8 radius 1: stencil; 7x7 radius 2: dense; 14x14 radius 2: banded 1.2-1.6x
# faster than dense; 32x32: stencil).
BANDED_COST_FACTOR = 1.5
STENCIL_COST_FACTOR = 9


def densify_weights(weights: KrauseWeights) -> jax.Array:
    """Compact weights -> dense [batch, heads, length, length] (for plots; small N only)."""
    batch, n, heads, _ = weights.local_values.shape
    g = weights.global_values.shape[1]
    idx = jnp.asarray(weights.indices)
    safe = jnp.where(idx >= 0, idx, n)  # unused slots go to a dropped extra column
    dense = jnp.zeros((batch, heads, n, n + 1), weights.local_values.dtype)
    rows = jnp.arange(n)[:, None]
    values = jnp.where(idx[None, :, None, :] >= 0, weights.local_values, 0)
    dense = dense.at[:, :, rows, safe].add(jnp.moveaxis(values, 2, 1))[..., :n]
    return dense.at[:, :, :g, :].set(jnp.moveaxis(weights.global_values, 2, 1))


def _compact_from_dense(p: jax.Array, nb: Neighborhood) -> KrauseWeights:
    """Dense [B, H, N, N] -> KrauseWeights."""
    table = index_table(nb)
    g = nb.num_global_queries
    local_values = jnp.take_along_axis(p, jnp.asarray(np.maximum(table, 0))[None, None], axis=-1)
    local_values = jnp.where(jnp.asarray(table >= 0), local_values, 0)
    return KrauseWeights(
        jnp.moveaxis(local_values, 1, 2), jnp.asarray(table), jnp.moveaxis(p[:, :, :g], 1, 2)
    )


def rbf_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    sigma: jax.Array | float,
    mask: jax.Array | np.ndarray | None = None,
    bias: jax.Array | None = None,
    top_k: int | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Dense RBF (Krause) attention with an arbitrary mask and additive bias; O(Nq Nk d) memory.

    The building block for small windows (Swin windows, decoding caches) and the reference.

    Args:
      q: [B, Nq, H, D]; k: [B, Nk, H, D]; v: [B, Nk, H, Dv].
      sigma: positive scalar or [H].
      mask: bool broadcastable to [B, H, Nq, Nk]; every query needs >= 1 allowed key.
      bias: float broadcastable to [B, H, Nq, Nk], added to the scores (e.g. relative position).
      top_k: keep the top_k largest allowed scores per query (None: all).

    Returns:
      out [B, Nq, H, Dv] in q.dtype, and with return_weights the probabilities [B, H, Nq, Nk].
    """
    _check_qkv(q, k, v, same_length=False)
    _check_top_k(top_k)
    dtype = compute_dtype(q.dtype)
    inv = _inv_two_sigma_sq(sigma, q.shape[2], dtype)
    if bias is not None:
        bias = bias.astype(dtype)
    out, p = _rbf(*(x.astype(dtype) for x in (q, k, v)), inv, mask, bias, top_k)
    out = out.astype(q.dtype)
    return (out, p) if return_weights else out


def _rbf(q, k, v, inv, mask, bias, top_k):
    """Dense scores from explicit differences: [B, Nq, Nk, H, D] intermediates."""
    scores = neg_sq_dist(q[:, :, None], k[:, None])  # [B, Nq, Nk, H]
    scores = jnp.moveaxis(scores, -1, 1) * inv[:, None, None]
    if bias is not None:
        scores = scores + bias
    p = select_and_normalize(scores, None if mask is None else jnp.asarray(mask), top_k)
    return jnp.einsum("bhij,bjhd->bihd", p, v), p


def _reference(q, k, v, inv, nb, top_k, return_weights):
    """Dense scores from explicit differences over the neighbourhood mask: the oracle."""
    out, p = _rbf(q, k, v, inv, dense_mask(nb), None, top_k)
    return out, _compact_from_dense(p, nb) if return_weights else None


def _dense(q, k, v, inv, nb, top_k, return_weights):
    """Masked dense scores through one matmul, O(N^2) memory; the fastest path for short sequences.

    -||q - k||^2 / (2 sigma^2) = (2 q.k - ||k||^2 - ||q||^2) / (2 sigma^2) on q and k centred on the
    keys' mean (exact: distances are translation invariant; it keeps float32 accurate when q and
    k are large but close), with ||q||^2 dropped (a row constant). Keys outside the neighbourhood,
    and keys dropped by top-k, get an additive -inf. The top-k threshold is found on each query's
    neighbour slots (a gather of |N(i)| scores) rather than on its whole row.
    """
    q, k, v = centred_heads_major(q, k, v)
    scores = matmul_scores(q, k, inv)  # [B, H, N, N]
    mask = dense_mask(nb)
    if top_k is not None and top_k < max_neighbors(nb):
        keep = _dense_top_k(jax.lax.stop_gradient(scores), nb, top_k) & mask
        # Additive and outside the gradient: the softmax already gives dropped keys zero
        # gradient, and a select in the backward pass would cost a pass over [B, H, N, N].
        scores = scores + jax.lax.stop_gradient(jnp.where(keep, 0.0, -jnp.inf).astype(q.dtype))
    elif not mask.all():
        scores = scores + jnp.asarray(np.where(mask, 0.0, -np.inf), q.dtype)
    p = jax.nn.softmax(scores, axis=-1)
    out = jnp.swapaxes(jnp.einsum("bhij,bhjd->bhid", p, v), 1, 2)
    return out, _compact_from_dense(p, nb) if return_weights else None


def _dense_top_k(scores, nb, top_k):
    """bool [B, H, N, N]: scores >= the k-th largest of the query's neighbourhood, plus the best.

    Each query's neighbour slots are read with one static gather from the flattened [N * N]
    scores; global queries use their whole row. The best entry of each row is also kept by index
    (as in `keep_above`): a guard that a row can never end up empty. Not masked to the
    neighbourhood.
    """
    g, n = nb.num_global_queries, nb.length
    batch, heads = scores.shape[:2]
    thresholds, best = [], []
    if g:
        thresholds.append(kth_largest(scores[:, :, :g], top_k))
        best.append(jnp.argmax(scores[:, :, :g], axis=-1, keepdims=True))
    if g < n:
        table = index_table(nb)[g:]
        keys, slot_valid = np.maximum(table, 0), jnp.asarray(table >= 0)
        flat = (np.arange(g, n)[:, None] * n + keys).reshape(-1)
        slots = jnp.take(scores.reshape(batch, heads, n * n), jnp.asarray(flat), axis=-1)
        slots = slots.reshape(batch, heads, n - g, table.shape[1])  # [B, H, N - g, w]
        threshold, best_key = slot_threshold_and_best(slots, slot_valid, keys, top_k)
        thresholds.append(threshold)
        best.append(best_key)
    is_best = jnp.arange(n) == jnp.concatenate(best, axis=2)
    return (scores >= jnp.concatenate(thresholds, axis=2)) | is_best


# impl -> fn(q, k, v, inv_two_sigma_sq, nb, top_k, return_weights) -> (out, KrauseWeights | None),
# inputs in the compute dtype. Which is fastest where: docs/attention.md.
IMPLEMENTATIONS = {
    "reference": _reference,
    "dense": _dense,
    "stencil": local.grid_stencil,
    "banded": local.grid_banded,
    "blocked": local.causal_blocked,
}


def resolve_impl(impl: str, nb: Neighborhood, use_kernel: bool = True) -> str:
    """Map "auto" to a concrete implementation; check that the choice fits the neighbourhood.

    "auto" picks the Pallas kernel on GPU / TPU unless `use_kernel` is False (inputs or outputs
    it does not support: weights, float64).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}.")
    if impl == "auto":
        if isinstance(nb, Full):
            return "dense"
        if use_kernel and jax.default_backend() in ("gpu", "tpu"):  # else the CPU choice below
            return "pallas"
        if isinstance(nb, CausalWindow):  # blocked is matmul-based too: ~W + C keys per query
            return "dense" if nb.length <= 2 * nb.window else "blocked"
        band_keys = nb.num_global + (local.grid_band_rows(nb) + 2 * nb.radius) * nb.width
        costs = {
            "dense": nb.length,
            "banded": BANDED_COST_FACTOR * band_keys,
            "stencil": STENCIL_COST_FACTOR * index_table(nb).shape[1],
        }
        return min(costs, key=costs.get)
    if impl in ("stencil", "banded") and not isinstance(nb, GridNeighborhood):
        raise ValueError(f"impl={impl!r} needs a grid neighbourhood, got {nb.describe()}.")
    if impl == "blocked" and not isinstance(nb, CausalWindow):
        raise ValueError(f"impl='blocked' needs a causal window, got {nb.describe()}.")
    if impl == "pallas" and isinstance(nb, Full):
        raise ValueError(
            f"impl='pallas' needs a grid or a causal window, got {nb.describe()}; use impl='dense'."
        )
    return impl


def krause_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    sigma: jax.Array | float,
    neighborhood: Neighborhood,
    top_k: int | None = None,
    impl: str = "auto",
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, KrauseWeights]:
    """Krause attention over a neighbourhood (see module docstring for the definition).

    Args:
      q, k: [batch, length, heads, head_dim]; v: [batch, length, heads, value_dim].
      sigma: RBF width, positive; a scalar shared by heads or shape [heads].
      neighborhood: from `grid_neighborhood`, `causal_window`, `full` or `causal`; its length
        must equal the inputs' length.
      top_k: keep the top_k most affine keys of each neighbourhood; None keeps all.
      impl: one of IMPLS.
      return_weights: also return the probabilities as `KrauseWeights`.

    Returns:
      out [batch, length, heads, value_dim] in q.dtype (computed in float32, or float64 for
      float64 inputs), and with return_weights the `KrauseWeights`.
    """
    _check_qkv(q, k, v, same_length=True)
    _check_top_k(top_k)
    nb = neighborhood
    if q.shape[1] != nb.length:
        raise ValueError(
            f"neighborhood {nb.describe()} has {nb.length} tokens, but q, k, v have length "
            f"{q.shape[1]}; the length must equal the neighbourhood's"
            + (" (height * width + num_global)." if isinstance(nb, GridNeighborhood) else ".")
        )
    impl = resolve_impl(impl, nb, not return_weights and q.dtype in pallas.DTYPES)
    if impl == "pallas":
        if return_weights:
            raise ValueError(
                "impl='pallas' does not return weights; use impl='stencil', 'blocked' or 'dense'."
            )
        out = pallas.pallas_krause_attention(
            q, k, v, _inv_two_sigma_sq(sigma, q.shape[2], jnp.float32), nb, top_k
        )
        return out.astype(q.dtype)
    dtype = compute_dtype(q.dtype)
    inv = _inv_two_sigma_sq(sigma, q.shape[2], dtype)
    q32, k32, v32 = (x.astype(dtype) for x in (q, k, v))

    out, weights = IMPLEMENTATIONS[impl](q32, k32, v32, inv, nb, top_k, return_weights)
    out = out.astype(q.dtype)
    return (out, weights) if return_weights else out


def _inv_two_sigma_sq(sigma, heads: int, dtype) -> jax.Array:
    """1 / (2 sigma^2) as [heads]; validates shape and, when concrete, positivity."""
    sigma = jnp.asarray(sigma)
    if sigma.shape not in ((), (1,), (heads,)):
        raise ValueError(
            f"sigma must be a scalar or have shape [heads] = ({heads},), got shape {sigma.shape}."
        )
    if not isinstance(sigma, jax.core.Tracer) and not bool(np.all(np.asarray(sigma) > 0)):
        raise ValueError(f"sigma must be positive, got {np.asarray(sigma)}.")
    sigma = sigma.astype(dtype)
    return jnp.broadcast_to(0.5 / jnp.square(sigma), (heads,))


def _check_top_k(top_k) -> None:
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1
    ):
        raise ValueError(
            f"top_k must be None (keep the whole neighbourhood) or an int >= 1, got {top_k!r}."
        )


def _check_qkv(q, k, v, same_length: bool) -> None:
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if not (q.ndim == k.ndim == v.ndim == 4):
        raise ValueError(f"q, k, v must be [batch, length, heads, head_dim]; got {shapes}.")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            "q, k, v must agree in batch and heads, q and k in head_dim, k and v in length; "
            f"got {shapes}."
        )
    if same_length and q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same length; got {shapes}.")

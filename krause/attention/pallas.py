"""Fused, block-sparse Krause attention as a Pallas kernel (forward and backward).

Per head, local query i and key j in its neighbourhood (see `krause.py` for the definition):

    s_ij = (2 q_i.k_j - ||k_j||^2) / (2 sigma^2)     (q, k centred on the keys' mean; the row
                                                      constant -||q_i||^2 / (2 sigma^2) dropped)

Layout. Patch tokens (grids) or all tokens (causal windows) are the *local* tokens, cut into
query blocks of `block_q` and key blocks of `block_k`. Program (head, query block b) visits the
key blocks listed in row b of a static table (`pallas_tables.block_tables`) and, on grids, one
block holding the global keys. Inside a block the exact neighbourhood test is computed from
indices (Manhattan / Chebyshev radius with clipping, causal lag < W). No [N, N] array and no
[N, w, d] gather. Global queries (CLS rows, which see every key) are dense rows in XLA, O(N)
each.

Top-k. The scores of the visited blocks stay on chip; a radix select over the order-preserving
int32 keys of the float32 scores (32 counting passes) finds each query's exact k-th largest
score (ties counted with multiplicity), and every key with score >= it is kept, as in
`selection.kth_largest`. The online-softmax pass then runs over the same on-chip scores, so the
threshold is compared with bit-identical values. The backward pass recomputes the scores with
the same operations and reuses the saved threshold (no gradient flows through it).

Backward. Flash-style: a dq kernel over query blocks (it also returns each query block's
contributions to the global keys' dk, dv and the per-row terms of d sigma) and a dk, dv kernel
over key blocks that visits the query blocks of the transposed table.

Backends. GPU: the Triton lowering (`pallas.triton.CompilerParams`); TPU: Mosaic with the same
kernel body (unverified); CPU: `interpret=True` (tests). See docs/pallas.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from krause.attention.common import select_and_normalize
from krause.attention.neighborhoods import CausalWindow, GridNeighborhood, Neighborhood
from krause.attention.pallas_tables import (
    block_tables,
    local_neighbor_table,
    num_global_keys,
    num_local,
)

DTYPES = (jnp.float32, jnp.bfloat16)
MIN_BLOCK = 8  # interpret mode; compiled kernels need MIN_COMPILED_BLOCK (Triton dot tiles)
MIN_COMPILED_BLOCK = 16
MAX_BLOCK = 256
MAX_HEAD_DIM = 256  # padded head / value dim held on chip per block
MAX_TOP_K_KEYS = 2048  # keys per query block whose scores stay on chip for the top-k select
DEFAULT_BLOCK = 64
# "triton": GPU through Pallas' Triton lowering; "mosaic_tpu": TPU; "interpret": any backend,
# the kernels run as loops of XLA ops (CPU tests).
BACKENDS = ("triton", "mosaic_tpu", "interpret")
_F32 = jnp.float32
_I32 = jnp.int32
_INT_MIN = -(2**31)
_HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static description of one kernel instance (hashable: a nondiff argument)."""

    nb: Neighborhood
    top_k: int | None  # None: keep the whole neighbourhood
    block_q: int
    block_k: int
    backend: str  # one of BACKENDS

    @property
    def interpret(self) -> bool:
        return self.backend == "interpret"

    @property
    def num_local(self) -> int:
        return num_local(self.nb)

    @property
    def num_global(self) -> int:
        return num_global_keys(self.nb)

    @property
    def padded_length(self) -> int:
        step = max(self.block_q, self.block_k)
        return -(-self.num_local // step) * step

    def tables(self):
        return block_tables(self.nb, self.block_q, self.block_k)


def default_backend() -> str:
    """The kernel backend for `jax.default_backend()`."""
    return {"gpu": "triton", "tpu": "mosaic_tpu"}.get(jax.default_backend(), "interpret")


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def padded_dim(dim: int) -> int:
    """Head / value dim as the kernel holds it: a power of two >= 16 (zero padding is exact)."""
    return max(16, _next_pow2(dim))


def local_max_neighbors(nb: Neighborhood) -> int:
    """Largest neighbourhood of a local query (global keys included)."""
    counts = np.sum(local_neighbor_table(nb) >= 0, axis=1)
    return int(counts.max(initial=0)) + num_global_keys(nb)


def default_block_size(nb: Neighborhood) -> int:
    """DEFAULT_BLOCK, smaller for short sequences (never below MIN_COMPILED_BLOCK)."""
    return int(np.clip(_next_pow2(num_local(nb)), MIN_COMPILED_BLOCK, DEFAULT_BLOCK))


def check_supported(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    nb: Neighborhood,
    top_k: int | None,
    block_q: int,
    block_k: int,
    interpret: bool,
) -> None:
    """ValueError naming the limit and the implementation to use instead, before any work."""
    if not isinstance(nb, GridNeighborhood | CausalWindow):
        raise ValueError(
            f"impl='pallas' supports grid neighbourhoods and causal windows, got {nb.describe()}; "
            "use impl='dense' (or 'reference') for full attention."
        )
    for name, x in zip("qkv", (q, k, v), strict=True):
        if x.dtype not in DTYPES:
            raise ValueError(
                f"impl='pallas' takes float32 or bfloat16 inputs, got {name}.dtype={x.dtype}; "
                "use impl='dense' or 'reference' for other dtypes (e.g. float64)."
            )
    minimum = MIN_BLOCK if interpret else MIN_COMPILED_BLOCK
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if not (isinstance(size, int) and minimum <= size <= MAX_BLOCK and size & (size - 1) == 0):
            raise ValueError(
                f"impl='pallas' needs {name} to be a power of two in [{minimum}, {MAX_BLOCK}], "
                f"got {size!r}."
            )
    for name, dim in (("head_dim", q.shape[-1]), ("value_dim", v.shape[-1])):
        if padded_dim(dim) > MAX_HEAD_DIM:
            raise ValueError(
                f"impl='pallas' tiles {name} up to {MAX_HEAD_DIM}, got {dim}; use impl='banded' "
                "(grids) or 'blocked' (causal windows)."
            )
    g = num_global_keys(nb)
    if g > block_k:
        raise ValueError(
            f"impl='pallas' holds the global keys in one key block: num_global={g} must be <= "
            f"block_k={block_k}; raise block_k or use impl='banded'."
        )
    if top_k is not None and top_k < local_max_neighbors(nb):
        table = block_tables(nb, block_q, block_k)[0]
        keys = (table.shape[1] + (g > 0)) * block_k
        if keys > MAX_TOP_K_KEYS:
            raise ValueError(
                f"impl='pallas' keeps the scores of a query block's {keys} candidate keys on chip "
                f"for top-k, more than its limit {MAX_TOP_K_KEYS}; use smaller blocks, or "
                "impl='banded' (grids) / 'blocked' (causal windows)."
            )


# ----------------------------------------------------------------------------------------------
# Kernel pieces (traced inside the kernels; written with Triton's primitive set).
# ----------------------------------------------------------------------------------------------


def _arange(n: int) -> jax.Array:
    return jnp.arange(n, dtype=_I32)


def _neighbor_mask(nb: Neighborhood, q_idx: jax.Array, k_idx: jax.Array) -> jax.Array:
    """bool [bq, bk]: local key k_idx [1, bk] is a neighbour of local query q_idx [bq, 1]."""
    n = num_local(nb)
    inside = (q_idx < n) & (k_idx < n)
    if isinstance(nb, GridNeighborhood):
        width = jnp.int32(nb.width)  # indices are >= 0: truncating division is floor division
        dr = jnp.abs(lax.div(q_idx, width) - lax.div(k_idx, width))
        dc = jnp.abs(lax.rem(q_idx, width) - lax.rem(k_idx, width))
        dist = dr + dc if nb.metric == "manhattan" else jnp.maximum(dr, dc)
        return inside & (dist <= nb.radius)
    lag = q_idx - k_idx
    return inside & (lag >= 0) & (lag < nb.window)


def _dot(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
    """float32 2-D matmul at full float32 precision (no TF32 on GPUs), optionally transposed."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=_HIGHEST, preferred_element_type=_F32)


def _scores(q2: jax.Array, kc: jax.Array, sqk: jax.Array, inv: jax.Array):
    """(s, base): base = 2 q.k - ||k||^2 [bq, bk] and s = base * inv; q2 = 2 q (centred).

    The same three IEEE operations everywhere (a materialised dot, a subtraction, a product), so
    the forward and backward kernels see bit-identical scores.
    """
    base = _dot(q2, kc, trans_b=True) - sqk
    return base * inv, base


def _order_key(s: jax.Array) -> jax.Array:
    """float32 -> int32 with the same order."""
    i = lax.bitcast_convert_type(s, _I32)
    return jnp.where(i >= 0, i, i ^ jnp.int32(0x7FFFFFFF))


def _key_to_float(key: jax.Array) -> jax.Array:
    i = jnp.where(key >= 0, key, key ^ jnp.int32(0x7FFFFFFF))
    return lax.bitcast_convert_type(i, _F32)


def _kth_largest(scores: list[jax.Array], valid: list[jax.Array], k: int) -> jax.Array:
    """[bq, 1]: the k-th largest valid score of each row over all blocks; -inf if < k valid.

    Radix select on the order-preserving keys, most significant bit first, in the sign-flipped
    (unsigned) order: the result is the largest t with #{key >= t} >= k.
    """
    pairs = zip(scores, valid, strict=True)
    keys = [jnp.where(m, _order_key(s), jnp.int32(_INT_MIN)) for s, m in pairs]
    num_valid = sum(jnp.sum(m, axis=1, keepdims=True, dtype=_I32) for m in valid)

    def step(i, prefix):
        candidate = prefix | jnp.left_shift(jnp.int32(1), (31 - i).astype(_I32))
        signed = candidate ^ jnp.int32(_INT_MIN)
        count = sum(jnp.sum(key >= signed, axis=1, keepdims=True, dtype=_I32) for key in keys)
        return jnp.where(count >= k, candidate, prefix)

    prefix = lax.fori_loop(jnp.int32(0), jnp.int32(32), step, jnp.zeros(num_valid.shape, _I32))
    threshold = _key_to_float(prefix ^ jnp.int32(_INT_MIN))
    return jnp.where(num_valid >= k, threshold, -jnp.inf)


@dataclasses.dataclass
class _KeyBlock:
    """A key block as seen from one query block: lazily computed scores."""

    scores: Callable[[], tuple[jax.Array, jax.Array]]  # -> (s, base) [bq, bk]
    valid: Callable[[], jax.Array]  # -> bool [bq, bk]
    keys: Callable[[], jax.Array]  # -> centred keys [bk, Dp] float32
    values: Callable[[], jax.Array]  # -> values [bk, Dvp] float32


@dataclasses.dataclass
class _QueryBlock:
    """What every kernel over query blocks needs to visit key blocks."""

    cfg: _Config
    b: jax.Array  # query block index
    q2: jax.Array  # 2 (q - centre) [bq, Dp] float32
    q_idx: jax.Array  # local query indices [bq, 1]
    inv: jax.Array  # 1 / (2 sigma^2) [1, 1]
    centre: jax.Array  # [1, Dp]
    table_ref: object
    counts_ref: object
    k_ref: object
    v_ref: object
    sqk_ref: object

    def global_block(self, kg_ref, vg_ref, sqkg_ref) -> _KeyBlock:
        """The global keys, which every local query sees."""
        cfg = self.cfg
        keys = lambda: kg_ref[...].astype(_F32) - self.centre
        return _KeyBlock(
            scores=lambda: _scores(self.q2, keys(), sqkg_ref[...], self.inv),
            valid=lambda: (
                (self.q_idx < cfg.num_local) & (_arange(cfg.block_k)[None, :] < cfg.num_global)
            ),
            keys=keys,
            values=lambda: vg_ref[...].astype(_F32),
        )

    def local_block(self, t) -> _KeyBlock:
        """Slot t (static or traced) of the query block's table row."""
        bk = self.cfg.block_k
        start = pl.multiple_of(self.table_ref[self.b, t] * bk, bk)
        keys = lambda: self.k_ref[pl.ds(start, bk), :].astype(_F32) - self.centre
        return _KeyBlock(
            scores=lambda: _scores(self.q2, keys(), self.sqk_ref[:, pl.ds(start, bk)], self.inv),
            valid=lambda: (
                _neighbor_mask(self.cfg.nb, self.q_idx, start + _arange(bk)[None, :])
                & (t < self.counts_ref[self.b])
            ),
            keys=keys,
            values=lambda: self.v_ref[pl.ds(start, bk), :].astype(_F32),
        )

    def count(self) -> jax.Array:
        """Number of real slots in the table row (the bound of the loops over slots)."""
        return self.counts_ref[self.b]


def _split_refs(cfg, refs, n_in):
    """(inputs without the global refs, global refs or None, outputs)."""
    ins, outs = list(refs[:n_in]), list(refs[n_in:])
    glob = tuple(ins[8:11]) if cfg.num_global else None
    return ins[:8] + ins[8 + 3 * bool(cfg.num_global) :], glob, outs


def _query_block(cfg, refs8) -> tuple[_QueryBlock, jax.Array]:
    table_ref, counts_ref, inv_ref, centre_ref, q_ref, k_ref, v_ref, sqk_ref = refs8
    b = pl.program_id(1)
    centre = centre_ref[...]
    qc = q_ref[...].astype(_F32) - centre
    q_idx = b * cfg.block_q + _arange(cfg.block_q)[:, None]
    qb = _QueryBlock(
        cfg, b, 2.0 * qc, q_idx, inv_ref[...], centre, table_ref, counts_ref, k_ref, v_ref, sqk_ref
    )
    return qb, qc


def _online_softmax_step(state, s, keep, values):
    """One block of the flash-style running (max, sum, accumulator)."""
    m, total, acc = state
    s = jnp.where(keep, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.where(keep, jnp.exp(s - m_safe), 0.0)
    total = alpha * total + jnp.sum(p, axis=1, keepdims=True)
    return m_new, total, alpha * acc + _dot(p, values)


def _forward_kernel(*refs, cfg: _Config):
    n_in = 8 + 3 * bool(cfg.num_global)
    ins, glob, (o_ref, lse_ref, thr_ref) = _split_refs(cfg, refs, n_in)
    qb, _ = _query_block(cfg, ins)
    bq = cfg.block_q
    state = (
        jnp.full((bq, 1), -jnp.inf, _F32),
        jnp.zeros((bq, 1), _F32),
        jnp.zeros((bq, o_ref.shape[-1]), _F32),
    )
    blocks = [qb.global_block(*glob)] if glob is not None else []
    if cfg.top_k is not None:
        # Pass 1: the scores of every visited block on chip (the table row unrolled), then the
        # exact k-th largest per query. Pass 2 reuses the same values: the key that defines the
        # threshold always meets it.
        blocks += [qb.local_block(t) for t in range(qb.table_ref.shape[1])]
        scores = [blk.scores()[0] for blk in blocks]
        valid = [blk.valid() for blk in blocks]
        threshold = _kth_largest(scores, valid, cfg.top_k)
        for blk, s, m in zip(blocks, scores, valid, strict=True):
            state = _online_softmax_step(state, s, m & (s >= threshold), blk.values())
    else:
        threshold = jnp.full((bq, 1), -jnp.inf, _F32)
        for blk in blocks:
            state = _online_softmax_step(state, blk.scores()[0], blk.valid(), blk.values())

        def body(t, state):
            blk = qb.local_block(t)
            return _online_softmax_step(state, blk.scores()[0], blk.valid(), blk.values())

        state = lax.fori_loop(jnp.int32(0), qb.count(), body, state)
    m, total, acc = state
    empty = total == 0.0  # padding rows only: every real query sees itself
    o_ref[...] = (acc / jnp.where(empty, 1.0, total)).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, total)))
    thr_ref[...] = threshold


def _probabilities(s, keep, lse, threshold, top_k):
    if top_k is not None:
        keep = keep & (s >= threshold)
    return jnp.where(keep, jnp.exp(s - lse), 0.0)


def _dq_kernel(*refs, cfg: _Config):
    n_in = 8 + 3 * bool(cfg.num_global) + 4
    ins, glob, outs = _split_refs(cfg, refs, n_in)
    qb, qc = _query_block(cfg, ins[:8])
    do_ref, lse_ref, thr_ref, delta_ref = ins[8:]
    dq_ref, dinv_ref = outs[:2]
    do = do_ref[...].astype(_F32)
    lse, thr, delta = (r[...] for r in (lse_ref, thr_ref, delta_ref))  # [bq, 1] each

    def visit(blk, dq, dinv):
        """Gradients through one key block: (dq, d inv rows, ds, p)."""
        s, base = blk.scores()
        p = _probabilities(s, blk.valid(), lse, thr, cfg.top_k)
        ds = p * (_dot(do, blk.values(), trans_b=True) - delta)
        dq = dq + _dot(ds, blk.keys())
        return dq, dinv + jnp.sum(ds * base, axis=1, keepdims=True), ds, p

    dq = jnp.zeros(qc.shape, _F32)
    dinv = jnp.zeros((cfg.block_q, 1), _F32)
    if glob is not None:
        blk = qb.global_block(*glob)
        dq, dinv, ds, p = visit(blk, dq, dinv)
        dkg_ref, dvg_ref = outs[2:]
        dk = _dot(ds, qc, trans_a=True) - jnp.sum(ds, axis=0)[:, None] * blk.keys()
        dkg_ref[...] = (2.0 * qb.inv * dk).astype(dkg_ref.dtype)
        dvg_ref[...] = _dot(p, do, trans_a=True).astype(dvg_ref.dtype)
    dq, dinv = lax.fori_loop(
        jnp.int32(0), qb.count(), lambda t, c: visit(qb.local_block(t), *c)[:2], (dq, dinv)
    )
    dq_ref[...] = (2.0 * qb.inv * dq).astype(dq_ref.dtype)
    dinv_ref[...] = dinv


def _dkv_kernel(*refs, cfg: _Config):
    (table_ref, counts_ref, inv_ref, centre_ref, q_ref, k_ref, v_ref, sqk_ref) = refs[:8]
    do_ref, lse_ref, thr_ref, delta_ref, dk_ref, dv_ref = refs[8:]
    bq, bk = cfg.block_q, cfg.block_k
    c = pl.program_id(1)
    inv, centre = inv_ref[...], centre_ref[...]
    kc = k_ref[...].astype(_F32) - centre
    values = v_ref[...].astype(_F32)
    sqk = sqk_ref[:, pl.ds(pl.multiple_of(c * bk, bk), bk)]
    k_idx = c * bk + _arange(bk)[None, :]

    def body(t, carry):  # query block table_t[c, t]
        dk, dv = carry
        start = pl.multiple_of(table_ref[c, t] * bq, bq)
        rows = pl.ds(start, bq)
        qc = q_ref[rows, :].astype(_F32) - centre
        s, _ = _scores(2.0 * qc, kc, sqk, inv)
        valid = _neighbor_mask(cfg.nb, start + _arange(bq)[:, None], k_idx)
        lse, thr, delta = (r[rows, :] for r in (lse_ref, thr_ref, delta_ref))
        p = _probabilities(s, valid, lse, thr, cfg.top_k)
        do = do_ref[rows, :].astype(_F32)
        ds = p * (_dot(do, values, trans_b=True) - delta)
        dk = dk + _dot(ds, qc, trans_a=True) - jnp.sum(ds, axis=0)[:, None] * kc
        return dk, dv + _dot(p, do, trans_a=True)

    zeros = (jnp.zeros(kc.shape, _F32), jnp.zeros(values.shape, _F32))
    dk, dv = lax.fori_loop(jnp.int32(0), counts_ref[c], body, zeros)
    dk_ref[...] = (2.0 * inv * dk).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ----------------------------------------------------------------------------------------------
# pallas_call wrappers on heads-major, padded arrays: q, k [BH, L, Dp], v [BH, L, Dvp],
# global keys kg [BH, block_k, Dp], vg [BH, block_k, Dvp], inv [BH, 1, 1], centre [BH, 1, Dp].
# ----------------------------------------------------------------------------------------------


def _compiler_params(cfg: _Config):
    if cfg.backend != "triton":
        return None  # interpret mode; Mosaic TPU with its defaults
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=4, num_stages=2)


def _call(kernel, cfg, grid, in_specs, out_specs, out_shape, name):
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name=name,
    )


def _full(shape):
    """BlockSpec of a whole array, the same block for every program."""
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _table_spec(cfg: _Config, shape):
    """A block table: read with scalar loads, so in SMEM on TPU (Mosaic), a plain ref elsewhere."""
    if cfg.backend == "mosaic_tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pl.BlockSpec(memory_space=pltpu.SMEM)
    return _full(shape)


def _per_head(*block):
    """BlockSpec of a whole per-head slice [BH, *block]."""
    return pl.BlockSpec((None, *block), lambda bh, _: (bh,) + (0,) * len(block))


def _shared_specs(cfg, table, counts, bh_shape):
    """In-specs of table, counts, inv, centre, and k, v, sqk over the whole padded length."""
    _, length, dp, dvp = bh_shape
    return [
        _table_spec(cfg, table.shape),
        _table_spec(cfg, counts.shape),
        _per_head(1, 1),
        _per_head(1, dp),
    ], [_per_head(length, dp), _per_head(length, dvp), _per_head(1, length)]


def _global_specs(cfg, dp, dvp):
    if not cfg.num_global:
        return []
    return [_per_head(cfg.block_k, dp), _per_head(cfg.block_k, dvp), _per_head(1, cfg.block_k)]


def _q_block(*dims, cfg):
    """BlockSpec of query block b: [BH, L, *dims] -> (bq, *dims)."""
    return pl.BlockSpec((None, cfg.block_q, *dims), lambda bh, b: (bh, b, 0))


def _forward(cfg, q, k, v, kg, vg, inv, centre, sqk, sqkg):
    bh, length, dp = q.shape
    dvp = v.shape[-1]
    table, counts, _, _ = cfg.tables()
    head, kv = _shared_specs(cfg, table, counts, (bh, length, dp, dvp))
    in_specs = head + [_q_block(dp, cfg=cfg)] + kv + _global_specs(cfg, dp, dvp)
    row = jax.ShapeDtypeStruct((bh, length, 1), _F32)  # per-query statistics
    out_shape = [jax.ShapeDtypeStruct((bh, length, dvp), q.dtype), row, row]
    out_specs = [_q_block(dvp, cfg=cfg), _q_block(1, cfg=cfg), _q_block(1, cfg=cfg)]
    args = [jnp.asarray(table), jnp.asarray(counts), inv, centre, q, k, v, sqk]
    args += [kg, vg, sqkg] if cfg.num_global else []
    grid = (bh, length // cfg.block_q)
    return _call(_forward_kernel, cfg, grid, in_specs, out_specs, out_shape, "krause_fwd")(*args)


def _backward(cfg, res, do):
    q, k, v, kg, vg, inv, centre, sqk, sqkg, o, lse, thr = res
    bh, length, dp = q.shape
    dvp = v.shape[-1]
    table, counts, table_t, counts_t = cfg.tables()
    delta = jnp.sum(o.astype(_F32) * do.astype(_F32), axis=-1, keepdims=True)  # [BH, L, 1]
    q_blocks = length // cfg.block_q

    head, kv = _shared_specs(cfg, table, counts, (bh, length, dp, dvp))
    row = _q_block(1, cfg=cfg)
    in_specs = head + [_q_block(dp, cfg=cfg)] + kv + _global_specs(cfg, dp, dvp)
    in_specs += [_q_block(dvp, cfg=cfg), row, row, row]
    out_shape = [
        jax.ShapeDtypeStruct((bh, length, dp), _F32),
        jax.ShapeDtypeStruct((bh, length, 1), _F32),
    ]
    out_specs = [_q_block(dp, cfg=cfg), row]
    if cfg.num_global:
        out_shape += [
            jax.ShapeDtypeStruct((bh, q_blocks, cfg.block_k, dp), _F32),
            jax.ShapeDtypeStruct((bh, q_blocks, cfg.block_k, dvp), _F32),
        ]
        out_specs += [
            pl.BlockSpec((None, None, cfg.block_k, d), lambda i, b: (i, b, 0, 0)) for d in (dp, dvp)
        ]
    args = [jnp.asarray(table), jnp.asarray(counts), inv, centre, q, k, v, sqk]
    args += [kg, vg, sqkg] if cfg.num_global else []
    args += [do, lse, thr, delta]
    grid = (bh, q_blocks)
    outs = _call(_dq_kernel, cfg, grid, in_specs, out_specs, out_shape, "krause_dq")(*args)
    dq, dinv_rows = outs[:2]
    if cfg.num_global:
        dkg, dvg = (jnp.sum(x, axis=1) for x in outs[2:])
    else:
        dkg, dvg = jnp.zeros(kg.shape, _F32), jnp.zeros(vg.shape, _F32)

    key_block = lambda d: pl.BlockSpec((None, cfg.block_k, d), lambda i, c: (i, c, 0))
    in_specs = [
        _table_spec(cfg, table_t.shape),
        _table_spec(cfg, counts_t.shape),
        _per_head(1, 1),
        _per_head(1, dp),
        _per_head(length, dp),
        key_block(dp),
        key_block(dvp),
        _per_head(1, length),
        _per_head(length, dvp),
        _per_head(length, 1),
        _per_head(length, 1),
        _per_head(length, 1),
    ]
    out_shape = [
        jax.ShapeDtypeStruct((bh, length, dp), _F32),
        jax.ShapeDtypeStruct((bh, length, dvp), _F32),
    ]
    args = [jnp.asarray(table_t), jnp.asarray(counts_t), inv, centre, q, k, v, sqk]
    args += [do, lse, thr, delta]
    grid = (bh, length // cfg.block_k)
    out_specs = [key_block(dp), key_block(dvp)]
    dk, dv = _call(_dkv_kernel, cfg, grid, in_specs, out_specs, out_shape, "krause_dkv")(*args)
    dinv = jnp.sum(dinv_rows, axis=1, keepdims=True)  # [BH, 1, 1]
    cast = lambda x, like: x.astype(like.dtype)
    return (
        cast(dq, q),
        cast(dk, k),
        cast(dv, v),
        cast(dkg, kg),
        cast(dvg, vg),
        dinv,
        jnp.zeros_like(centre),
    )


def _sq_norms(keys: jax.Array, centre: jax.Array) -> jax.Array:
    """||k - centre||^2 of [BH, L, Dp] keys -> [BH, 1, L] float32."""
    return jnp.sum(jnp.square(keys.astype(_F32) - centre), axis=-1)[:, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _local_attention(cfg, q, k, v, kg, vg, inv, centre):
    return _local_attention_fwd(cfg, q, k, v, kg, vg, inv, centre)[0]


def _local_attention_fwd(cfg, q, k, v, kg, vg, inv, centre):
    sqk, sqkg = _sq_norms(k, centre), _sq_norms(kg, centre)
    o, lse, thr = _forward(cfg, q, k, v, kg, vg, inv, centre, sqk, sqkg)
    return o, (q, k, v, kg, vg, inv, centre, sqk, sqkg, o, lse, thr)


_local_attention.defvjp(_local_attention_fwd, _backward)


# ----------------------------------------------------------------------------------------------
# Public entry point on [B, N, H, D] arrays.
# ----------------------------------------------------------------------------------------------


def _global_rows(q_global, k, v, inv, centre, top_k):
    """Dense rows of the global queries [B, G, H, D] over every key -> [B, G, H, Dv] float32."""
    qh = jnp.swapaxes(q_global.astype(_F32) - centre, 1, 2)  # [B, H, G, D]
    kh = jnp.swapaxes(k.astype(_F32) - centre, 1, 2)
    vh = jnp.swapaxes(v.astype(_F32), 1, 2)
    dots = jnp.einsum("bhgd,bhnd->bhgn", 2.0 * qh, kh, precision=_HIGHEST)
    scores = (dots - jnp.sum(jnp.square(kh), axis=-1)[:, :, None, :]) * inv[:, None, None]
    p = select_and_normalize(scores, None, top_k)
    return jnp.swapaxes(jnp.einsum("bhgn,bhnd->bhgd", p, vh, precision=_HIGHEST), 1, 2)


def pallas_krause_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    inv_two_sigma_sq: jax.Array,
    nb: Neighborhood,
    top_k: int | None,
    *,
    block_q: int | None = None,
    block_k: int | None = None,
    backend: str | None = None,
) -> jax.Array:
    """Krause attention through the Pallas kernel.

    Args:
      q, k: [B, N, H, D]; v: [B, N, H, Dv]; float32 or bfloat16 (computed in float32).
      inv_two_sigma_sq: [H] float32, 1 / (2 sigma_h^2).
      nb: a grid neighbourhood or a causal window of length N.
      top_k: keep the top_k most affine keys of each neighbourhood (ties kept); None keeps all.
      block_q, block_k: query / key block sizes (powers of two); default `default_block_size`.
      backend: one of BACKENDS; default from `jax.default_backend()`: "triton" on GPUs,
        "mosaic_tpu" on TPUs, "interpret" otherwise.

    Returns:
      out [B, N, H, Dv] float32.
    """
    block_q = block_q or default_block_size(nb)
    block_k = block_k or default_block_size(nb)
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    check_supported(q, k, v, nb, top_k, block_q, block_k, backend == "interpret")
    keeps_all = top_k is not None and top_k >= local_max_neighbors(nb)
    local_top_k = None if keeps_all else top_k
    cfg = _Config(nb, local_top_k, block_q, block_k, backend)
    batch, n, heads, dim = q.shape
    dv = v.shape[-1]
    g, n_loc, length = cfg.num_global, cfg.num_local, cfg.padded_length
    dp, dvp = padded_dim(dim), padded_dim(dv)

    centre = lax.stop_gradient(jnp.round(jnp.mean(k.astype(_F32), axis=1, keepdims=True)))

    def heads_major(x, start, stop, rows, cols):  # [B, N, H, d] -> [B H, rows, cols] zero-padded
        x = jnp.swapaxes(x[:, start:stop], 1, 2).reshape(batch * heads, stop - start, x.shape[-1])
        return jnp.pad(x, ((0, 0), (0, rows - (stop - start)), (0, cols - x.shape[-1])))

    ql, kl = (heads_major(x, g, n, length, dp) for x in (q, k))
    vl = heads_major(v, g, n, length, dvp)
    kg = heads_major(k, 0, g, block_k, dp)
    vg = heads_major(v, 0, g, block_k, dvp)
    centre_bh = heads_major(centre, 0, 1, 1, dp).astype(_F32)
    inv_bh = jnp.broadcast_to(inv_two_sigma_sq.astype(_F32), (batch, heads)).reshape(-1, 1, 1)
    out = _local_attention(cfg, ql, kl, vl, kg, vg, inv_bh, centre_bh)
    out = jnp.swapaxes(out[:, :n_loc, :dv].reshape(batch, heads, n_loc, dv), 1, 2).astype(_F32)
    if g:
        out_global = _global_rows(q[:, :g], k, v, inv_two_sigma_sq.astype(_F32), centre, top_k)
        out = jnp.concatenate([out_global, out], axis=1)
    return out

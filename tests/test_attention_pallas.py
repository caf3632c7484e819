"""The Pallas Krause kernel (interpret mode on the CPU) against the float64 reference.

Every check compares the kernel's float32 forward pass and gradients w.r.t. q, k, v and sigma
with `krause_attention(..., impl="reference")` in float64 (dense scores from explicit
differences), or with a NumPy loop. Interpret mode compiles slowly (~4 s per program), so the
default tests use a few small cases whose compiled programs are shared (`_kernel_step`); the
wider matrix is marked slow.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from krause.attention import (
    causal,
    causal_window,
    dense_mask,
    full,
    grid_neighborhood,
    krause_attention,
    resolve_impl,
)
from krause.attention import pallas as kernel
from krause.attention.pallas_tables import block_tables, num_global_keys, num_local

pytestmark = pytest.mark.usefixtures("x64")

HEADS, DIM, VALUE_DIM = 2, 3, 4

# (neighbourhood, top_k, block_q, block_k): local lengths 15, 20 and 21 are not multiples of the
# blocks; B has two global tokens, block_q != block_k and a 5x5 window; C a causal window.
CASE_A = (grid_neighborhood(3, 5, 1, "manhattan", 1), None, 8, 8)
CASE_B = (grid_neighborhood(4, 5, 2, "chebyshev", 2), 4, 8, 16)
CASE_C = (causal_window(21, 6), 3, 8, 8)
DEFAULT_CASES = [
    pytest.param(*CASE_A, id="grid-manhattan-r1-g1-all"),
    pytest.param(*CASE_B, id="grid-chebyshev-r2-g2-top4"),
    pytest.param(*CASE_C, id="causal-w6-top3"),
]


@functools.cache
def _kernel_step(jit, nb, top_k, block_q, block_k):
    """jit(q, k, v, sigma, cot) -> (out, grads of <out, cot> w.r.t. q, k, v, sigma)."""

    def loss(q, k, v, sigma, cot):
        inv = 0.5 / jnp.square(jnp.broadcast_to(sigma, (HEADS,)))
        out = kernel.pallas_krause_attention(
            q, k, v, inv, nb, top_k, block_q=block_q, block_k=block_k, backend="interpret"
        )
        return jnp.sum(out * cot), out

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    return jit(lambda *args: (lambda r: (r[0][1], r[1]))(grad(*args)))


@functools.cache
def _reference_step(jit, nb, top_k):
    def loss(q, k, v, sigma, cot):
        out = krause_attention(q, k, v, sigma=sigma, neighborhood=nb, top_k=top_k, impl="reference")
        return jnp.sum(out * cot), out

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    return jit(lambda *args: (lambda r: (r[0][1], r[1]))(grad(*args)))


def _per_head_sigma(nb) -> bool:
    """Case B uses a scalar sigma (shared by heads), the others one per head."""
    return nb is not CASE_B[0]


def _inputs(rng, n, per_head_sigma=True, batch=2, scale=1.0, offset=0.0):
    qk = lambda: (offset + scale * rng.normal(size=(batch, n, HEADS, DIM))).astype(np.float32)
    v = rng.normal(size=(batch, n, HEADS, VALUE_DIM)).astype(np.float32)
    shape = (HEADS,) if per_head_sigma else ()
    sigma = rng.uniform(0.8, 1.5, size=shape).astype(np.float32)
    cot = rng.normal(size=(batch, n, HEADS, VALUE_DIM)).astype(np.float32)
    return qk(), qk(), v, sigma, cot


def _assert_matches_reference(fast_jit, nb, top_k, block_q, block_k, args, rtol=2e-5):
    out, grads = _kernel_step(fast_jit, nb, top_k, block_q, block_k)(*args)
    args64 = [np.asarray(x, np.float64) for x in args]
    out64, grads64 = _reference_step(fast_jit, nb, top_k)(*args64)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, out64, rtol=rtol, atol=rtol)
    for name, g, g64 in zip(("q", "k", "v", "sigma"), grads, grads64, strict=True):
        scale = max(1.0, float(np.abs(g64).max()))
        np.testing.assert_allclose(g, g64, rtol=rtol, atol=rtol * scale, err_msg=name)


# --------------------------------------------------------------------------------------------
# Block tables, against a brute force from the definition of the neighbourhoods.
# --------------------------------------------------------------------------------------------


def _brute_force_local_mask(nb) -> np.ndarray:
    """mask[i, j] iff local key j is a neighbour of local query i, from explicit loops."""
    n = num_local(nb)
    mask = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(n):
            if hasattr(nb, "width"):
                dr, dc = abs(i // nb.width - j // nb.width), abs(i % nb.width - j % nb.width)
                dist = dr + dc if nb.metric == "manhattan" else max(dr, dc)
                mask[i, j] = dist <= nb.radius
            else:
                mask[i, j] = 0 <= i - j < nb.window
    return mask


TABLE_CASES = [
    (grid_neighborhood(7, 9, 1, "manhattan", 1), 8, 8),
    (grid_neighborhood(7, 9, 2, "manhattan", 0), 16, 8),
    (grid_neighborhood(6, 11, 2, "chebyshev", 3), 8, 32),
    (grid_neighborhood(5, 3, 0, "chebyshev", 1), 8, 8),
    (grid_neighborhood(1, 20, 3, "manhattan", 1), 8, 16),
    (causal_window(50, 7), 8, 8),
    (causal_window(50, 17), 16, 8),
    (causal_window(30, 100), 8, 16),
    (causal(33), 16, 16),
]


@pytest.mark.parametrize(("nb", "block_q", "block_k"), TABLE_CASES)
def test_block_tables_cover_every_neighbour_and_nothing_else(nb, block_q, block_k):
    mask = _brute_force_local_mask(nb)
    n = mask.shape[0]
    table, counts, table_t, counts_t = block_tables(nb, block_q, block_k)
    q_blocks, k_blocks = -(-n // block_q), -(-n // block_k)
    assert table.shape[0] == q_blocks and table_t.shape[0] == k_blocks
    needed = np.zeros((q_blocks, k_blocks), bool)  # block pair holds >= 1 neighbour pair
    for i, j in zip(*np.nonzero(mask), strict=True):
        needed[i // block_q, j // block_k] = True
    visited = np.zeros_like(needed)
    for b in range(q_blocks):
        row = table[b, : counts[b]]
        assert np.all(np.diff(row) > 0)  # ascending, no block twice
        visited[b, row] = True
        assert np.all(table[b, counts[b] :] == row[-1])  # padding repeats the last entry
    np.testing.assert_array_equal(visited, needed)
    visited_t = np.zeros_like(needed)
    for c in range(k_blocks):
        visited_t[table_t[c, : counts_t[c]], c] = True
    np.testing.assert_array_equal(visited_t, needed)
    if hasattr(nb, "width"):  # raster order: the visited key blocks of a query block are contiguous
        for b in range(q_blocks):
            row = table[b, : counts[b]]
            assert row[-1] - row[0] + 1 == len(row)


@pytest.mark.parametrize("nb", [TABLE_CASES[i][0] for i in (0, 2, 5)])
def test_in_kernel_neighbour_test_equals_brute_force(nb):
    """The index arithmetic the kernels use for the exact mask, on all pairs (plus padding)."""
    mask = _brute_force_local_mask(nb)
    n = mask.shape[0]
    idx = np.arange(n + 5, dtype=np.int32)
    neighbor_mask = jax.jit(kernel._neighbor_mask, static_argnums=0)
    got = np.asarray(neighbor_mask(nb, idx[:, None], idx[None, :]))
    np.testing.assert_array_equal(got[:n, :n], mask)
    assert not got[n:].any() and not got[:, n:].any()


# --------------------------------------------------------------------------------------------
# Forward and gradients against the float64 reference.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("nb", "top_k", "block_q", "block_k"), DEFAULT_CASES)
def test_forward_and_gradients_equal_the_reference(nb, top_k, block_q, block_k, rng, fast_jit):
    args = _inputs(rng, nb.length, per_head_sigma=_per_head_sigma(nb))
    _assert_matches_reference(fast_jit, nb, top_k, block_q, block_k, args)


@pytest.mark.parametrize(("nb", "top_k", "block_q", "block_k"), DEFAULT_CASES[1:])
def test_ties_at_the_kth_score_are_all_kept(nb, top_k, block_q, block_k, rng, fast_jit):
    """Integer-valued q, k: many exact ties in the scores; every key tied with the k-th stays."""
    q, k, v, sigma, cot = _inputs(rng, nb.length, per_head_sigma=_per_head_sigma(nb))
    q, k = (np.round(2 * x).astype(np.float32) for x in (q, k))
    sigma = np.full_like(sigma, 1.0)
    _assert_matches_reference(fast_jit, nb, top_k, block_q, block_k, (q, k, v, sigma, cot))


@pytest.mark.parametrize(("nb", "top_k", "block_q", "block_k"), DEFAULT_CASES[1:])
def test_large_norm_nearby_inputs_keep_float32_accuracy(nb, top_k, block_q, block_k, rng, fast_jit):
    """Entries ~1e3 differing by O(1): scores are O(1); centring keeps them accurate."""
    args = _inputs(rng, nb.length, per_head_sigma=_per_head_sigma(nb), offset=1e3)
    out, grads = _kernel_step(fast_jit, nb, top_k, block_q, block_k)(*args)
    assert all(np.all(np.isfinite(x)) for x in (out, *grads))
    out64, _ = _reference_step(fast_jit, nb, top_k)(*(np.asarray(x, np.float64) for x in args))
    np.testing.assert_allclose(out, out64, rtol=0, atol=1e-2)


@pytest.mark.parametrize(("nb", "top_k", "block_q", "block_k"), DEFAULT_CASES[:1])
def test_large_norm_inputs_stay_finite_and_select_the_nearest_key(
    nb, top_k, block_q, block_k, rng, fast_jit
):
    """Entries ~1e3, scores ~-1e6: the nearest key wins by far; outputs equal the reference."""
    args = _inputs(rng, nb.length, per_head_sigma=_per_head_sigma(nb), scale=1e3)
    out, grads = _kernel_step(fast_jit, nb, top_k, block_q, block_k)(*args)
    assert all(np.all(np.isfinite(x)) for x in (out, *grads))
    out64, _ = _reference_step(fast_jit, nb, top_k)(*(np.asarray(x, np.float64) for x in args))
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs(rng, fast_jit):
    """bf16 q, k, v: float32 inside; equals the float32 kernel on the same rounded inputs."""
    nb, top_k, block_q, block_k = CASE_B
    q, k, v, sigma, cot = _inputs(rng, nb.length, per_head_sigma=_per_head_sigma(nb))
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    out, grads = _kernel_step(fast_jit, nb, top_k, block_q, block_k)(q, k, v, sigma, cot)
    assert all(g.dtype == jnp.bfloat16 for g in grads[:3])
    upcast = [x.astype(jnp.float32) for x in (q, k, v)]
    out32, grads32 = _kernel_step(fast_jit, nb, top_k, block_q, block_k)(*upcast, sigma, cot)
    np.testing.assert_allclose(np.asarray(out, np.float32), out32, rtol=1e-2, atol=1e-2)
    for name, g, g32 in zip("qkvs", grads, grads32, strict=True):
        scale = max(1.0, float(np.abs(g32).max()))
        np.testing.assert_allclose(np.asarray(g, np.float32), g32, atol=2e-2 * scale, err_msg=name)


def test_dispatcher_runs_the_kernel(rng, fast_jit):
    """krause_attention(impl="pallas") with its default blocks, bf16 in, bf16 out, and JAX's
    default 32-bit mode (the other tests run with float64 enabled, for the reference)."""
    nb = grid_neighborhood(3, 4, 1, "chebyshev", 1)
    q, k, v, sigma, _ = _inputs(rng, nb.length)
    with jax.enable_x64(False):
        run = fast_jit(
            lambda q, k, v: krause_attention(
                q, k, v, sigma=sigma, neighborhood=nb, top_k=3, impl="pallas"
            )
        )
        out = run(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    rounded = [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) for x in (q, k, v)]
    reference = fast_jit(
        lambda q, k, v: krause_attention(
            q, k, v, sigma=sigma.astype(np.float64), neighborhood=nb, top_k=3, impl="reference"
        )
    )
    expected = reference(*rounded)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=1e-2)


def test_auto_picks_the_kernel_on_accelerators_only(monkeypatch):
    nb = grid_neighborhood(8, 8, 1)
    cpu_choice = resolve_impl("auto", nb)
    assert cpu_choice != "pallas"
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        assert resolve_impl("auto", nb) == "pallas"
        assert resolve_impl("auto", causal_window(300, 32)) == "pallas"
        assert resolve_impl("auto", full(10)) == "dense"
        assert resolve_impl("auto", nb, use_kernel=False) == cpu_choice
    # Weights (and float64) are outside the kernel: "auto" then keeps the XLA choice.
    small = grid_neighborhood(2, 3, 1)
    attend = jax.jit(
        lambda q, k, v: krause_attention(
            q, k, v, sigma=1.0, neighborhood=small, top_k=3, impl="auto", return_weights=True
        )
    )
    _, weights = attend(*_qkv(small.length))
    assert weights.local_values.shape == (1, small.length, HEADS, 6)


# --------------------------------------------------------------------------------------------
# Bad input: ValueError naming the limit and the implementation to use instead.
# --------------------------------------------------------------------------------------------


def _qkv(n, dim=DIM, value_dim=VALUE_DIM, dtype=jnp.float32):
    return (
        jnp.zeros((1, n, HEADS, dim), dtype),
        jnp.zeros((1, n, HEADS, dim), dtype),
        jnp.zeros((1, n, HEADS, value_dim), dtype),
    )


def _call(nb, top_k=None, dim=DIM, value_dim=VALUE_DIM, dtype=jnp.float32, **blocks):
    q, k, v = _qkv(nb.length, dim, value_dim, dtype)
    inv = jnp.ones((HEADS,), jnp.float32)
    return kernel.pallas_krause_attention(q, k, v, inv, nb, top_k, backend="interpret", **blocks)


def test_full_attention_is_refused():
    with pytest.raises(ValueError, match=r"impl='pallas'.*grid.*causal.*full attention.*'dense'"):
        _call(full(9))
    q, k, v = _qkv(9)
    with pytest.raises(ValueError, match=r"impl='pallas' needs a grid.*'dense'"):
        krause_attention(q, k, v, sigma=1.0, neighborhood=full(9), impl="pallas")


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float16])
def test_unsupported_dtype_is_refused(dtype):
    with pytest.raises(ValueError, match=r"float32 or bfloat16.*" + jnp.dtype(dtype).name):
        _call(causal_window(10, 3), dtype=dtype)


@pytest.mark.parametrize("block", [4, 12, 512])
def test_block_size_that_cannot_tile_is_refused(block):
    with pytest.raises(ValueError, match=rf"block_q.*power of two in \[8, 256\].*{block}"):
        _call(causal_window(10, 3), block_q=block)


def test_compiled_kernels_need_blocks_of_16():
    q, k, v = _qkv(10)
    with pytest.raises(ValueError, match=r"block_k.*power of two in \[16, 256\].*8"):
        kernel.check_supported(q, k, v, causal_window(10, 3), None, 16, 8, interpret=False)


def test_head_dim_too_large_is_refused():
    with pytest.raises(ValueError, match=r"head_dim up to 256.*300.*'banded'.*'blocked'"):
        _call(causal_window(10, 3), dim=300)


def test_more_global_tokens_than_a_key_block_is_refused():
    with pytest.raises(ValueError, match=r"num_global=9.*block_k=8.*'banded'"):
        _call(grid_neighborhood(2, 2, 1, num_global=9), block_q=8, block_k=8)


def test_top_k_over_too_many_on_chip_keys_is_refused(monkeypatch):
    monkeypatch.setattr(kernel, "MAX_TOP_K_KEYS", 16)
    with pytest.raises(ValueError, match=r"24 candidate keys.*limit 16.*'blocked'"):
        _call(causal_window(40, 12), top_k=3, block_q=8, block_k=8)


def test_unknown_backend_is_refused():
    q, k, v = _qkv(10)
    with pytest.raises(ValueError, match=r"backend must be one of.*'triton'.*'mosaic_gpu'"):
        kernel.pallas_krause_attention(
            q, k, v, jnp.ones(HEADS), causal_window(10, 3), None, backend="mosaic_gpu"
        )


def test_return_weights_is_refused():
    q, k, v = _qkv(10)
    with pytest.raises(ValueError, match=r"impl='pallas' does not return weights.*'stencil'"):
        krause_attention(
            q,
            k,
            v,
            sigma=1.0,
            neighborhood=causal_window(10, 3),
            impl="pallas",
            return_weights=True,
        )


# --------------------------------------------------------------------------------------------
# The wider matrix (slow: ~4-8 s per case in interpret mode).
# --------------------------------------------------------------------------------------------

SLOW_NEIGHBORHOODS = [
    grid_neighborhood(4, 4, 0, "manhattan", 1),
    grid_neighborhood(5, 6, 1, "manhattan", 0),
    grid_neighborhood(5, 6, 1, "chebyshev", 1),
    grid_neighborhood(6, 5, 2, "manhattan", 1),
    grid_neighborhood(7, 7, 2, "chebyshev", 1),
    grid_neighborhood(1, 9, 1, "chebyshev", 2),
    causal_window(37, 1),
    causal_window(37, 9),
    causal_window(12, 40),
    causal(19),
]
SLOW_CASES = [
    pytest.param(nb, top_k, bq, bk, id=f"{nb.describe()}-top{top_k}-q{bq}-k{bk}")
    for nb in SLOW_NEIGHBORHOODS
    for top_k, bq, bk in ((None, 8, 16), (1, 8, 8), (2, 16, 8), (100, 8, 8))
]


@pytest.mark.slow
@pytest.mark.parametrize(("nb", "top_k", "block_q", "block_k"), SLOW_CASES)
def test_matrix_equals_the_reference(nb, top_k, block_q, block_k, rng, fast_jit):
    args = _inputs(rng, nb.length, per_head_sigma=bool(rng.integers(2)), batch=1)
    _assert_matches_reference(fast_jit, nb, top_k, block_q, block_k, args)


@pytest.mark.slow
@pytest.mark.parametrize(
    "nb", [grid_neighborhood(14, 14, 2, "chebyshev", 1), causal_window(200, 32)]
)
def test_model_sized_bfloat16_top_k_close_to_the_reference(nb, rng, fast_jit):
    """KViT-S/16's grid (top_k 12) and a 32-window (top_k 16) at default blocks, bf16 inputs."""
    top_k = 12 if num_global_keys(nb) else 16
    q, k, v, sigma, cot = _inputs(rng, nb.length, batch=1)
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    block = kernel.default_block_size(nb)
    out, grads = _kernel_step(fast_jit, nb, top_k, block, block)(q, k, v, sigma, cot)
    rounded = [np.asarray(x, np.float64) for x in (q, k, v, sigma, cot)]
    out64, grads64 = _reference_step(fast_jit, nb, top_k)(*rounded)
    np.testing.assert_allclose(np.asarray(out, np.float64), out64, atol=2e-2)
    for name, g, g64 in zip("qkvs", grads, grads64, strict=True):
        scale = max(1.0, float(np.abs(g64).max()))
        np.testing.assert_allclose(np.asarray(g, np.float64), g64, atol=3e-2 * scale, err_msg=name)


# --------------------------------------------------------------------------------------------
# Lowering for the accelerators, without one: `jax.export` lowers for a named platform, which
# runs Pallas' Triton (GPU) and Mosaic (TPU) lowering of every kernel of forward + backward.
# The device compilers themselves (Triton -> PTX, Mosaic -> TPU) only run on the devices.
# --------------------------------------------------------------------------------------------

KERNEL_CALL_TARGETS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


@pytest.mark.parametrize(("platform", "backend"), [("cuda", "triton"), ("tpu", "mosaic_tpu")])
@pytest.mark.parametrize(
    ("nb", "top_k"),
    [(grid_neighborhood(14, 14, 2, "chebyshev", 1), 12), (causal_window(300, 32), None)],
    ids=["grid-top12", "causal-all"],
)
def test_kernels_lower_for_accelerators(platform, backend, nb, top_k):
    x = jax.ShapeDtypeStruct((2, nb.length, HEADS, 64), jnp.bfloat16)
    sigma = jax.ShapeDtypeStruct((HEADS,), jnp.float32)

    def loss(q, k, v, sigma):
        inv = 0.5 / jnp.square(sigma)
        return jnp.sum(kernel.pallas_krause_attention(q, k, v, inv, nb, top_k, backend=backend))

    target = KERNEL_CALL_TARGETS[platform]
    check = jax.export.DisabledSafetyCheck.custom_call(target)
    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    exported = jax.export.export(step, platforms=[platform], disabled_checks=[check])
    module = exported(x, x, x, sigma).mlir_module()
    assert module.count(f"@{target}") == 3  # forward, dq and dk/dv kernels


@pytest.mark.slow
def test_float32_top_k_at_a_model_size_selects_the_float64_top_k(rng):
    """KViT-S/16's attention (14x14+1 tokens, 5x5 window, top_k 12, head_dim 64) in float32.

    Every query whose k-th and (k+1)-th float64 scores are further apart than float32 rounding
    must keep exactly the float64 top-k, so its output equals the float64 oracle's to float32
    accuracy (a dropped k-th key or an extra near-tie changes an output by ~1e-2..1e-1).
    """
    nb, top_k, batch, heads, dim = grid_neighborhood(14, 14, 2, "chebyshev", 1), 12, 2, 3, 64
    q, k, v = (rng.normal(size=(batch, nb.length, heads, dim)).astype(np.float32) for _ in "qkv")
    sigma = np.float32(rng.uniform(3.0, 6.0))
    inv = jnp.full((heads,), 0.5 / sigma**2, jnp.float32)
    out = jax.jit(lambda q, k, v: kernel.pallas_krause_attention(q, k, v, inv, nb, top_k))(q, k, v)

    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    scores = -np.sum((q64[:, :, None] - k64[:, None]) ** 2, -1) / (2.0 * float(sigma) ** 2)
    scores = np.where(dense_mask(nb), np.moveaxis(scores, -1, 1), -np.inf)  # [B, H, N, N]
    ordered = -np.sort(-scores, axis=-1)
    kth, next_largest = ordered[..., top_k - 1 : top_k], ordered[..., top_k : top_k + 1]
    e = np.where(scores >= kth, np.exp(scores - ordered[..., :1]), 0.0)
    expected = np.einsum("bhij,bjhe->bihe", e / e.sum(-1, keepdims=True), v64)
    with np.errstate(invalid="ignore"):
        gap = (kth - next_largest)[..., 0] / np.maximum(1.0, np.abs(kth[..., 0]))
    clear = np.moveaxis(np.where(np.isneginf(next_largest[..., 0]), np.inf, gap) > 1e-5, 1, 2)
    assert clear.mean() > 0.95
    np.testing.assert_allclose(np.asarray(out)[clear], expected[clear], rtol=0, atol=1e-4)

"""`kth_largest` (radix select) against `jax.lax.top_k`, exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from krause.attention import kth_largest

pytestmark = pytest.mark.usefixtures("x64")


def expected_kth(x, ks, valid=None):
    """`lax.top_k(x, k)[0][..., k - 1]` over the valid entries for each k in ks, as [..., 1];
    -inf where a row has fewer than k valid entries."""
    if valid is not None:
        x = jnp.where(valid, x, -jnp.inf)
        count = jnp.sum(jnp.broadcast_to(valid, x.shape), axis=-1, keepdims=True)
    out = []
    for k in ks:
        kth = jax.lax.top_k(x, k)[0][..., k - 1 : k]
        out.append(kth if valid is None else jnp.where(count >= k, kth, -jnp.inf))
    return out


@pytest.fixture
def check(fast_jit):
    """check(x, ks, valid=None): kth_largest equals lax.top_k exactly for every k in ks."""

    def check_(x, ks, valid=None):
        args = [jnp.asarray(x)] + ([] if valid is None else [jnp.asarray(valid)])
        got = fast_jit(lambda *a: [kth_largest(a[0], k, *a[1:]) for k in ks])(*args)
        expected = fast_jit(lambda *a: expected_kth(a[0], ks, *a[1:]))(*args)
        for k, g, e in zip(ks, got, expected, strict=True):
            g, e = np.asarray(g), np.asarray(e)
            assert g.dtype == e.dtype == x.dtype, k
            assert g.shape == e.shape == x.shape[:-1] + (1,), k
            np.testing.assert_array_equal(g, e, err_msg=f"k={k}")
        return [np.asarray(g) for g in got]

    return check_


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("shape", "ks"),
    [
        ((7, 9), (1, 4, 9)),
        ((2, 3, 16), (1, 5, 15, 16)),
        ((3, 1600), (1, 800, 1600)),  # rows longer than 1536 are counted untransposed
    ],
)
def test_matches_top_k_on_random_rows(check, rng, dtype, shape, ks):
    scale = 10.0 ** rng.integers(-3, 4, size=shape[:-1] + (1,))
    check((rng.normal(size=shape) * scale).astype(dtype), ks)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_top_k_with_ties(check, rng, dtype):
    """Integer-valued floats: many ties; the k-th value counts ties with multiplicity."""
    x = rng.integers(-3, 4, size=(40, 12)).astype(dtype)
    x[0] = 2.0  # a row of one repeated value
    x[1, :6] = x[1, 6:]  # every value twice
    check(x, (1, 2, 5, 11, 12))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(check, dtype):
    row = np.array([0.0, -0.0, np.inf, -np.inf, 1e-38, -1e-38, 3.0, -3.0, np.inf], dtype)
    check(np.stack([row, row[::-1], -row]), tuple(range(1, len(row) + 1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_valid_mask_and_too_few_valid(check, rng, dtype):
    x = rng.normal(size=(30, 10)).astype(dtype)
    x[::3] = np.round(x[::3])  # some rows with ties
    valid = rng.random(size=x.shape) < 0.5
    valid[0] = False  # no valid entry
    valid[1] = True
    valid[2] = False
    valid[2, [0, 7]] = True  # exactly 2 valid
    counts = valid.sum(-1)
    ks = (1, 2, 4, 10)
    got = check(x, ks, valid)
    for k, g in zip(ks, got, strict=True):
        assert np.all(np.isneginf(g[counts < k])), k
        assert np.all(np.isfinite(g[counts >= k])), k


def test_valid_mask_broadcasts(check, rng):
    valid = rng.random(size=(6, 8)) < 0.7
    valid[:, 0] = True
    check(rng.normal(size=(4, 6, 8)), (1, 2, 3), valid)


def test_many_rows_take_the_chunked_path(check, rng):
    """Above 2^20 elements the radix select runs in chunks of 2^16 / 8 = 8192 rows of 8."""
    x = rng.integers(-20, 20, size=((1 << 17) + 5, 8)).astype(np.float32)
    x[::2] += rng.normal(size=x[::2].shape).astype(np.float32)
    check(x, (1, 3, 8))
    check(x, (3,), rng.random(size=x.shape) < 0.8)


def test_no_gradient_flows(rng):
    x = jnp.asarray(rng.normal(size=(3, 5)))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(kth_largest(x, 2))))(x)
    np.testing.assert_array_equal(grad, 0.0)


def test_rejects_other_dtypes():
    with pytest.raises(ValueError, match="float32 or float64"):
        kth_largest(jnp.ones((2, 3), jnp.bfloat16), 1)


def test_works_with_jit_disabled(rng):
    """`jax.disable_jit()` (a common debugging switch) must not break the selection."""
    x = rng.normal(size=(3, 6))
    expected = np.sort(x, axis=-1)[:, -2:-1]
    with jax.disable_jit():
        got = kth_largest(jnp.asarray(x), 2)
    np.testing.assert_array_equal(got, expected)

"""Baselines (softmax, causal linear attention) and dense `rbf_attention` against NumPy, float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from krause.attention import (
    init_linear_attention_state,
    linear_attention,
    linear_attention_step,
    rbf_attention,
    softmax_attention,
)

pytestmark = pytest.mark.usefixtures("x64")


def normal(rng, *shape):
    return rng.normal(size=shape)


def np_softmax(logits, axis=-1):
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_softmax_attention(q, k, v, allowed=None, bias=None):
    """softmax(q k^T / sqrt(d) + bias) v per (batch, head), allowed: bool [Nq, Nk]."""
    logits = np.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if allowed is not None:
        logits = np.where(allowed, logits, -np.inf)
    p = np_softmax(logits)
    return np.einsum("bhij,bjhe->bihe", p, v), p


@pytest.mark.parametrize(("nq", "nk"), [(6, 6), (1, 1), (4, 9)])
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention(rng, fast_jit, causal, nq, nk):
    q, k, v = normal(rng, 2, nq, 3, 4), normal(rng, 2, nk, 3, 4), normal(rng, 2, nk, 3, 5)
    allowed = (np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq) if causal else None
    f = fast_jit(lambda *x: softmax_attention(*x, causal=causal, return_weights=True))
    out, p = f(*map(jnp.asarray, (q, k, v)))
    expected, expected_p = np_softmax_attention(q, k, v, allowed)
    assert out.dtype == jnp.float64 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p, expected_p, rtol=1e-10, atol=1e-12)


def test_softmax_attention_causal_with_fewer_queries_and_mask_and_bias(rng, fast_jit):
    """Causal queries are the last Nq positions; mask and bias combine with causality."""
    nq, nk = 3, 7
    q, k, v = normal(rng, 1, nq, 2, 4), normal(rng, 1, nk, 2, 4), normal(rng, 1, nk, 2, 3)
    bias = normal(rng, 1, 2, nq, nk)
    mask = rng.random(size=(nq, nk)) < 0.7
    mask[:, 0] = True
    f = fast_jit(lambda q, k, v, m, b: softmax_attention(q, k, v, causal=True, mask=m, bias=b))
    out = f(*map(jnp.asarray, (q, k, v, mask, bias)))
    allowed = (np.arange(nk)[None, :] <= np.arange(nq)[:, None] + nk - nq) & mask
    expected, _ = np_softmax_attention(q, k, v, allowed, bias)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def np_linear_attention(q, k, v, eps=1e-6):
    """Direct O(T^2) causal linear attention with phi = elu + 1."""
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(x))
    pq, pk = phi(q), phi(k)
    batch, t, heads, _ = q.shape
    out = np.zeros((batch, t, heads, v.shape[-1]))
    for b in range(batch):
        for h in range(heads):
            for i in range(t):
                kv = sum(np.outer(pk[b, j, h], v[b, j, h]) for j in range(i + 1))
                z = sum(pk[b, j, h] for j in range(i + 1))
                out[b, i, h] = pq[b, i, h] @ kv / (pq[b, i, h] @ z + eps)
    return out


@pytest.mark.parametrize(("t", "chunk_size"), [(13, 4), (10, 3), (5, 64), (1, 4), (8, 8)])
def test_linear_attention_matches_direct_formula(rng, fast_jit, t, chunk_size):
    q, k, v = normal(rng, 2, t, 2, 3), normal(rng, 2, t, 2, 3), normal(rng, 2, t, 2, 4)
    f = fast_jit(lambda q, k, v: linear_attention(q, k, v, chunk_size=chunk_size))
    out = f(*map(jnp.asarray, (q, k, v)))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, np_linear_attention(q, k, v), rtol=1e-10, atol=1e-12)


def test_linear_attention_step_iterated_equals_linear_attention(rng, fast_jit):
    t, batch, heads, d, e = 11, 2, 3, 4, 2
    q, k, v = (jnp.asarray(normal(rng, batch, t, heads, x)) for x in (d, d, e))

    def decode(q, k, v):
        state = init_linear_attention_state(batch, heads, d, e, jnp.float64)
        step = lambda s, x: linear_attention_step(s, *x)
        _, outs = jax.lax.scan(step, state, (q.swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1)))
        return outs.swapaxes(0, 1)

    full_out = fast_jit(lambda q, k, v: linear_attention(q, k, v, chunk_size=4))(q, k, v)
    np.testing.assert_allclose(fast_jit(decode)(q, k, v), full_out, rtol=1e-10, atol=1e-12)
    # And one step at a time, eagerly, as a decoding loop would do.
    state = init_linear_attention_state(batch, heads, d, e, jnp.float64)
    for i in range(3):
        state, out = linear_attention_step(state, q[:, i], k[:, i], v[:, i])
        np.testing.assert_allclose(out, full_out[:, i], rtol=1e-10, atol=1e-12)


def test_linear_attention_gradients_are_finite_and_match_a_direct_formula(rng, fast_jit):
    t = 9
    q, k, v = (jnp.asarray(normal(rng, 1, t, 2, x)) for x in (3, 3, 2))
    q = q.at[0, 3].multiply(30.0)  # large inputs: exp saturates on one side, linear on the other
    cot = jnp.asarray(normal(rng, 1, t, 2, 2))

    def direct(q, k, v, eps=1e-6):
        pq, pk = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
        causal = jnp.tril(jnp.ones((t, t)))
        a = jnp.einsum("bihd,bjhd->bhij", pq, pk) * causal
        return jnp.einsum("bhij,bjhe->bihe", a, v) / (
            jnp.sum(a, -1).swapaxes(1, 2)[..., None] + eps
        )

    grad = lambda f: fast_jit(jax.grad(lambda *x: jnp.sum(f(*x) * cot), argnums=(0, 1, 2)))
    got = grad(lambda q, k, v: linear_attention(q, k, v, chunk_size=4))(q, k, v)
    expected = grad(direct)(q, k, v)
    for g, e in zip(got, expected, strict=True):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-11)


def np_rbf(q, k, v, sigma, mask, bias, top_k):
    """Masked RBF attention with additive bias and top-k over the allowed scores, per row."""
    batch, nq, heads, _ = q.shape
    sigma = np.broadcast_to(sigma, (heads,))
    p = np.zeros((batch, heads, nq, k.shape[1]))
    for b in range(batch):
        for h in range(heads):
            for i in range(nq):
                d2 = np.sum((q[b, i, h] - k[b, :, h]) ** 2, axis=-1)
                s = -d2 / (2 * sigma[h] ** 2) + bias[b, h, i]
                allowed = np.flatnonzero(mask[b, h, i])
                chosen = allowed
                if top_k is not None and top_k < len(allowed):
                    threshold = np.sort(s[allowed])[::-1][top_k - 1]
                    chosen = allowed[s[allowed] >= threshold]
                p[b, h, i, chosen] = np_softmax(s[chosen])
    return np.einsum("bhij,bjhe->bihe", p, v), p


@pytest.mark.parametrize("top_k", [None, 1, 3, 20])
@pytest.mark.parametrize("per_head_sigma", [False, True])
def test_rbf_attention_with_mask_and_bias(rng, fast_jit, top_k, per_head_sigma):
    batch, nq, nk, heads = 2, 5, 8, 3
    q, k = normal(rng, batch, nq, heads, 4), normal(rng, batch, nk, heads, 4)
    v = normal(rng, batch, nk, heads, 2)
    sigma = rng.uniform(0.8, 1.6, size=(heads,) if per_head_sigma else ())
    mask = rng.random(size=(1, heads, nq, nk)) < 0.6  # broadcast over batch
    mask[..., 2] = True
    bias = normal(rng, batch, 1, nq, nk)  # broadcast over heads
    f = fast_jit(
        lambda q, k, v, s, m, b: rbf_attention(
            q, k, v, sigma=s, mask=m, bias=b, top_k=top_k, return_weights=True
        )
    )
    out, p = f(*map(jnp.asarray, (q, k, v, sigma, mask, bias)))
    expected, expected_p = np_rbf(
        q,
        k,
        v,
        sigma,
        np.broadcast_to(mask, (batch, heads, nq, nk)),
        np.broadcast_to(bias, (batch, heads, nq, nk)),
        top_k,
    )
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p, expected_p, rtol=1e-10, atol=1e-12)

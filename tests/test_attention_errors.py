"""Invalid arguments raise ValueError naming the argument and what is allowed."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest

from krause.attention import (
    IMPLS,
    causal,
    causal_window,
    full,
    grid_neighborhood,
    krause_attention,
    rbf_attention,
    resolve_impl,
)

GRID = grid_neighborhood(2, 3, 1, "manhattan", 1)  # 7 tokens


def qkv(length=7, heads=2, dim=3, value_dim=4, batch=1):
    return (
        jnp.ones((batch, length, heads, dim)),
        jnp.zeros((batch, length, heads, dim)),
        jnp.ones((batch, length, heads, value_dim)),
    )


def attend(q=None, k=None, v=None, **kwargs):
    dq, dk, dv = qkv()
    kwargs = {"sigma": 1.0, "neighborhood": GRID, **kwargs}
    return krause_attention(
        dq if q is None else q, dk if k is None else k, dv if v is None else v, **kwargs
    )


@pytest.mark.parametrize("window", [0, -3])
def test_window_below_one(window):
    with pytest.raises(ValueError, match=r"window.*>= 1.*" + re.escape(str(window))):
        causal_window(10, window)


@pytest.mark.parametrize("window", [2.0, True, "4", None])
def test_window_not_an_int(window):
    with pytest.raises(ValueError, match=r"window.*integer"):
        causal_window(10, window)


@pytest.mark.parametrize("bad", [0, -1])
def test_length_below_one(bad):
    for make in (lambda n: causal_window(n, 2), full, causal):
        with pytest.raises(ValueError, match=r"length.*>= 1"):
            make(bad)


def test_radius_below_zero():
    with pytest.raises(ValueError, match=r"radius.*>= 0.*-1"):
        grid_neighborhood(3, 3, radius=-1)


@pytest.mark.parametrize(
    ("kwargs", "name", "minimum"),
    [
        ({"height": 0}, "height", 1),
        ({"width": -2}, "width", 1),
        ({"num_global": -1}, "num_global", 0),
    ],
)
def test_grid_sizes(kwargs, name, minimum):
    args = {"height": 3, "width": 3, **kwargs}
    with pytest.raises(ValueError, match=rf"{name}.*>= {minimum}"):
        grid_neighborhood(**args)


def test_unknown_metric():
    with pytest.raises(ValueError, match=r"metric.*manhattan.*chebyshev.*euclidean"):
        grid_neighborhood(3, 3, metric="euclidean")


@pytest.mark.parametrize("top_k", [0, -1, 1.5, 2.0, True, "3"])
def test_bad_top_k(top_k):
    pattern = r"top_k.*None.*int >= 1.*" + re.escape(repr(top_k))
    with pytest.raises(ValueError, match=pattern):
        attend(top_k=top_k)
    q, k, v = qkv()
    with pytest.raises(ValueError, match=pattern):
        rbf_attention(q, k, v, sigma=1.0, top_k=top_k)


@pytest.mark.parametrize("sigma", [0.0, -1.0, np.array([1.0, 0.0]), np.array([-2.0, 1.0])])
def test_non_positive_sigma(sigma):
    with pytest.raises(ValueError, match=r"sigma must be positive"):
        attend(sigma=sigma)
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"sigma must be positive"):
        rbf_attention(q, k, v, sigma=sigma)


@pytest.mark.parametrize("shape", [(3,), (2, 1), (1, 2), (7,)])
def test_sigma_of_the_wrong_shape(shape):
    with pytest.raises(
        ValueError, match=r"sigma.*scalar.*\[heads\] = \(2,\).*" + re.escape(str(shape))
    ):
        attend(sigma=np.ones(shape))


@pytest.mark.parametrize("length", [6, 8])
def test_grid_size_does_not_match_length(length):
    q, k, v = qkv(length=length)
    pattern = rf"7 tokens.*length {length}.*height \* width \+ num_global"
    with pytest.raises(ValueError, match=pattern):
        attend(q, k, v)


def test_causal_length_does_not_match():
    q, k, v = qkv(length=9)
    with pytest.raises(ValueError, match=r"10 tokens.*length 9"):
        attend(q, k, v, neighborhood=causal_window(10, 3))


@pytest.mark.parametrize(
    "shapes",
    [
        ((1, 7, 2, 3), (1, 7, 2, 4), (1, 7, 2, 4)),  # q, k head_dim
        ((1, 7, 2, 3), (1, 7, 2, 3), (1, 6, 2, 4)),  # k, v length
        ((1, 7, 2, 3), (1, 7, 1, 3), (1, 7, 1, 4)),  # heads
        ((2, 7, 2, 3), (1, 7, 2, 3), (1, 7, 2, 4)),  # batch
        ((1, 7, 2, 3), (1, 7, 2, 3), (2, 7, 2, 4)),  # k, v batch
        ((7, 2, 3), (7, 2, 3), (7, 2, 4)),  # no batch axis
    ],
)
def test_mismatched_qkv(shapes):
    q, k, v = (jnp.ones(s) for s in shapes)
    with pytest.raises(ValueError, match=r"q, k, v must .*q \(" + re.escape(str(shapes[0])[1:])):
        attend(q, k, v)


def test_q_and_k_lengths_differ():
    q, _, _ = qkv(length=7)
    _, k, v = qkv(length=8)
    with pytest.raises(ValueError, match=r"q and k must have the same length"):
        attend(q, k, v)


def test_unknown_impl():
    pattern = r"impl must be one of.*" + ".*".join(re.escape(repr(i)) for i in IMPLS) + ".*fast"
    with pytest.raises(ValueError, match=pattern):
        attend(impl="fast")
    with pytest.raises(ValueError, match=pattern):
        resolve_impl("fast", GRID)


@pytest.mark.parametrize("impl", ["stencil", "banded"])
@pytest.mark.parametrize("nb", [causal_window(7, 3), causal(7), full(7)])
def test_grid_impls_need_a_grid(nb, impl):
    with pytest.raises(ValueError, match=rf"impl='{impl}' needs a grid"):
        attend(neighborhood=nb, impl=impl)


@pytest.mark.parametrize("nb", [GRID, full(7)])
def test_blocked_needs_a_causal_window(nb):
    with pytest.raises(ValueError, match=r"impl='blocked' needs a causal window"):
        attend(neighborhood=nb, impl="blocked")

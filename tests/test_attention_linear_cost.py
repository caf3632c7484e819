"""The O(N w) paths never build an N x N intermediate, forward or backward.

At N = 32*32 + 1 (grid, window 5 + CLS) and N = 2048 (causal window 16) with batch = heads = 1 and
head_dim 2, N * w * dim is at most N * 32 while a dense score matrix has N^2 elements; anything
with N^2 / 4 or more elements is taken to be quadratic (the causal query blocks add at most
N * 64 * dim). We inspect (a) every equation output of the jaxpr of
`jax.value_and_grad` of a loss (including sub-jaxprs of loops and custom rules) and (b) every array
shape in the optimised HLO of the compiled gradient. The same checks applied to impl="dense" must
fail, which shows that they can.
"""

from __future__ import annotations

import math
import re

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from krause.attention import causal_window, grid_neighborhood, krause_attention

BIG_GRID = grid_neighborhood(32, 32, 1, "manhattan", 1)  # 1025 tokens, |N(i)| <= 6
BIG_CAUSAL = causal_window(2048, 16)
HEAD_DIM = 2


def _threshold(n: int) -> int:
    """Anything this large is quadratic: N^2 / 4, far above N * (w + block) * dim here."""
    return n * n // 4


def _grad_fn(nb, impl: str, top_k):
    def loss(q, k, v, sigma):
        out = krause_attention(q, k, v, sigma=sigma, neighborhood=nb, top_k=top_k, impl=impl)
        return jnp.sum(out * out)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))


def _args(n: int):
    shape = (1, n, 1, HEAD_DIM)
    return (
        jax.ShapeDtypeStruct(shape, jnp.float32),
        jax.ShapeDtypeStruct(shape, jnp.float32),
        jax.ShapeDtypeStruct(shape, jnp.float32),
        jax.ShapeDtypeStruct((), jnp.float32),
    )


def _subjaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _subjaxprs(item)


def jaxpr_intermediate_sizes(jaxpr) -> list[tuple[int, str]]:
    """(element count, description) of every equation output, recursively."""
    sizes = []
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            sizes.append((math.prod(shape), f"{eqn.primitive.name} -> {shape}"))
        for param in eqn.params.values():
            for sub in _subjaxprs(param):
                sizes.extend(jaxpr_intermediate_sizes(sub))
    return sizes


def hlo_array_sizes(text: str) -> list[tuple[int, str]]:
    """(element count, shape text) of every array type in HLO text."""
    pattern = r"\b(?:pred|[suf]\d+|bf16|c64|c128)\[([0-9,]*)\]"
    return [
        (math.prod(int(d) for d in dims.split(",") if d), f"[{dims}]")
        for dims in re.findall(pattern, text)
    ]


def largest_jaxpr(nb, impl, top_k):
    jaxpr = jax.make_jaxpr(_grad_fn(nb, impl, top_k))(*_args(nb.length))
    return max(jaxpr_intermediate_sizes(jaxpr.jaxpr))


def largest_hlo(nb, impl, top_k):
    compiled = jax.jit(_grad_fn(nb, impl, top_k)).lower(*_args(nb.length)).compile()
    return max(hlo_array_sizes(compiled.as_text()))


LINEAR = [
    pytest.param(BIG_GRID, "stencil", 3, id="grid1025-stencil-top3"),
    pytest.param(BIG_GRID, "stencil", None, id="grid1025-stencil-all"),
    pytest.param(BIG_CAUSAL, "blocked", 8, id="causal2048-blocked-top8"),
    pytest.param(BIG_CAUSAL, "blocked", None, id="causal2048-blocked-all"),
]


def test_sizes_make_quadratic_and_linear_distinguishable():
    for nb, width in ((BIG_GRID, 6), (BIG_CAUSAL, 16)):
        linear = nb.length * width * HEAD_DIM  # batch = heads = 1
        assert 8 * linear < _threshold(nb.length)


@pytest.mark.parametrize(("nb", "impl", "top_k"), LINEAR)
def test_jaxpr_of_gradient_has_no_quadratic_intermediate(nb, impl, top_k):
    size, what = largest_jaxpr(nb, impl, top_k)
    assert size < _threshold(nb.length), f"{impl}: {what} has {size} elements (N={nb.length})"


@pytest.mark.parametrize(("nb", "impl", "top_k"), LINEAR)
def test_compiled_gradient_has_no_quadratic_buffer(nb, impl, top_k):
    size, what = largest_hlo(nb, impl, top_k)
    assert size < _threshold(nb.length), f"{impl}: HLO array {what} (N={nb.length})"


@pytest.mark.parametrize(("nb", "top_k"), [(BIG_GRID, 3), (BIG_CAUSAL, 8)])
def test_the_checks_catch_a_quadratic_implementation(nb, top_k):
    n = nb.length
    size, _ = largest_jaxpr(nb, "dense", top_k)
    assert size >= n * n
    size, _ = largest_jaxpr(nb, "reference", top_k)
    assert size >= n * n


def test_the_hlo_check_catches_a_quadratic_implementation():
    size, _ = largest_hlo(BIG_GRID, "dense", 3)
    assert size >= BIG_GRID.length**2


def test_hlo_shape_parser():
    text = "%x = f32[1,1025,1025]{2,1,0} fusion(bf16[3]{0} %a, pred[] %p), (s32[2,5], u8[7])"
    assert sorted(hlo_array_sizes(text)) == sorted(
        [(1025 * 1025, "[1,1025,1025]"), (3, "[3]"), (1, "[]"), (10, "[2,5]"), (7, "[7]")]
    )
    assert np.prod([]) == 1

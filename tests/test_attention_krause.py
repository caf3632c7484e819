"""Krause attention: every implementation against the reference and an independent NumPy oracle.

All checks run in float64 on random inputs (fresh seed per test, see `rng` in conftest.py).
Each (neighbourhood, top_k, impl) is compiled once (`_compiled`, with the `fast_jit` options of
conftest.py) and reused by every test that needs it (the HLO-level checks of the optimised
programs live in test_attention_linear_cost.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from krause.attention import (
    CausalWindow,
    Full,
    GridNeighborhood,
    causal,
    causal_window,
    dense_mask,
    densify_weights,
    full,
    grid_neighborhood,
    index_table,
    krause_attention,
    local,
    max_neighbors,
)

pytestmark = pytest.mark.usefixtures("x64")

# --------------------------------------------------------------------------------------------
# Independent NumPy oracle (float64): neighbourhood, top-k with the documented tie rule, softmax.
# --------------------------------------------------------------------------------------------


def oracle_mask(nb) -> np.ndarray:
    """mask[i, j] iff key j is in N(i), built from the definition with explicit loops."""
    n = nb.length
    mask = np.zeros((n, n), bool)
    if isinstance(nb, Full):
        mask[:] = True
    elif isinstance(nb, CausalWindow):
        for i in range(n):
            for j in range(n):
                mask[i, j] = i - nb.window < j <= i
    else:
        g, w = nb.num_global, nb.width
        mask[:g, :] = True
        mask[:, :g] = True
        for a in range(nb.height * w):
            for b in range(nb.height * w):
                dr, dc = abs(a // w - b // w), abs(a % w - b % w)
                dist = dr + dc if nb.metric == "manhattan" else max(dr, dc)
                mask[g + a, g + b] = dist <= nb.radius
    return mask


def oracle_krause(q, k, v, sigma, mask, top_k):
    """NumPy Krause attention.

    q, k [B, N, H, D], v [B, N, H, E], sigma scalar or [H], mask [N, N]
    -> (out [B, N, H, E], probabilities [B, H, N, N]).
    """
    n, heads = q.shape[1], q.shape[2]
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (heads,))
    sq_dist = np.sum((q[:, :, None] - k[:, None]) ** 2, axis=-1)  # [B, N, N, H]
    scores = np.moveaxis(-sq_dist / (2.0 * sigma**2), -1, 1)  # [B, H, N, N]
    keep = np.broadcast_to(mask, scores.shape)
    masked = np.where(keep, scores, -np.inf)
    if top_k is not None and top_k < n:
        # k-th largest of each row (ties counted with multiplicity); keep every score >= it.
        kth = np.partition(masked, n - top_k, axis=-1)[..., n - top_k]
        keep = keep & (masked >= kth[..., None])
    row_max = np.max(np.where(keep, scores, -np.inf), axis=-1, keepdims=True)
    e = np.where(keep, np.exp(scores - row_max), 0.0)
    p = e / e.sum(axis=-1, keepdims=True)
    return np.einsum("bhij,bjhe->bihe", p, v), p


def plain_rbf_softmax(q, k, v, sigma, causal_only=False):
    """RBF-softmax over all keys (or all keys j <= i), one (batch, head, query) at a time."""
    batch, n, heads, _ = q.shape
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (heads,))
    out = np.zeros((batch, n, heads, v.shape[-1]))
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                keys = range(i + 1) if causal_only else range(n)
                logits = np.array(
                    [-np.dot(q[b, i, h] - k[b, j, h], q[b, i, h] - k[b, j, h]) for j in keys]
                ) / (2.0 * sigma[h] ** 2)
                weights = np.exp(logits - logits.max())
                weights /= weights.sum()
                out[b, i, h] = sum(wj * v[b, j, h] for wj, j in zip(weights, keys, strict=True))
    return out


# --------------------------------------------------------------------------------------------
# Cases: neighbourhoods x top_k x shapes. Every implementation that supports the neighbourhood
# is compared with the reference on every case.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    nb: GridNeighborhood | CausalWindow | Full
    top_k: int | None
    per_head_sigma: bool
    batch: int = 1
    heads: int = 2
    dim: int = 3
    value_dim: int = 4

    def __str__(self) -> str:
        nb = self.nb
        if isinstance(nb, GridNeighborhood):
            name = f"grid{nb.height}x{nb.width}-r{nb.radius}{nb.metric[:3]}-g{nb.num_global}"
        elif isinstance(nb, CausalWindow):
            name = f"causal{nb.length}-w{nb.window}"
        else:
            name = f"full{nb.length}"
        sigma = "sigmaH" if self.per_head_sigma else "sigma1"
        return (
            f"{name}-top{self.top_k}-{sigma}-b{self.batch}h{self.heads}d{self.dim}e{self.value_dim}"
        )

    @property
    def impls(self) -> tuple[str, ...]:
        if isinstance(self.nb, GridNeighborhood):
            return ("dense", "stencil", "banded")
        if isinstance(self.nb, CausalWindow):
            return ("dense", "blocked")
        return ("dense",)

    def inputs(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = self.nb.length
        shape = (self.batch, n, self.heads)
        sigma_shape = (self.heads,) if self.per_head_sigma else ()
        return {
            "q": rng.normal(size=(*shape, self.dim)),
            "k": rng.normal(size=(*shape, self.dim)),
            "v": rng.normal(size=(*shape, self.value_dim)),
            "sigma": rng.uniform(0.7, 1.5, size=sigma_shape),
            "cot": rng.normal(size=(*shape, self.value_dim)),
        }


GRID_CASES = [
    Case(grid_neighborhood(3, 3, 1, "manhattan", 1), 2, False),
    Case(grid_neighborhood(3, 3, 1, "chebyshev", 0), None, True, batch=2, heads=1, value_dim=2),
    Case(grid_neighborhood(4, 3, 2, "chebyshev", 1), 5, True, heads=3, dim=2, value_dim=5),
    Case(grid_neighborhood(2, 5, 2, "manhattan", 0), 3, False, dim=4, value_dim=2),
    Case(grid_neighborhood(3, 4, 0, "manhattan", 1), 1, True),  # window = the patch itself
    Case(grid_neighborhood(1, 1, 1, "manhattan", 1), 1, False),  # 1x1 grid + CLS
    Case(grid_neighborhood(2, 3, 3, "manhattan", 1), 50, True, dim=5),  # covers all; top_k > N
    # 13 wide: banded runs 3 blocks of 2 rows, the last half padding
    Case(grid_neighborhood(5, 13, 1, "chebyshev", 2), 4, True, heads=1, dim=2, value_dim=2),
]
CAUSAL_CASES = [
    Case(causal_window(7, 1), None, False),
    Case(causal_window(9, 3), 1, True, batch=2),
    Case(causal_window(13, 4), 2, False, heads=3, dim=2, value_dim=5),
    Case(causal_window(10, 50), None, True),  # window beyond length
    Case(causal(11), 3, False, dim=4, value_dim=2),
    Case(causal_window(37, 17), 8, True, heads=1, dim=2, value_dim=3),  # ragged query blocks
    Case(causal_window(40, 16), 16, False, heads=1),  # top_k == window, several blocks
    Case(causal_window(33, 5), 100, True, heads=1, value_dim=2),  # top_k beyond window
    Case(causal_window(1, 1), 1, False),  # a single token
]
FULL_CASES = [
    Case(full(6), 2, True),
    Case(full(5), None, False, batch=2, value_dim=2),
]
CASES = GRID_CASES + CAUSAL_CASES + FULL_CASES


@functools.cache
def _compiled(jit, nb, top_k, impl):
    """jit(q, k, v, sigma, cot) -> out, dense and compact weights, d<out, cot>/d(q, k, v, sigma)."""

    def loss(q, k, v, sigma, cot):
        out, weights = krause_attention(
            q, k, v, sigma=sigma, neighborhood=nb, top_k=top_k, impl=impl, return_weights=True
        )
        return jnp.sum(out * cot), (out, densify_weights(weights), weights)

    def run(q, k, v, sigma, cot):
        grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
        (_, (out, dense, weights)), grads = grad_fn(q, k, v, sigma, cot)
        return {"out": out, "weights": dense, "compact": weights, "grads": grads}

    return jit(run)


@pytest.fixture
def run(fast_jit):
    """run(case, impl, inputs) -> dict of NumPy results of the compiled program."""

    def run_(case: Case, impl: str, inputs: dict[str, np.ndarray]) -> dict:
        args = [jnp.asarray(inputs[name]) for name in ("q", "k", "v", "sigma", "cot")]
        assert all(a.dtype == jnp.float64 for a in args)
        result = _compiled(fast_jit, case.nb, case.top_k, impl)(*args)
        return jax.tree.map(np.asarray, result)

    return run_


def assert_close(actual, desired, what: str, rtol: float = 1e-9) -> None:
    scale = max(1.0, float(np.max(np.abs(desired), initial=0.0)))
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=what)


def impl_cases():
    return [pytest.param(c, impl, id=f"{c}-{impl}") for c in CASES for impl in c.impls]


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "impl"), impl_cases())
def test_impl_matches_reference_forward_weights_and_grads(case, impl, rng, run):
    inputs = case.inputs(rng)
    ref = run(case, "reference", inputs)
    got = run(case, impl, inputs)
    assert got["out"].shape == (case.batch, case.nb.length, case.heads, case.value_dim)
    assert_close(got["out"], ref["out"], "out")
    assert_close(got["weights"], ref["weights"], "densified weights")
    for name, g, r in zip(("q", "k", "v", "sigma"), got["grads"], ref["grads"], strict=True):
        assert g.shape == inputs[name].shape, name
        assert_close(g, r, f"gradient w.r.t. {name}", rtol=1e-8)


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_banded_blocks_of_any_height_match_the_oracle(rows, rng, fast_jit):
    """`grid_banded` with R grid rows per query block (R = 2 and 3 leave padding rows): output
    against the NumPy oracle, gradients against the reference implementation's."""
    nb, top_k = grid_neighborhood(5, 4, 2, "chebyshev", 1), 6
    q, k, v, cot = (rng.normal(size=(2, nb.length, 2, 3)) for _ in range(4))
    sigma = rng.uniform(0.7, 1.5, size=(2,))

    def loss(fn, q, k, v, sigma):
        return jnp.sum(fn(q, k, v, sigma) * cot)

    banded = lambda q, k, v, s: local.grid_banded(q, k, v, 0.5 / s**2, nb, top_k, rows=rows)[0]
    reference = lambda q, k, v, s: krause_attention(
        q, k, v, sigma=s, neighborhood=nb, top_k=top_k, impl="reference"
    )
    expected, _ = oracle_krause(q, k, v, sigma, oracle_mask(nb), top_k)
    assert_close(fast_jit(banded)(q, k, v, sigma), expected, "out")
    grad = lambda fn: fast_jit(jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2, 3)))
    got, want = grad(banded)(q, k, v, sigma), grad(reference)(q, k, v, sigma)
    for name, g, r in zip("qkvs", got, want, strict=True):
        assert_close(g, r, f"gradient w.r.t. {name}", rtol=1e-8)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_matches_numpy_oracle(case, rng, run):
    inputs = case.inputs(rng)
    mask = oracle_mask(case.nb)
    out, p = oracle_krause(*(inputs[n] for n in ("q", "k", "v", "sigma")), mask, case.top_k)
    for impl in ("reference", *case.impls):  # all compiled already: only the run is paid
        got = run(case, impl, inputs)
        assert_close(got["out"], out, f"{impl}: out")
        assert_close(got["weights"], p, f"{impl}: weights")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_gradient_matches_finite_differences_of_oracle(case, rng, run):
    """Directional derivative of <oracle(q, k, v, sigma), cot> vs the reference's autodiff grads."""
    inputs = case.inputs(rng)
    mask = oracle_mask(case.nb)
    names = ("q", "k", "v", "sigma")
    direction = {n: rng.normal(size=np.shape(inputs[n])) for n in names}

    def objective(t):
        args = [inputs[n] + t * direction[n] for n in names]
        return np.sum(oracle_krause(*args, mask, case.top_k)[0] * inputs["cot"])

    eps = 1e-6
    numeric = (objective(eps) - objective(-eps)) / (2 * eps)
    grads = run(case, "reference", inputs)["grads"]
    analytic = sum(np.sum(g * direction[n]) for g, n in zip(grads, names, strict=True))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("case", "impl"), impl_cases())
def test_weights_are_local_normalised_and_top_k_sparse(case, impl, rng, run):
    inputs = case.inputs(rng)
    got = run(case, impl, inputs)
    p = got["weights"]  # [B, H, N, N]
    mask = oracle_mask(case.nb)
    np.testing.assert_array_equal(dense_mask(case.nb), mask)
    assert np.all(p[..., ~mask] == 0), "weight outside the neighbourhood"
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    # Random continuous inputs have no ties: exactly min(top_k, |N(i)|) keys survive.
    expected = mask.sum(-1) if case.top_k is None else np.minimum(case.top_k, mask.sum(-1))
    np.testing.assert_array_equal((p > 0).sum(-1), np.broadcast_to(expected, p.shape[:-1]))


LAYOUT_CASES = [GRID_CASES[0], GRID_CASES[3], CAUSAL_CASES[2], FULL_CASES[0]]


@pytest.mark.parametrize(
    ("case", "impl"),
    [pytest.param(c, impl, id=f"{c}-{impl}") for c in LAYOUT_CASES for impl in c.impls],
)
def test_compact_weights_layout(case, impl, rng, run):
    """KrauseWeights follows its documented layout."""
    got = run(case, impl, case.inputs(rng))["compact"]
    nb, table = case.nb, index_table(case.nb)
    g = nb.num_global_queries
    np.testing.assert_array_equal(got.indices, table)
    assert got.local_values.shape == (case.batch, nb.length, case.heads, table.shape[1])
    assert got.global_values.shape == (case.batch, g, case.heads, nb.length)
    assert np.all(got.local_values[:, :g] == 0)
    slot_unused = np.broadcast_to((table < 0)[None, :, None, :], got.local_values.shape)
    assert np.all(got.local_values[slot_unused] == 0)


def _covers_everything(case: Case) -> bool:
    nb, n = case.nb, case.nb.length
    if case.top_k is not None and case.top_k < n:
        return False
    if isinstance(nb, GridNeighborhood):
        reach = (
            nb.height + nb.width - 2 if nb.metric == "manhattan" else max(nb.height, nb.width) - 1
        )
        return nb.radius >= reach
    if isinstance(nb, CausalWindow):  # compared with causal RBF-softmax
        return nb.window >= n
    return True


@pytest.mark.parametrize("case", [c for c in CASES if _covers_everything(c)], ids=str)
def test_covering_window_equals_plain_rbf_softmax(case, rng, run):
    inputs = case.inputs(rng)
    causal_only = isinstance(case.nb, CausalWindow)
    if causal_only:
        assert case.nb.window >= case.nb.length
    expected = plain_rbf_softmax(
        *(inputs[n] for n in ("q", "k", "v", "sigma")), causal_only=causal_only
    )
    for impl in ("reference", *case.impls):
        assert_close(run(case, impl, inputs)["out"], expected, impl)


def test_covering_cases_exist():
    kinds = {type(c.nb) for c in CASES if _covers_everything(c)}
    assert kinds == {GridNeighborhood, CausalWindow, Full}


def _perturb(inputs, rng, positions):
    new = dict(inputs)
    for name in ("q", "k", "v"):
        x = inputs[name].copy()
        x[:, positions] = 5.0 * rng.normal(size=x[:, positions].shape)
        new[name] = x
    return new


@pytest.mark.parametrize(
    ("case", "impl"),
    [
        pytest.param(c, impl, id=f"{c}-{impl}")
        for c in CAUSAL_CASES
        for impl in ("reference", *c.impls)
    ],
)
def test_causal_outputs_ignore_the_future(case, impl, rng, run):
    inputs = case.inputs(rng)
    out = run(case, impl, inputs)["out"]
    n = case.nb.length
    for i in sorted({0, n - 2, *rng.integers(0, n, size=3)} - {-1}):
        changed = run(case, impl, _perturb(inputs, rng, np.arange(i + 1, n)))["out"]
        np.testing.assert_allclose(changed[:, : i + 1], out[:, : i + 1], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    ("case", "impl"),
    [
        pytest.param(c, impl, id=f"{c}-{impl}")
        for c in GRID_CASES + CAUSAL_CASES
        for impl in ("reference", *c.impls)
    ],
)
def test_local_outputs_ignore_keys_outside_the_neighbourhood(case, impl, rng, run):
    inputs = case.inputs(rng)
    out = run(case, impl, inputs)["out"]
    mask = oracle_mask(case.nb)
    local_queries = np.arange(case.nb.num_global_queries, case.nb.length)
    for i in rng.choice(local_queries, size=min(3, len(local_queries)), replace=False):
        outside = np.flatnonzero(~mask[i])
        changed = run(case, impl, _perturb(inputs, rng, outside))["out"]
        np.testing.assert_allclose(changed[:, i], out[:, i], rtol=1e-13, atol=1e-13)


TIE_CASES = [c for c in CASES if c.top_k is not None and c.top_k < max_neighbors(c.nb)]


@pytest.mark.parametrize("case", TIE_CASES, ids=str)
def test_ties_keep_every_key_at_the_kth_score(case, rng, run):
    """Integer-valued q, k and sigma = 1 make scores exact and ties frequent in every impl."""
    inputs = case.inputs(rng)
    for name in ("q", "k"):
        inputs[name] = rng.integers(-1, 2, size=inputs[name].shape).astype(np.float64)
    inputs["sigma"] = np.ones_like(inputs["sigma"])
    out, p = oracle_krause(
        *(inputs[n] for n in ("q", "k", "v", "sigma")), oracle_mask(case.nb), case.top_k
    )
    for impl in ("reference", *case.impls):
        got = run(case, impl, inputs)
        assert_close(got["weights"], p, f"{impl}: weights")
        assert_close(got["out"], out, f"{impl}: out")


def test_tie_cases_have_ties(rng):
    """Integer inputs do produce rows with more than top_k survivors (so the rule is exercised)."""
    tied = 0
    for case in TIE_CASES:
        inputs = case.inputs(rng)
        for name in ("q", "k"):
            inputs[name] = rng.integers(-1, 2, size=inputs[name].shape).astype(np.float64)
        _, p = oracle_krause(
            inputs["q"], inputs["k"], inputs["v"], 1.0, oracle_mask(case.nb), case.top_k
        )
        tied += np.any((p > 0).sum(-1) > case.top_k)
    assert tied >= len(TIE_CASES) // 2


# --------------------------------------------------------------------------------------------
# jit / vmap / grad
# --------------------------------------------------------------------------------------------

TRANSFORM_CASES = [
    pytest.param(grid_neighborhood(3, 3, 1, "manhattan", 1), "stencil", id="grid-stencil"),
    pytest.param(grid_neighborhood(3, 4, 1, "chebyshev", 1), "banded", id="grid-banded"),
    pytest.param(causal_window(12, 4), "blocked", id="causal-blocked"),
    pytest.param(causal_window(12, 4), "dense", id="causal-dense"),
    pytest.param(grid_neighborhood(2, 3, 1, "chebyshev", 1), "auto", id="grid-auto"),
]


def _qkv(rng, *lead, n, heads=2, dim=3, value_dim=2):
    return (
        rng.normal(size=(*lead, n, heads, dim)),
        rng.normal(size=(*lead, n, heads, dim)),
        rng.normal(size=(*lead, n, heads, value_dim)),
    )


@pytest.mark.parametrize(("nb", "impl"), TRANSFORM_CASES)
def test_jit_with_the_neighbourhood_closed_over(nb, impl, rng):
    q, k, v = _qkv(rng, 2, n=nb.length)
    sigma = rng.uniform(0.7, 1.5, size=(2,))
    f = jax.jit(
        lambda q, k, v, s: krause_attention(q, k, v, sigma=s, neighborhood=nb, top_k=2, impl=impl)
    )
    expected, _ = oracle_krause(q, k, v, sigma, oracle_mask(nb), 2)
    np.testing.assert_allclose(f(q, k, v, sigma), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("nb", "impl"), TRANSFORM_CASES[:2])
def test_vmap_over_an_extra_leading_axis(nb, impl, rng, fast_jit):
    """vmap over [E, B, N, H, D] inputs, with a different scalar sigma per example."""
    q, k, v = _qkv(rng, 3, 2, n=nb.length)
    sigma = rng.uniform(0.7, 1.5, size=(3,))
    f = lambda q, k, v, s: krause_attention(q, k, v, sigma=s, neighborhood=nb, top_k=3, impl=impl)
    out = fast_jit(jax.vmap(f))(q, k, v, sigma)
    assert out.shape == v.shape
    for e in range(3):
        expected, _ = oracle_krause(q[e], k[e], v[e], sigma[e], oracle_mask(nb), 3)
        np.testing.assert_allclose(out[e], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize(("nb", "impl"), TRANSFORM_CASES[:2])
def test_grad_with_respect_to_sigma(nb, impl, per_head, rng, fast_jit):
    """jax.grad w.r.t. sigma (scalar or [heads]) against central differences of the oracle."""
    q, k, v = _qkv(rng, 2, n=nb.length)
    cot = rng.normal(size=v.shape)
    sigma = rng.uniform(0.7, 1.5, size=(2,) if per_head else ())
    loss = lambda s: jnp.sum(
        krause_attention(q, k, v, sigma=s, neighborhood=nb, top_k=2, impl=impl) * cot
    )
    grad = np.asarray(fast_jit(jax.grad(loss))(jnp.asarray(sigma)))
    assert grad.shape == sigma.shape
    mask, eps = oracle_mask(nb), 1e-6
    for idx in np.ndindex(sigma.shape):
        step = np.zeros_like(sigma)
        step[idx] = eps
        plus = np.sum(oracle_krause(q, k, v, sigma + step, mask, 2)[0] * cot)
        minus = np.sum(oracle_krause(q, k, v, sigma - step, mask, 2)[0] * cot)
        np.testing.assert_allclose(grad[idx], (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)

"""The shared attention module: Flax's own module as the reference, the drop-in swap, bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from krause.attention import causal_window, dense_mask, grid_neighborhood
from krause.models import get_model
from krause.models.attention import MultiHeadAttention, krause_attention_fn


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def init(module, x, **kwargs):
    return jax.jit(lambda x: module.init(jax.random.key(0), x, **kwargs))(x)["params"]


def perturbed(params, rng):
    """Every parameter (zero biases included) moved by a random amount."""
    return jax.tree.map(lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(a.dtype), params)


def projections(params, x, heads):
    """q, k, v [B, N, H, Dh] in float64 from the DenseGeneral parameters."""
    x = np.asarray(x, np.float64)
    return [
        np.einsum("bnd,dhk->bnhk", x, params[m]["kernel"]) + params[m]["bias"]
        for m in ("query", "key", "value")
    ]


def test_softmax_module_equals_flax_multi_head_dot_product_attention(rng):
    """Same parameter tree as Flax's module, and the same function of it."""
    x = jnp.asarray(rng.standard_normal((2, 7, 12)), jnp.float32)
    mask = jnp.asarray(rng.random((2, 1, 7, 7)) < 0.7) | jnp.eye(7, dtype=bool)
    ours = MultiHeadAttention(num_heads=3)
    flax_mha = nn.MultiHeadDotProductAttention(num_heads=3)
    params = perturbed(init(ours, x), rng)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, init(flax_mha, x))
    got = ours.apply({"params": params}, x, mask=mask)
    expected = flax_mha.apply({"params": params}, x, mask=mask)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("top_k", [None, 3])
def test_krause_module_equals_float64_formula(top_k, rng):
    heads, sigma = 2, 1.7
    nb = grid_neighborhood(3, 3, radius=1, metric="chebyshev", num_global=1)
    module = MultiHeadAttention(
        num_heads=heads, attention="krause", neighborhood=nb, top_k=top_k, sigma0=sigma
    )
    x = jnp.asarray(rng.standard_normal((2, 10, 8)), jnp.float32)
    params = perturbed(init(module, x), rng)
    got = module.apply({"params": params}, x)

    q, k, v = projections(params, x, heads)
    s = np.exp(float(params["log_sigma"]))
    scores = -np.sum((q[:, :, None] - k[:, None]) ** 2, -1) / (2 * s**2)  # [B, i, j, H]
    scores = np.where(dense_mask(nb)[None, :, :, None], scores, -np.inf)
    if top_k is not None:
        kth = -np.sort(-scores, axis=2)[:, :, top_k - 1 : top_k]
        scores = np.where(scores >= kth, scores, -np.inf)
    p = np.exp(scores - scores.max(2, keepdims=True))
    p /= p.sum(2, keepdims=True)
    out = np.einsum("bijh,bjhd->bihd", p, v)
    expected = np.einsum("bnhk,hkd->bnd", out, params["out"]["kernel"]) + params["out"]["bias"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_attention_fn_seam_equals_the_module_with_that_sigma(rng):
    """Flax's own module with `attention_fn=krause_attention_fn(sigma=s)` is our module with
    log_sigma = log s: the same parameters give the same outputs."""
    nb = causal_window(9, 4)
    x = jnp.asarray(rng.standard_normal((3, 9, 8)), jnp.float32)
    flax_mha = nn.MultiHeadDotProductAttention(
        num_heads=2, attention_fn=krause_attention_fn(sigma=2.0, neighborhood=nb, top_k=2)
    )
    ours = MultiHeadAttention(num_heads=2, attention="krause", neighborhood=nb, top_k=2, sigma0=2.0)
    params = perturbed(init(flax_mha, x), rng)
    expected = flax_mha.apply({"params": params}, x)
    got = ours.apply({"params": {**params, "log_sigma": jnp.log(2.0)}}, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


class TinyTransformer(nn.Module):
    """A user's small Flax classifier; `attention` builds its self-attention layers."""

    attention: type[nn.Module] | object = nn.MultiHeadDotProductAttention
    attention_kwargs: tuple = ()

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16)(x)
        for i in range(2):
            attention = self.attention(
                num_heads=2, name=f"attention_{i}", **dict(self.attention_kwargs)
            )
            y = attention(nn.LayerNorm()(h))
            h = h + y
            h = h + nn.Dense(16)(nn.gelu(nn.Dense(32)(nn.LayerNorm()(h))))
        return nn.Dense(3)(h.mean(1))


def test_drop_in_swap_into_a_users_flax_transformer_trains(rng):
    """The one-line swap: same parameters as before plus one log_sigma per layer; a few Adam
    steps on a fixed batch lower the loss, and sigma receives gradients."""
    x = jnp.asarray(rng.standard_normal((16, 10, 5)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, 16))
    nb = grid_neighborhood(3, 3, radius=1, num_global=1)
    before = TinyTransformer()
    after = TinyTransformer(
        MultiHeadAttention, (("attention", "krause"), ("neighborhood", nb), ("top_k", 3))
    )
    params_before, params = init(before, x), init(after, x)
    extra = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    extra -= {
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params_before)
    }
    assert sorted(extra) == ["['attention_0']['log_sigma']", "['attention_1']['log_sigma']"]

    tx = optax.adam(1e-2)

    def loss_fn(p):
        logits = after.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss, grads

    opt_state = tx.init(params)
    params, opt_state, first, grads = step(params, opt_state)
    assert float(jnp.abs(grads["attention_0"]["log_sigma"])) > 0
    for _ in range(30):
        params, opt_state, loss, _ = step(params, opt_state)
    assert float(loss) < 0.5 * float(first)


def test_contradictions_are_errors():
    x = jnp.zeros((1, 5, 4))
    nb = causal_window(5, 2)
    cases = [
        (MultiHeadAttention(2, attention="linear"), {}, "causal=True"),
        (MultiHeadAttention(2, neighborhood=nb), {}, "Krause settings"),
        (MultiHeadAttention(2, top_k=2), {}, "Krause settings"),
        (MultiHeadAttention(2, attention="krause", neighborhood=nb), {"mask": True}, "no mask"),
        (MultiHeadAttention(2, attention="krause", neighborhood=nb, causal=True), {}, "causal"),
        (MultiHeadAttention(2, attention="sparse"), {}, "one of"),
        (MultiHeadAttention(3), {}, "not divisible"),
    ]
    for module, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            module.init(jax.random.key(0), x, **kwargs)
    with pytest.raises(ValueError, match=r"fixes the attention.*kvit_t4"):
        get_model("vit_t4", attention="krause")
    with pytest.raises(ValueError, match=r"fixes the attention.*swin_t"):
        get_model("kswin_t", attention="softmax")
    assert get_model("kvit_t4", attention="krause").attention == "krause"  # agreeing is fine

"""Autoregressive pixel models: parameter counts, causality, cached decoding, sampling."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from krause import paper
from krause.attention import KrauseWeights
from krause.attention.decoding import cached_krause_attention
from krause.models.pixel_ar import MODELS
from krause.models.sampling import (
    cached_logits,
    complete,
    image_grid,
    images_to_tokens,
    sample,
    save_image_grid,
    tokens_to_images,
)

TINY = dict(depth=2, width=32, heads=2, image_shape=(4, 5, 1))  # 20 tokens
# name -> overrides. The Krause window is smaller than the length, so the ring buffer wraps.
VARIANTS = {
    "softmax": dict(attention="softmax"),
    "linear": dict(attention="linear"),
    "krause": dict(attention="krause", window=7, top_k=5),
}


def tiny(name: str, **overrides):
    return MODELS["pixel_ar_mnist"](**{**TINY, **VARIANTS[name], **overrides})


def random_params(model, rng: np.random.Generator, scale: float = 0.3):
    """Parameters drawn with NumPy (no compiled init): N(0, scale^2) around the initial values
    (LayerNorm scales 1, sigma 2.5), large enough that attention is far from uniform."""
    dummy = jax.ShapeDtypeStruct((1, model.length), jnp.int32)
    shapes = jax.eval_shape(lambda t: model.init({"params": jax.random.key(0)}, t), dummy)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        base = {"['scale']": 1.0, "['log_sigma']": math.log(2.5)}.get(name, 0.0)
        return jnp.asarray(base + scale * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def random_tokens(model, rng: np.random.Generator, batch: int = 3):
    return jnp.asarray(rng.integers(0, model.vocab_size, (batch, model.length)), jnp.int32)


def seeded(seed: int) -> np.random.Generator:
    """Fixed seeds for the tests that compare sampled tokens exactly: a near-tie of the two
    largest logits (within rounding, ~1e-6) could flip an argmax between two correct
    computations, so those tests use inputs known to have no such tie."""
    return np.random.default_rng(seed)


@functools.cache
def _jitted_apply(model):
    return jax.jit(lambda p, t: model.apply({"params": p}, t))


def forward(model, params, tokens):
    """Full forward pass in evaluation mode, compiled once per model."""
    return _jitted_apply(model)(params, tokens)


PIXEL_ROWS = [
    (f"pixel_ar_{dataset}", attention, paper.result(dataset, row).params)
    for dataset in ("mnist", "cifar10")
    for attention, row in paper.PIXEL_ROWS.items()
]


@pytest.mark.parametrize("name, attention, expected", PIXEL_ROWS)
def test_parameter_counts(name, attention, expected):
    model = MODELS[name](attention=attention)
    tokens = jax.ShapeDtypeStruct((1, model.length), jnp.int32)
    shapes = jax.eval_shape(lambda t: model.init({"params": jax.random.key(0)}, t), tokens)
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected
    sigmas = [p["attn"].get("log_sigma") for k, p in shapes["params"].items() if "blocks" in k]
    if attention == "krause":
        assert all(s.shape == (model.heads,) for s in sigmas) and len(sigmas) == model.depth
    else:
        assert all(s is None for s in sigmas)


def test_initialisation():
    """Real init: sigma 2.5 in every head of every layer, logits near uniform (loss ~ ln 256)."""
    model = tiny("krause")
    tokens = random_tokens(model, seeded(0))
    params = jax.jit(model.init)({"params": jax.random.key(0)}, tokens)["params"]
    for layer in range(model.depth):
        np.testing.assert_allclose(jnp.exp(params[f"blocks_{layer}"]["attn"]["log_sigma"]), 2.5)
    logits = forward(model, params, tokens)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()
    assert abs(float(loss) - math.log(256)) < 0.1


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("softmax", {}),
        ("linear", {}),
        ("krause", {"attention_impl": "blocked"}),  # window 7 < 20 tokens: the ring buffer wraps
        ("krause", {"window": 32, "top_k": 12}),  # window longer than the sequence
        ("krause", {"window": 4, "top_k": None, "attention_impl": "dense"}),
    ],
)
def test_cached_decoding_matches_full_forward(name, overrides, rng):
    model = tiny(name, **overrides)
    params = random_params(model, rng)
    tokens = random_tokens(model, rng)
    full = forward(model, params, tokens)
    assert float(jnp.std(full[:, 1:] - full[:, :1])) > 0.1  # positions differ: a real test
    np.testing.assert_allclose(cached_logits(model, params, tokens), full, rtol=1e-4, atol=1e-4)


def test_cached_krause_decoding_is_accurate_when_keys_share_a_large_offset(rng):
    """q and k biased by the same large vector: distances are unchanged, but the expanded
    2 q.k - ||k||^2 of the decoding cache would lose ~eps * ||k||^2 ~ 0.1 in float32 without
    its centre (the key of position 0)."""
    model = tiny("krause")
    params = random_params(model, rng)
    offset = 100.0 + rng.standard_normal(params["blocks_0"]["attn"]["query"]["bias"].shape)
    for layer in range(model.depth):
        for name in ("query", "key"):  # bias [heads, head_dim]
            attn = params[f"blocks_{layer}"]["attn"]
            attn[name]["bias"] = attn[name]["bias"] + offset
    tokens = random_tokens(model, rng)
    full = forward(model, params, tokens)
    np.testing.assert_allclose(cached_logits(model, params, tokens), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opt_level", [0, 2])
def test_cached_krause_step_keeps_exactly_the_top_k_at_any_xla_optimisation_level(opt_level, rng):
    """float32 decoding step without the argmax guard: every row keeps exactly top_k slots (no
    ties on random inputs) and equals a float64 NumPy Krause step. A threshold computed from
    differently rounded scores than the comparison's would drop the k-th key (or empty a row
    with top_k = 1); at XLA's optimisation level 0 fusions round differently if they can."""
    batch, heads, slots, dim = 3, 4, 16, 8
    q, k, v = (rng.normal(size=(batch, heads, dim)).astype(np.float32) for _ in "qkv")
    key, value = (rng.normal(size=(batch, heads, slots, dim)).astype(np.float32) for _ in "kv")
    valid = np.arange(slots) < 13
    current = np.arange(slots) == 5
    sigma = rng.uniform(0.5, 2.0, size=heads).astype(np.float32)
    for top_k in (1, 4):
        step = jax.jit(
            functools.partial(cached_krause_attention, sigma=sigma, top_k=top_k),
            compiler_options={"xla_backend_optimization_level": opt_level},
        )
        out = step(q, k, v, key, np.sum(key**2, -1), value, valid, current)
        keys = np.where(current[:, None], k[:, :, None].astype(np.float64), key)
        values = np.where(current[:, None], v[:, :, None].astype(np.float64), value)
        scores = -np.sum((q[:, :, None].astype(np.float64) - keys) ** 2, -1)
        scores = np.where(valid, scores / (2.0 * sigma[:, None] ** 2), -np.inf)
        kth = -np.sort(-scores, axis=-1)[..., top_k - 1 : top_k]
        e = np.where(scores >= kth, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
        assert np.all(np.sum(e > 0, -1) == top_k)
        expected = np.einsum("bhs,bhsd->bhd", e / e.sum(-1, keepdims=True), values)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_full_forward_is_causal(name, rng):
    model = tiny(name)
    params = random_params(model, rng)
    tokens = random_tokens(model, rng)
    base = forward(model, params, tokens)
    for j in (0, 6, 13, model.length - 1):
        changed = tokens.at[:, j].set((tokens[:, j] + 97) % 256)
        logits = forward(model, params, changed)
        # Rounding-level differences (~1e-6) are allowed: the matmul-based Krause paths
        # (impl "dense", "blocked") let a later key move earlier outputs by float32 rounding
        # inside XLA's fusions, although their weights on it are exactly zero.
        np.testing.assert_allclose(logits[:, : j + 1], base[:, : j + 1], rtol=0, atol=2e-5)
        if j + 1 < model.length:  # token j is the input that predicts position j + 1
            assert float(jnp.max(jnp.abs(logits[:, j + 1] - base[:, j + 1]))) > 1e-3


def greedy_by_full_passes(model, params, prefix: np.ndarray) -> np.ndarray:
    """Greedy decoding with one full forward pass per position (no cache)."""
    tokens = np.zeros((prefix.shape[0], model.length), np.int32)
    tokens[:, : prefix.shape[1]] = prefix
    for t in range(prefix.shape[1], model.length):
        logits = forward(model, params, jnp.asarray(tokens))
        tokens[:, t] = np.asarray(jnp.argmax(logits[:, t], axis=-1))
    return tokens


@pytest.mark.parametrize("name", list(VARIANTS))
def test_zero_temperature_sampling_is_greedy(name):
    model = tiny(name)
    params = random_params(model, seeded(5))
    expected = greedy_by_full_passes(model, params, np.zeros((3, 0), np.int32))
    for temperature in (0.0, 1e-6):
        tokens = sample(model, params, jax.random.key(6), num_images=3, temperature=temperature)
        assert tokens.shape == (3, model.length) and tokens.dtype == jnp.int32
        np.testing.assert_array_equal(tokens, expected)


def test_sampling_depends_on_rng_and_stays_in_range(rng):
    model = tiny("krause")
    params = random_params(model, rng)
    a = sample(model, {"params": params}, jax.random.key(0), num_images=3)
    b = sample(model, {"params": params}, jax.random.key(1), num_images=3)
    assert not np.array_equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < 256


def test_first_token_follows_the_model_distribution(rng):
    """Position 0 has no input token: its samples must follow softmax(logits[:, 0])."""
    model = tiny("linear", vocab_size=4, image_shape=(1, 3, 1))
    params = random_params(model, rng, scale=1.0)
    probs = np.asarray(jax.nn.softmax(forward(model, params, jnp.zeros((1, 3), jnp.int32))[0, 0]))
    n = 4000
    tokens = np.asarray(sample(model, params, jax.random.key(9), num_images=n))
    freq = np.bincount(tokens[:, 0], minlength=4) / n
    assert np.max(np.abs(freq - probs)) < 5 * math.sqrt(0.25 / n), (freq, probs)  # 5 sigma


def test_completion_keeps_prefix_and_continues_greedily():
    model = tiny("krause")
    params = random_params(model, seeded(10))
    prefix = np.asarray(random_tokens(model, seeded(11), batch=1))[:, :9]
    tokens = complete(model, params, jax.random.key(12), prefix, num_samples=3)
    assert tokens.shape == (1, 3, model.length)
    np.testing.assert_array_equal(tokens[:, :, :9], np.repeat(prefix[:, None], 3, axis=1))
    assert not np.array_equal(tokens[:, 0], tokens[:, 1])  # samples of one image differ
    greedy = complete(model, params, jax.random.key(13), prefix, num_samples=3, temperature=0.0)
    expected = greedy_by_full_passes(model, params, np.repeat(prefix, 3, axis=0))
    np.testing.assert_array_equal(greedy[0], expected)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_train_step_jits_with_finite_gradients(name, rng):
    model = tiny(name)
    tokens = random_tokens(model, rng)
    variables = {"params": random_params(model, rng, scale=0.02)}

    @jax.jit
    def loss_and_grads(params, dropout_key):
        def loss_fn(p):
            logits = model.apply({"params": p}, tokens, train=True, rngs={"dropout": dropout_key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

        return jax.value_and_grad(loss_fn)(params)

    loss, grads = loss_and_grads(variables["params"], jax.random.key(1))
    assert np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    if name == "krause":
        assert float(jnp.abs(grads["blocks_0"]["attn"]["log_sigma"]).sum()) > 0
    _, grads_other_dropout = loss_and_grads(variables["params"], jax.random.key(2))
    assert not np.allclose(grads["head"]["kernel"], grads_other_dropout["head"]["kernel"])


def test_bfloat16_compute_runs(rng):
    model = tiny("krause", dtype=jnp.bfloat16)
    tokens = random_tokens(model, rng, batch=2)
    params = random_params(model, rng)
    logits = forward(model, params, tokens)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert params["blocks_0"]["attn"]["query"]["kernel"].dtype == jnp.float32


@pytest.mark.parametrize("name", list(VARIANTS))
def test_capture_sows_hidden_states_and_weights(name, rng):
    model = tiny(name, capture=True)
    tokens = random_tokens(model, rng, batch=2)
    params = random_params(model, rng)
    apply = jax.jit(lambda p, t: model.apply({"params": p}, t, mutable=["intermediates"]))
    _, state = apply(params, tokens)
    block = state["intermediates"]["blocks_1"]
    assert block["hidden"][0].shape == (2, model.length, model.width)
    weights = block["attn"]["attention_weights"][0]
    if name == "krause":
        assert isinstance(weights, KrauseWeights)
        assert weights.local_values.shape == (2, model.length, model.heads, model.window)
        np.testing.assert_allclose(weights.local_values.sum(-1), 1.0, atol=1e-5)
        assert int(jnp.max(jnp.sum(weights.local_values > 0, axis=-1))) <= model.top_k
    else:
        assert weights.shape == (2, model.heads, model.length, model.length)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-4)
        upper = jnp.triu(jnp.ones((model.length, model.length), bool), 1)
        assert float(jnp.max(jnp.where(upper, jnp.abs(weights), 0))) == 0.0


def test_image_helpers_use_row_column_channel_order(tmp_path, rng):
    images = rng.integers(0, 256, (5, 3, 4, 3), dtype=np.uint8)
    tokens = images_to_tokens(images)
    assert tokens.shape == (5, 36)
    assert tokens[2, (1 * 4 + 2) * 3 + 1] == images[2, 1, 2, 1]
    np.testing.assert_array_equal(tokens_to_images(tokens, (3, 4, 3)), images)
    grid = image_grid(images, columns=2, padding=1)
    assert grid.shape == (3 * 4 + 1, 2 * 5 + 1, 3)
    np.testing.assert_array_equal(grid[1 + 4 : 1 + 4 + 3, 1 + 5 : 1 + 5 + 4], images[3])
    path = save_image_grid(tokens.reshape(5, 1, 36), (3, 4, 3), tmp_path / "grid.png")
    assert np.asarray(Image.open(path)).shape == (5 * 5 + 2, 1 * 6 + 2, 3)  # padding 2
    gray = save_image_grid(tokens[:, :12], (3, 4, 1), tmp_path / "gray.png")
    assert np.asarray(Image.open(gray)).ndim == 2

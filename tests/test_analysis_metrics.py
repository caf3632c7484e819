"""Synchronisation and sink metrics against independent references (loops, known values)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from krause.analysis import metrics
from krause.attention import KrauseWeights
from krause.models import get_model


def union_find_labels(distances: np.ndarray, threshold: float) -> np.ndarray:
    """Connected components of the graph {(i, j): d_ij <= threshold}, by union-find."""
    n = len(distances)
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if distances[i, j] <= threshold:
                parent[root(i)] = root(j)
    return np.array([root(i) for i in range(n)])


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all((a[:, None] == a[None]) == (b[:, None] == b[None])))


def test_single_linkage_matches_union_find(rng):
    for _ in range(5):
        x = rng.normal(size=(int(rng.integers(2, 40)), 3))
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        threshold = float(rng.uniform(0.2, 1.5))
        got = metrics.single_linkage_labels(d, threshold)
        assert same_partition(got, union_find_labels(d, threshold))


def test_num_clusters_of_hand_built_sets(rng):
    dim = 16
    for k in (1, 3, 7):
        directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k]  # orthonormal: cos 0
        labels = rng.integers(0, k, 60)
        labels[:k] = np.arange(k)  # every cluster is used
        scale = rng.uniform(0.5, 5, (60, 1))  # the cosine distance ignores the norm
        tokens = scale * (directions[labels] + 0.01 * rng.normal(size=(60, dim)))
        assert metrics.num_clusters(tokens, 0.05) == k
    assert metrics.num_clusters(np.eye(5), 0.5) == 5  # orthogonal: distance 1
    assert metrics.num_clusters(np.eye(5), 1.0) == 1


def test_mean_pairwise_cosine_known_values_and_loop(rng):
    q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    np.testing.assert_allclose(metrics.mean_pairwise_cosine(q[:5]), 0.0, atol=1e-12)
    row = rng.normal(size=8)
    identical = np.tile(row, (6, 1)) * rng.uniform(0.1, 3, (6, 1))
    np.testing.assert_allclose(metrics.mean_pairwise_cosine(identical), 1.0, atol=1e-12)
    x = rng.normal(size=(3, 7, 5))
    got = metrics.mean_pairwise_cosine(x)
    assert got.shape == (3,)
    for b in range(3):
        cos = [
            x[b, i] @ x[b, j] / np.linalg.norm(x[b, i]) / np.linalg.norm(x[b, j])
            for i in range(7)
            for j in range(7)
            if i != j
        ]
        np.testing.assert_allclose(got[b], np.mean(cos), rtol=1e-12)


def with_singular_values(rng, values, n: int, d: int) -> np.ndarray:
    u = np.linalg.qr(rng.normal(size=(n, n)))[0][:, : len(values)]
    v = np.linalg.qr(rng.normal(size=(d, d)))[0][:, : len(values)]
    return u @ np.diag(values) @ v.T


def test_effective_rank_known_values(rng):
    for r in (1, 2, 5):
        x = with_singular_values(rng, [rng.uniform(0.5, 3)] * r, 12, 9)
        np.testing.assert_allclose(metrics.effective_rank(x), r, rtol=1e-9)
    # Singular values (2, 1, 1): p = (1/2, 1/4, 1/4), entropy 1.5 ln 2, effective rank 2^1.5.
    x = with_singular_values(rng, [2.0, 1.0, 1.0], 10, 6)
    np.testing.assert_allclose(metrics.effective_rank(x), 2**1.5, rtol=1e-9)
    batch = np.stack([with_singular_values(rng, [1.0] * r, 6, 6) for r in (1, 3, 6)])
    np.testing.assert_allclose(metrics.effective_rank(batch), [1, 3, 6], rtol=1e-9)


def test_first_token_mass_matches_loop(rng):
    w = rng.uniform(size=(3, 4, 9, 9))
    w /= w.sum(-1, keepdims=True)
    ref = np.zeros(4)
    for h in range(4):
        values = [w[b, h, i, 0] for b in range(3) for i in range(1, 9)]
        ref[h] = np.mean(values)
    np.testing.assert_allclose(metrics.first_token_mass(w), ref, rtol=1e-12)
    np.testing.assert_allclose(metrics.first_token_mass(w, per_head=False), ref.mean(), rtol=1e-12)


def test_query_attention_grid_matches_loop(rng):
    gh, gw, heads = 3, 4, 2
    w = rng.uniform(size=(heads, 1 + gh * gw, 1 + gh * gw))
    query = int(rng.integers(gh * gw))
    got = metrics.query_attention_grid(w, (gh, gw), query)
    for h in range(heads):
        for r in range(gh):
            for c in range(gw):
                assert got[h, r, c] == w[h, 1 + query, 1 + r * gw + c]


def test_sigma_history_reads_sigma_keys():
    records = [
        {"step": 10, "loss": 1.0, "sigma/block_00/attention": 2.5, "sigma/block_01/attention": 2.4},
        {"step": 20, "accuracy": 0.5},
        {"step": 30, "sigma/block_00/attention": 2.7, "sigma/block_01/attention": 2.2},
    ]
    history = metrics.sigma_history(records)
    assert list(history) == ["block_00/attention", "block_01/attention"]
    assert history["block_00/attention"] == ([10, 30], [2.5, 2.7])
    assert history["block_01/attention"] == ([10, 30], [2.4, 2.2])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: metrics.num_clusters(np.ones((3, 2)), 3.0), "threshold"),
        (lambda: metrics.num_clusters(np.ones((3, 2, 2)), 0.1), r"\[N, D\]"),
        (lambda: metrics.mean_pairwise_cosine(np.ones((1, 4))), "N >= 2"),
        (lambda: metrics.first_token_mass(np.ones((2, 3, 4))), r"\[B, H, N, N\]"),
        (lambda: metrics.single_linkage_labels(np.zeros((2, 3)), 0.1), "square"),
        (lambda: metrics.query_attention_grid(np.ones((2, 5, 5)), (2, 3), 0), "N ="),
    ],
)
def test_bad_inputs_are_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# layer_series on tiny randomly initialised models

TINY_VIT = dict(depth=2, width=32, heads=2, mlp_dim=64)


def sown(intermediates, block: str, name: str):
    """The entry `name` sown by `block` or one of its submodules (the only one)."""
    flat = traverse_util.flatten_dict(intermediates)
    found = [v[0] for k, v in flat.items() if k[0] == block and k[-1] == name]
    assert len(found) == 1, (block, name, list(flat))
    return found[0]


def krause_first_token_mass_loop(w: KrauseWeights) -> np.ndarray:
    """Mass on key 0 per head from the compact weights (not densified), queries 1..N-1."""
    values, indices = np.asarray(w.local_values), np.asarray(w.indices)
    batch, n, heads, _ = values.shape
    mass = np.zeros(heads)
    for h in range(heads):
        total = 0.0
        for b in range(batch):
            for i in range(1, n):
                total += sum(values[b, i, h, s] for s in np.flatnonzero(indices[i] == 0))
        mass[h] = total / (batch * (n - 1))
    return mass


@pytest.mark.parametrize("name", ["vit_t4", "kvit_t4"])
def test_layer_series_of_a_tiny_vit(rng, name):
    model = get_model(name, image_size=16, **TINY_VIT)
    images = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    params = model.init(jax.random.key(int(rng.integers(1 << 30))), images, train=False)["params"]
    series = metrics.layer_series(model, params, images)
    _, state = model.clone(capture=True).apply(
        {"params": params}, images, train=False, mutable=["intermediates"]
    )
    inter = state["intermediates"]
    assert series["names"] == ["embedding", "block_00", "block_01"]
    tokens = [
        inter["embedding"][0],
        sown(inter, "block_00", "hidden"),
        sown(inter, "block_01", "hidden"),
    ]
    for layer, x in enumerate(tokens):
        x = np.asarray(x, np.float64)
        assert series["mean_cosine"][layer] == pytest.approx(
            np.mean(metrics.mean_pairwise_cosine(x)), rel=1e-9
        )
        assert series["effective_rank"][layer] == pytest.approx(
            np.mean(metrics.effective_rank(x)), rel=1e-9
        )
        assert series["clusters"][layer] == np.mean([metrics.num_clusters(t) for t in x])
    for block in range(2):
        w = sown(inter, f"block_{block:02d}", "attention_weights")
        if isinstance(w, KrauseWeights):
            ref = krause_first_token_mass_loop(w)
        else:
            w = np.asarray(w)
            ref = np.array([np.mean(w[:, h, 1:, 0]) for h in range(w.shape[1])])
        np.testing.assert_allclose(series["first_token_mass"][block], ref, rtol=1e-5, atol=1e-7)
        assert series["first_token_mass_mean"][block] == pytest.approx(ref.mean(), rel=1e-5)
    without_cls = metrics.series_from_intermediates(inter, exclude_first_token=True)
    x = np.asarray(sown(inter, "block_01", "hidden"), np.float64)[:, 1:]
    assert without_cls["mean_cosine"][2] == pytest.approx(
        np.mean(metrics.mean_pairwise_cosine(x)), rel=1e-9
    )


@pytest.mark.parametrize("attention", ["softmax", "krause"])
def test_layer_series_of_a_tiny_pixel_model(rng, attention):
    model = get_model(
        "pixel_ar_mnist",
        image_shape=(4, 5, 1),
        depth=2,
        width=32,
        heads=2,
        attention=attention,
        window=8,
        top_k=4,
    )
    tokens = jnp.asarray(rng.integers(0, 256, (2, 20)), jnp.int32)
    params = model.init(jax.random.key(int(rng.integers(1 << 30))), tokens)["params"]
    series = metrics.layer_series(model, params, tokens)
    assert len(series["names"]) == 2  # no embedding sown: one entry per block
    _, state = model.clone(capture=True).apply(
        {"params": params}, tokens, train=False, mutable=["intermediates"]
    )
    dense = [
        metrics.dense_attention_weights(
            state["intermediates"][f"blocks_{i}"]["attn"]["attention_weights"][0]
        )
        for i in range(2)
    ]
    for block, w in enumerate(dense):
        assert w.shape == (2, 2, 20, 20)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        if attention == "krause":  # the window of 8 hides token 0 from queries >= 8
            assert np.all(w[:, :, 8:, 0] == 0)
        ref = [np.mean(w[:, h, 1:, 0]) for h in range(2)]
        np.testing.assert_allclose(series["first_token_mass"][block], ref, rtol=1e-6)


def test_first_key_column_of_compact_krause_weights_matches_loop(rng):
    batch, n, heads, width, g = 2, 7, 3, 4, 1
    indices = rng.integers(-1, n, (n, width)).astype(np.int32)
    indices[:g] = -1
    local = rng.uniform(size=(batch, n, heads, width))
    global_values = rng.uniform(size=(batch, g, heads, n))
    w = KrauseWeights(jnp.asarray(local), jnp.asarray(indices), jnp.asarray(global_values))
    got = metrics.first_key_column(w)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                if i < g:
                    ref = global_values[b, i, h, 0]
                else:
                    ref = sum(local[b, i, h, s] for s in range(width) if indices[i, s] == 0)
                np.testing.assert_allclose(got[b, h, i], ref, rtol=1e-6)
    dense = metrics.dense_attention_weights(w, image=1)
    assert dense.shape == (1, heads, n, n)
    np.testing.assert_allclose(dense[0, :, :, 0], got[1], rtol=1e-6)

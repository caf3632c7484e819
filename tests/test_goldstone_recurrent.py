"""Recurrent Goldstone cells against NumPy references, their equivariance, the copy task data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from krause.goldstone.recurrent import EquivariantGRUCell, EquivariantRNNCell, SequenceModel
from krause.goldstone.recurrent_train import NUM_TOKENS, copy_batch, copy_metrics


def np_radial(x, block):
    b = x.reshape(*x.shape[:-1], -1, block)
    r = np.linalg.norm(b, axis=-1, keepdims=True)
    return (b * np.tanh(r) / (r + 1e-12)).reshape(x.shape)


def np_u1(w1, w2, h):
    z = h[..., 0::2] + 1j * h[..., 1::2]
    out = z @ (w1 - 1j * w2).T
    return np.stack([out.real, out.imag], -1).reshape(h.shape[:-1] + (-1,))


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_gru_cell_matches_numpy_equations(rng):
    width, d = 8, 3
    cell = EquivariantGRUCell("u1", width, sigma=1.5)
    h = rng.normal(size=(4, width)).astype(np.float32)
    x = rng.normal(size=(4, d)).astype(np.float32)
    params = cell.init(jax.random.key(int(rng.integers(1 << 31))), h, x)["params"]
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h64, x64 = h.astype(np.float64), x.astype(np.float64)
    norms = np.linalg.norm(h64.reshape(4, -1, 2), axis=-1)
    inv = np.concatenate([norms, x64], -1)
    z = sigmoid(inv @ p["update_gate"]["kernel"] + p["update_gate"]["bias"])
    r = sigmoid(inv @ p["reset_gate"]["kernel"] + p["reset_gate"]["bias"])
    rec = np_u1(p["recurrent"]["w1"], p["recurrent"]["w2"], np.repeat(r, 2, -1) * h64)
    cand = np_radial(rec + x64 @ p["input"]["kernel"] + p["input"]["bias"], 2)
    expected = (1 - np.repeat(z, 2, -1)) * h64 + np.repeat(z, 2, -1) * cand
    got, _ = cell.apply({"params": params}, h, x)
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the recurrent weights are N(0, std^2) with std = sigma_w / sqrt(N)
    w = np.concatenate([np.ravel(p["recurrent"]["w1"]), np.ravel(p["recurrent"]["w2"])])
    assert w.size == 2 * (width // 2) ** 2


@pytest.mark.parametrize("cls", [EquivariantRNNCell, EquivariantGRUCell])
@pytest.mark.parametrize("group,k", [("u1", None), ("ok", 3)])
def test_recurrent_map_is_equivariant(rng, cls, group, k):
    """With the (generic) input map switched off, h -> cell(h) commutes with the group."""
    width = 12
    cell = cls(group, width, sigma=1.5, k=k)
    h = rng.normal(size=(5, width)).astype(np.float32)
    x = rng.normal(size=(5, 2)).astype(np.float32)
    params = cell.init(jax.random.key(int(rng.integers(1 << 31))), h, x)["params"]
    params = {**params, "input": jax.tree.map(jnp.zeros_like, params["input"])}
    if group == "u1":
        theta = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(theta), np.sin(theta)
        g = np.kron(np.eye(width // 2), np.array([[c, -s], [s, c]]))
    else:
        g = np.kron(np.eye(width // k), scipy.stats.ortho_group.rvs(k, random_state=rng))
    g = g.astype(np.float32)
    f = jax.jit(lambda v: cell.apply({"params": params}, v, x)[0])
    out, out_rotated = np.asarray(f(h)), np.asarray(f(h @ g.T))
    assert np.linalg.norm(out_rotated - out @ g.T) / np.linalg.norm(out) < 1e-6


def test_copy_batch_layout(rng):
    max_delay, batch = 7, 64
    inputs, targets, mask = (
        np.asarray(a)
        for a in copy_batch(jax.random.key(int(rng.integers(1 << 31))), batch, max_delay)
    )
    length = 2 * NUM_TOKENS + max_delay + 1
    assert inputs.shape == (batch, length, 10) and np.all(inputs.sum(-1) == 1)
    ids = inputs.argmax(-1)
    delays = set()
    for row in range(batch):
        marker = int(np.flatnonzero(ids[row] == 9)[0])
        delay = marker - NUM_TOKENS
        delays.add(delay)
        assert 1 <= delay <= max_delay and np.sum(ids[row] == 9) == 1
        assert np.all(ids[row, :NUM_TOKENS] < 8)
        assert np.all(ids[row, NUM_TOKENS:marker] == 8) and np.all(ids[row, marker + 1 :] == 8)
        recall = np.zeros(length, bool)
        recall[marker + 1 : marker + 1 + NUM_TOKENS] = True
        assert np.array_equal(mask[row], recall)
        assert np.array_equal(targets[row, recall], ids[row, :NUM_TOKENS])
    assert len(delays) > 3  # delays vary across the batch


def test_copy_metrics_success_counts_whole_sequences():
    _, targets, mask = copy_batch(jax.random.key(0), 4, 5)
    logits = 10.0 * jax.nn.one_hot(targets, 8)
    assert float(copy_metrics(logits, targets, mask)["success"]) == 1.0
    # one wrong recalled symbol in sequence 0: success 3 / 4
    t = int(np.flatnonzero(np.asarray(mask[0]))[3])
    wrong = logits.at[0, t].set(10.0 * jax.nn.one_hot((targets[0, t] + 1) % 8, 8))
    assert float(copy_metrics(wrong, targets, mask)["success"]) == 0.75
    # errors outside the recall steps do not count
    off = int(np.flatnonzero(~np.asarray(mask[1]))[0])
    noise = logits.at[1, off].set(10.0 * jax.nn.one_hot((targets[1, off] + 1) % 8, 8))
    assert float(copy_metrics(noise, targets, mask)["success"]) == 1.0


def test_bad_recurrent_input():
    xs = jnp.zeros((1, 3, 2))
    with pytest.raises(ValueError, match=r"Unknown cell 'lstm'"):
        SequenceModel("lstm", 8, 2).init(jax.random.key(0), xs)
    with pytest.raises(ValueError, match=r"sigma must be > 0, got 0"):
        SequenceModel("eq_rnn", 8, 2, sigma=0.0).init(jax.random.key(0), xs)
    with pytest.raises(ValueError, match=r"width 9 .*block size 2"):
        SequenceModel("eq_gru", 9, 2).init(jax.random.key(0), xs)
    with pytest.raises(ValueError, match=r"max_delay must be >= 1, got 0"):
        copy_batch(jax.random.key(0), 2, 0)

"""Particle simulation: cluster counts, unit norm, 2-particle and NumPy-loop references."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from krause.analysis import particles
from krause.analysis.particles import ParticleConfig


def clumps_on_sphere(rng, k: int, dim: int, per_clump: int, spread: float) -> np.ndarray:
    """k clumps of unit vectors, centres at least 0.6 rad apart, points within `spread` rad."""
    if dim == 2:
        angles = 2 * np.pi * np.arange(k) / k + rng.uniform(0, 2 * np.pi)
        centres = np.stack([np.cos(angles), np.sin(angles)], -1)
    else:
        centres = []
        while len(centres) < k:
            c = rng.normal(size=3)
            c /= np.linalg.norm(c)
            if all(np.arccos(np.clip(c @ d, -1, 1)) > 0.6 for d in centres):
                centres.append(c)
        centres = np.asarray(centres)
    points = []
    for c in centres:
        noise = rng.normal(size=(per_clump, dim))
        noise -= (noise @ c)[:, None] * c  # tangent directions
        noise *= spread / 2 / np.maximum(np.linalg.norm(noise, axis=-1, keepdims=True), 1e-12)
        p = c + noise * rng.uniform(0, 1, (per_clump, 1))
        points.append(p / np.linalg.norm(p, axis=-1, keepdims=True))
    points = np.concatenate(points)
    return points[rng.permutation(len(points))]


@pytest.mark.parametrize("dim", [2, 3])
def test_count_clusters_finds_hand_built_clumps(rng, dim):
    for k in (1, 2, 5, 8):
        x = clumps_on_sphere(rng, k, dim, per_clump=int(rng.integers(1, 12)), spread=0.02)
        assert particles.count_clusters(x, 0.05) == k
        assert sum(particles.cluster_sizes(x, 0.05)) == len(x)
        # Below the spread of a clump, clumps break apart.
        assert particles.count_clusters(x, 0.0) >= k


def test_count_clusters_uses_the_angle_threshold():
    # Three points on the circle at angles 0, 0.1, 0.3: links of 0.1 and 0.2 rad.
    angles = np.array([0.0, 0.1, 0.3])
    x = np.stack([np.cos(angles), np.sin(angles)], -1)
    assert particles.count_clusters(x, 0.09) == 3
    assert particles.count_clusters(x, 0.15) == 2
    assert particles.count_clusters(x, 0.25) == 1


@pytest.mark.parametrize("dynamics", particles.DYNAMICS)
@pytest.mark.parametrize("dim", [2, 3])
def test_dynamics_keep_unit_norm(rng, dynamics, dim):
    config = ParticleConfig(num_particles=30, steps=40, record_every=10, dt=0.3, radius=0.8)
    x0 = particles.uniform_on_sphere(jax.random.key(int(rng.integers(1 << 30))), 30, dim)
    frames = np.asarray(particles.simulate(x0, dynamics, config))
    assert frames.shape == (5, 30, dim)
    np.testing.assert_allclose(np.linalg.norm(frames, axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(frames[-1], frames[0])  # they moved


def numpy_weights(x: np.ndarray, dynamics: str, config: ParticleConfig) -> np.ndarray:
    """Reference attention matrix, one row at a time, float64."""
    n = len(x)
    a = np.zeros((n, n))
    for i in range(n):
        if dynamics == "softmax":
            s = np.array([config.beta * x[i] @ x[j] for j in range(n)])
            e = np.exp(s - s.max())
            a[i] = e / e.sum()
        else:
            d = np.array([np.linalg.norm(x[i] - x[j]) for j in range(n)])
            inside = [j for j in range(n) if d[j] <= config.radius or j == i]
            inside.sort(key=lambda j: d[j])
            kept = inside[: config.top_k]
            for j in kept:
                a[i, j] = np.exp(-(d[j] ** 2) / (2 * config.sigma**2))
            a[i] /= a[i].sum()
    return a


def numpy_euler(x: np.ndarray, dynamics: str, config: ParticleConfig, steps: int) -> np.ndarray:
    for _ in range(steps):
        v = numpy_weights(x, dynamics, config) @ x
        v = v - np.sum(x * v, axis=-1, keepdims=True) * x
        y = x + config.dt * v
        x = y / np.linalg.norm(y, axis=-1, keepdims=True)
    return x


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("dynamics", particles.DYNAMICS)
def test_two_particles_match_float64_numpy_euler(rng, dynamics):
    config = ParticleConfig(
        num_particles=2,
        dt=0.05,
        steps=20,
        record_every=20,
        beta=2.0,
        sigma=0.7,
        radius=2.0,
        top_k=2,
    )
    x0 = rng.normal(size=(2, 3))
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    got = np.asarray(particles.simulate(x0, dynamics, config))[-1]
    np.testing.assert_allclose(got, numpy_euler(x0, dynamics, config, 20), atol=1e-12)


def test_two_particles_on_the_circle_follow_the_closed_form_step():
    # Softmax, angle theta between the particles: each moves toward the other with speed
    # b sin(theta), b = e^{beta cos theta} / (e^beta + e^{beta cos theta}); one Euler step on the
    # circle turns each by atan(dt * b * sin(theta)).
    beta, dt, theta = 1.5, 0.2, 1.1
    config = ParticleConfig(num_particles=2, dt=dt, steps=1, record_every=1, beta=beta)
    x0 = np.array([[1.0, 0.0], [np.cos(theta), np.sin(theta)]], np.float32)
    x1 = np.asarray(particles.simulate(x0, "softmax", config))[-1]
    b = np.exp(beta * np.cos(theta)) / (np.exp(beta) + np.exp(beta * np.cos(theta)))
    turn = np.arctan(dt * b * np.sin(theta))
    np.testing.assert_allclose(np.arctan2(x1[:, 1], x1[:, 0]), [turn, theta - turn], atol=1e-6)


@pytest.mark.usefixtures("x64")
def test_krause_weights_match_numpy_loop_on_random_points(rng):
    config = ParticleConfig(
        num_particles=40,
        sigma=float(rng.uniform(0.2, 1)),
        radius=float(rng.uniform(0.3, 1.2)),
        top_k=int(rng.integers(1, 8)),
    )
    x = rng.normal(size=(40, 3))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    got = np.asarray(particles.krause_weights(x, config.sigma, config.radius, config.top_k))
    np.testing.assert_allclose(got, numpy_weights(x, "krause", config), atol=1e-12)
    got = np.asarray(particles.softmax_weights(x, 3.0))
    ref = numpy_weights(x, "softmax", dataclasses.replace(config, beta=3.0))
    np.testing.assert_allclose(got, ref, atol=1e-12)


@pytest.mark.parametrize("overrides", [dict(radius=1e-4), dict(top_k=1)])
def test_krause_without_interactions_leaves_particles_fixed(rng, overrides):
    config = ParticleConfig(num_particles=50, steps=20, record_every=10, **overrides)
    x0 = particles.uniform_on_sphere(jax.random.key(int(rng.integers(1 << 30))), 50, 3)
    frames = np.asarray(particles.simulate(x0, "krause", config))
    np.testing.assert_allclose(frames[-1], np.asarray(x0), atol=1e-6)


def test_run_all_records_counts_and_parameters():
    config = ParticleConfig(num_particles=24, steps=50, record_every=10, radius=0.3, top_k=4)
    result = particles.run_all(config, sweeps=False)
    record = result["record"]
    assert set(record["runs"]) == {
        "circle/softmax",
        "circle/krause",
        "sphere/softmax",
        "sphere/krause",
    }
    assert record["config"]["cluster_threshold"] == config.cluster_threshold
    for (geometry, dynamics), frames in result["trajectories"].items():
        run = record["runs"][f"{geometry}/{dynamics}"]
        counts = [particles.count_clusters(f, config.cluster_threshold) for f in frames]
        assert run["clusters_over_time"] == counts
        assert run["final_clusters"] == counts[-1]
        assert len(run["times"]) == len(frames) == 6


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(dt=0.0), "dt"),
        (dict(steps=15, record_every=10), "multiple"),
        (dict(top_k=0), "top_k"),
        (dict(radius=-1.0), "radius"),
    ],
)
def test_bad_config_is_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        particles.simulate(np.ones((3, 2)) / np.sqrt(2), "softmax", ParticleConfig(**overrides))


def test_unknown_dynamics_is_rejected():
    with pytest.raises(ValueError, match="dynamics"):
        particles.simulate(np.ones((3, 2)) / np.sqrt(2), "linear", ParticleConfig())


def test_cross_cluster_weight_closed_form():
    # Two clusters of 3 coincident particles at chord distance d < radius. With top_k = 3 every
    # particle keeps only its own cluster; with top_k = 4 the tie at the 4th score keeps all three
    # of the other cluster, which then gets mass 3e / (3 + 3e), e = exp(-d^2 / (2 sigma^2)).
    angle = 0.4
    p, q = np.array([1.0, 0.0]), np.array([np.cos(angle), np.sin(angle)])
    x = np.stack([p, p, p, q, q, q])
    d = np.linalg.norm(p - q)
    config = ParticleConfig(sigma=0.3, radius=0.5, top_k=3)
    assert particles.max_cross_cluster_weight(x, config) == 0.0
    e = np.exp(-(d**2) / (2 * 0.3**2))
    got = particles.max_cross_cluster_weight(x, dataclasses.replace(config, top_k=4))
    np.testing.assert_allclose(got, 3 * e / (3 + 3 * e), rtol=1e-5)

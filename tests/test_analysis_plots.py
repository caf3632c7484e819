"""Figure functions write readable, non-blank images (their numbers are tested in
test_analysis_metrics.py and test_analysis_particles.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from krause.analysis import plots


def assert_drawn(path, frames: int = 1) -> None:
    with Image.open(path) as image:
        assert image.size[0] > 50 and image.size[1] > 50
        assert getattr(image, "n_frames", 1) == frames
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 1  # not a blank canvas


def random_weights(rng, heads: int, n: int) -> np.ndarray:
    w = rng.uniform(size=(heads, n, n))
    return w / w.sum(-1, keepdims=True)


def fake_series(rng, layers: int) -> dict:
    return {
        "threshold": 0.05,
        "clusters": rng.integers(1, 10, layers).tolist(),
        "mean_cosine": rng.uniform(0, 1, layers).tolist(),
        "effective_rank": rng.uniform(1, 20, layers).tolist(),
        "first_token_mass_mean": rng.uniform(0, 1, layers - 1).tolist(),
    }


def test_attention_maps(rng, tmp_path):
    weights = {
        label: [random_weights(rng, 2, 17) for _ in range(3)] for label in ("softmax", "krause")
    }
    path = plots.attention_maps(weights, (4, 4), 5, tmp_path / "maps.png", layers=[0, 2])
    assert_drawn(path)


def test_synchronisation_and_sink_mass(rng, tmp_path):
    series = {label: [fake_series(rng, 5) for _ in range(3)] for label in ("ViT", "KViT")}
    assert_drawn(plots.synchronisation(series, tmp_path / "sync.png"))
    assert_drawn(plots.sink_mass(series, tmp_path / "sink.png"))


def test_sigma_over_training(rng, tmp_path):
    history = {
        f"block_{i:02d}/attention": ([0, 100, 200], rng.uniform(1, 3, 3).tolist()) for i in range(4)
    }
    assert_drawn(plots.sigma_over_training(history, tmp_path / "sigma.png"))


@pytest.mark.parametrize("dim", [2, 3])
def test_particle_figures(rng, tmp_path, dim):
    frames = rng.normal(size=(12, 20, dim))
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    trajectories = {("g", "softmax"): frames, ("g", "krause"): frames[::-1]}
    times = np.arange(12) * 0.5
    assert_drawn(plots.particle_frames(trajectories, times, tmp_path / "frames.png", num_times=4))
    gif = plots.particle_animation(trajectories, times, tmp_path / "p.gif", num_frames=5)
    assert_drawn(gif, frames=len(plots._frame_indices(12, 5)))


def test_particle_cluster_curves(tmp_path):
    runs = {
        f"circle/{d}": {
            "geometry": "circle",
            "dynamics": d,
            "times": [0.0, 1.0, 2.0, 3.0],
            "clusters_over_time": counts,
        }
        for d, counts in (("softmax", [40, 10, 2, 1]), ("krause", [40, 20, 12, 12]))
    }
    record = {"config": {"cluster_threshold": 0.05}, "runs": runs}
    assert_drawn(plots.particle_cluster_curves(record, tmp_path / "curves.png"))

"""analyse_models on tiny random models: its JSON matches layer_series, its figures are written."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from krause.analysis import metrics, trained
from krause.models import get_model

TINY = dict(image_size=16, depth=2, width=32, heads=2, mlp_dim=64)


@pytest.mark.slow  # ~10 s of CPU: six applications of two tiny models
def test_analyse_models_records_series_and_seed_statistics(rng, tmp_path):
    images = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    runs = {}
    for label, name, seeds in (("ViT", "vit_t4", 2), ("KViT", "kvit_t4", 1)):
        model = get_model(name, **TINY)
        runs[label] = [
            (model, model.init(jax.random.key(s), images, train=False)["params"])
            for s in range(seeds)
        ]
    record = trained.analyse_models(runs, images, tmp_path, grid=(4, 4), query_patch=5)
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["models"].keys() == {"ViT", "KViT"}
    for label, seeds in runs.items():
        for got, (model, params) in zip(saved["models"][label]["seeds"], seeds, strict=True):
            ref = metrics.layer_series(model, params, images)
            for key in ("clusters", "mean_cosine", "effective_rank", "first_token_mass_mean"):
                np.testing.assert_allclose(got[key], ref[key], rtol=1e-6)
    values = np.array([s["mean_cosine"] for s in saved["models"]["ViT"]["seeds"]])
    summary = saved["models"]["ViT"]["summary"]["mean_cosine"]
    np.testing.assert_allclose(summary["mean"], values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(summary["std"], values.std(0, ddof=1), rtol=1e-12)
    assert saved["models"]["KViT"]["summary"]["mean_cosine"]["std"] == [0.0, 0.0, 0.0]
    assert len(record["figures"]) == 3
    for name in ("synchronisation.png", "sinks.png", "attention_maps.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_sigma_figure(tmp_path):
    records = [{"step": s, "sigma/block_00/attention": 2.5 + s / 100} for s in (0, 10, 20)]
    history = trained.sigma_figure(records, tmp_path / "sigma.png")
    assert history == {"block_00/attention": ([0, 10, 20], [2.5, 2.6, 2.7])}
    assert (tmp_path / "sigma.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="sigma"):
        trained.sigma_figure([{"step": 0, "loss": 1.0}], tmp_path / "none.png")

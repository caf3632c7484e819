"""Synchronisation, sink and attention-map analysis of models (trained or not), with figures.

`analyse_models` takes the models and parameters directly (loading trained runs is the caller's
job), so it runs on randomly initialised models as well:

    runs = {"ViT": [(model, params) for each seed], "KViT": [...]}
    analyse_models(runs, images, "results/analysis_fmnist", grid=(7, 7), query_patch=24)

writes synchronisation.png, sinks.png, attention_maps.png (if `grid` is given) and
analysis.json (per model label: one `metrics.layer_series` per seed, and the per-layer mean and
std over seeds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from krause.analysis import metrics, plots


def capture(model: Any, params: Any, inputs: Any, **apply_kwargs) -> Mapping:
    """The "intermediates" collection of `model.clone(capture=True)` on `inputs` (train=False)."""
    kwargs = {"train": False, **apply_kwargs}
    _, state = model.clone(capture=True).apply(
        {"params": params}, inputs, mutable=["intermediates"], **kwargs
    )
    return state["intermediates"]


def _summary(series: Sequence[Mapping]) -> dict[str, Any]:
    out = {}
    for key in ("clusters", "mean_cosine", "effective_rank", "first_token_mass_mean"):
        values = [s[key] for s in series]
        if any(v is None for row in values for v in row):
            continue
        mean, std = metrics.mean_std(values)
        out[key] = {"mean": mean.tolist(), "std": std.tolist()}
    return out


def analyse_models(
    runs: Mapping[str, Sequence[tuple[Any, Any]]],
    inputs: Any,
    out_dir: str | os.PathLike,
    *,
    grid: tuple[int, int] | None = None,
    query_patch: int = 0,
    map_layers: Sequence[int] | None = None,
    map_image: int = 0,
    threshold: float = metrics.DEFAULT_CLUSTER_THRESHOLD,
    exclude_first_token: bool = False,
) -> dict[str, Any]:
    """Per-layer metrics of every (model, params) and their figures.

    Args:
      runs: {model label: [(module, params) per seed]}; modules with a `capture` field.
      inputs: one input batch shared by all models (images [B, H, W, C] or tokens [B, N]).
      out_dir: where the figures and analysis.json go.
      grid: the patch grid (gh, gw) for attention maps (ViTs: CLS is token 0); None: no maps.
      query_patch, map_layers, map_image: the query patch, layers and image of the maps (first
        seed of each label).
      threshold: cosine-distance threshold of the cluster count.
      exclude_first_token: token metrics without token 0 (CLS).

    Returns:
      The analysis.json record.
    """
    if not runs or any(len(seeds) == 0 for seeds in runs.values()):
        raise ValueError(f"runs must map labels to non-empty lists, got {dict(runs)!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series: dict[str, list] = {}
    maps: dict[str, list] = {}
    for label, seeds in runs.items():
        series[label] = []
        for seed, (model, params) in enumerate(seeds):
            intermediates = capture(model, params, inputs)
            series[label].append(
                metrics.series_from_intermediates(intermediates, threshold, exclude_first_token)
            )
            if seed == 0 and grid is not None:
                weights = metrics.captured_layers(intermediates)["weights"]
                maps[label] = [metrics.dense_attention_weights(w, map_image)[0] for w in weights]
    record: dict[str, Any] = {
        "threshold": threshold,
        "exclude_first_token": exclude_first_token,
        "num_inputs": int(np.shape(inputs)[0]),
        "models": {label: {"seeds": s, "summary": _summary(s)} for label, s in series.items()},
        "figures": [
            str(plots.synchronisation(series, out / "synchronisation.png")),
            str(plots.sink_mass(series, out / "sinks.png")),
        ],
    }
    if grid is not None:
        path = plots.attention_maps(maps, grid, query_patch, out / "attention_maps.png", map_layers)
        record["figures"].append(str(path))
        record["attention_maps"] = {"query_patch": query_patch, "image": map_image}
    (out / "analysis.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def sigma_figure(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> dict[str, tuple[list, list]]:
    """Plot the learned sigmas of a run's metrics.jsonl records; returns the history plotted."""
    history = metrics.sigma_history(records)
    if not history:
        raise ValueError("the records hold no 'sigma/...' keys (not a Krause run?).")
    plots.sigma_over_training(history, path)
    return history

"""Figures of the analyses (matplotlib, Agg backend). Every function takes arrays or dicts (no
workdirs) and writes one file, returning its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation

from krause.analysis.metrics import mean_std, query_attention_grid

PathLike = str | os.PathLike
COLOURS = {"softmax": "tab:blue", "krause": "tab:red"}


def _save(fig, path: PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def _colour(label: str, index: int) -> str:
    for key, colour in COLOURS.items():
        if key in label.lower():
            return colour
    return f"C{index}"


# ---------------------------------------------------------------------------------------------
# Particles


def _draw_particles(ax, x: np.ndarray, colour: str, title: str) -> None:
    if x.shape[-1] == 2:
        theta = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(theta), np.sin(theta), color="0.85", lw=0.8)
        ax.scatter(x[:, 0], x[:, 1], s=6, color=colour)
        ax.set_aspect("equal")
        ax.set_xlim(-1.15, 1.15)
        ax.set_ylim(-1.15, 1.15)
        ax.axis("off")
    else:
        ax.scatter(x[:, 0], x[:, 1], x[:, 2], s=4, color=colour, depthshade=True)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_zlim(-1, 1)
        ax.set_box_aspect((1, 1, 1))
        ax.set_axis_off()
    ax.set_title(title, fontsize=8)


def _frame_indices(num_frames: int, count: int) -> list[int]:
    """`count` distinct indices from 0 to num_frames - 1, spaced roughly geometrically."""
    raw = np.unique(np.round(np.geomspace(1, num_frames, count)).astype(int) - 1)
    return sorted({0, *raw.tolist(), num_frames - 1})


def particle_frames(
    trajectories: Mapping[tuple[str, str], np.ndarray],
    times: Sequence[float],
    path: PathLike,
    num_times: int = 5,
) -> Path:
    """Panel: rows (geometry, dynamics), columns a few times.

    Args:
      trajectories: {(geometry, dynamics): frames [F, N, D]} with D = 2 (circle) or 3 (sphere).
      times: [F] the time of each frame.
    """
    keys = list(trajectories)
    num_frames = len(times)
    columns = _frame_indices(num_frames, num_times)
    fig = plt.figure(figsize=(2.0 * len(columns), 2.0 * len(keys)))
    for row, key in enumerate(keys):
        frames = np.asarray(trajectories[key])
        for col, f in enumerate(columns):
            index = row * len(columns) + col + 1
            projection = "3d" if frames.shape[-1] == 3 else None
            ax = fig.add_subplot(len(keys), len(columns), index, projection=projection)
            _draw_particles(
                ax, frames[f], _colour(key[1], row), f"{key[0]} {key[1]} t={times[f]:g}"
            )
    return _save(fig, path)


def particle_cluster_curves(record: Mapping[str, Any], path: PathLike) -> Path:
    """Number of clusters vs time (log-log) for every run of a `particles.json` record."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (name, run) in enumerate(record["runs"].items()):
        style = "-" if run["geometry"] == "circle" else "--"
        times = np.maximum(np.asarray(run["times"]), 1e-1)
        ax.plot(
            times, run["clusters_over_time"], style, color=_colour(run["dynamics"], i), label=name
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time (first point: t=0)")
    ax.set_ylabel(f"clusters (single linkage, {record['config']['cluster_threshold']} rad)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def particle_animation(
    trajectories: Mapping[tuple[str, str], np.ndarray],
    times: Sequence[float],
    path: PathLike,
    num_frames: int = 36,
    fps: int = 6,
) -> Path:
    """Animated GIF (PillowWriter) of all trajectories side by side, geometric time spacing."""
    keys = list(trajectories)
    columns = 2
    rows = int(np.ceil(len(keys) / columns))
    fig = plt.figure(figsize=(2.6 * columns, 2.6 * rows))
    axes = [
        fig.add_subplot(
            rows,
            columns,
            i + 1,
            projection="3d" if np.asarray(trajectories[k]).shape[-1] == 3 else None,
        )
        for i, k in enumerate(keys)
    ]
    indices = _frame_indices(len(times), num_frames)

    def draw(f):
        for i, (ax, key) in enumerate(zip(axes, keys, strict=True)):
            ax.clear()
            label = f"{key[0]} {key[1]} t={times[f]:g}"
            _draw_particles(ax, np.asarray(trajectories[key])[f], _colour(key[1], i), label)
        return axes

    movie = animation.FuncAnimation(fig, draw, frames=indices, blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    movie.save(path, writer=animation.PillowWriter(fps=fps), dpi=75)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Trained models


def attention_maps(
    weights: Mapping[str, Sequence[np.ndarray]],
    grid: tuple[int, int],
    query_patch: int,
    path: PathLike,
    layers: Sequence[int] | None = None,
) -> Path:
    """Per-head attention of one query patch on the patch grid, models side by side.

    Args:
      weights: {model label: per layer dense [H, N, N] weights of one image (CLS = token 0)}.
      grid: (gh, gw) patch grid, N = 1 + gh * gw.
      query_patch: r * gw + c of the query (marked with a cross).
      layers: layer indices to show (default: all).
    """
    labels = list(weights)
    num_layers = len(next(iter(weights.values())))
    layers = list(range(num_layers)) if layers is None else list(layers)
    rows = [(label, h) for label in labels for h in range(np.asarray(weights[label][0]).shape[0])]
    fig, axes = plt.subplots(
        len(rows), len(layers), figsize=(1.6 * len(layers), 1.6 * len(rows)), squeeze=False
    )
    qr, qc = divmod(query_patch, grid[1])
    for r, (label, head) in enumerate(rows):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            maps = query_attention_grid(weights[label][layer], grid, query_patch)
            ax.imshow(maps[head], cmap="viridis", vmin=0)
            ax.plot(qc, qr, "x", color="white", ms=5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layer}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{label}\nhead {head}", fontsize=7)
    return _save(fig, path)


def _series_panel(ax, series: Mapping[str, Sequence[Mapping]], key: str, ylabel: str) -> None:
    for i, (label, seeds) in enumerate(series.items()):
        values = [s[key] for s in seeds]
        mean, std = mean_std(values)
        x = np.arange(len(mean))
        colour = _colour(label, i)
        ax.plot(x, mean, "o-", ms=3, color=colour, label=f"{label} (n={len(values)})")
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def synchronisation(series: Mapping[str, Sequence[Mapping]], path: PathLike) -> Path:
    """Clusters, mean pairwise cosine and effective rank vs layer, mean +- std over seeds.

    Args:
      series: {model label: [one `metrics.layer_series` dict per seed]}; entry 0 of each list is
        the embedding if the model sows it, so the x axis is 0 = embedding, l = block l - 1.
    """
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    first = next(iter(series.values()))[0]
    _series_panel(axes[0], series, "clusters", f"clusters (cosine dist. <= {first['threshold']})")
    _series_panel(axes[1], series, "mean_cosine", "mean pairwise cosine")
    _series_panel(axes[2], series, "effective_rank", "effective rank")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def sink_mass(series: Mapping[str, Sequence[Mapping]], path: PathLike) -> Path:
    """Mean attention mass on the first token vs block, mean +- std over seeds.

    Args:
      series: {model label: [one `metrics.layer_series` dict per seed]} (key
        "first_token_mass_mean", one value per block).
    """
    fig, ax = plt.subplots(figsize=(5, 3.3))
    _series_panel(ax, series, "first_token_mass_mean", "attention mass on token 0")
    ax.set_xlabel("block")
    ax.legend(fontsize=7)
    return _save(fig, path)


def sigma_over_training(history: Mapping[str, tuple[Sequence, Sequence]], path: PathLike) -> Path:
    """Learned sigma of every layer (and head) vs training step.

    Args:
      history: {layer name: (steps, sigmas)} as returned by `metrics.sigma_history`.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    cmap = plt.get_cmap("viridis")
    for i, (name, (steps, sigmas)) in enumerate(history.items()):
        ax.plot(steps, sigmas, color=cmap(i / max(len(history) - 1, 1)), lw=1, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("sigma")
    if len(history) <= 16:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)

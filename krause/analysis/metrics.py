"""Synchronisation and attention-sink metrics of token matrices and attention weights.

Pure functions on arrays (NumPy in, NumPy out; JAX arrays are accepted), plus `layer_series`,
which runs a model with `capture=True` and applies them to every layer's tokens and weights.

Definitions (see docs/analyses.md):
  clusters          connected components of the graph linking tokens whose cosine distance
                    1 - cos(x_i, x_j) is <= threshold (= single-linkage clustering cut at the
                    threshold, scipy.cluster.hierarchy).
  mean cosine       mean of cos(x_i, x_j) over ordered pairs i != j.
  effective rank    Roy & Vetterli (2007): exp(H(p)), p = s / sum(s), s the singular values of the
                    token matrix [N, D] (not centred), H the Shannon entropy in nats.
  first-token mass  mean over queries i >= 1 of the attention probability on key 0 (query 0 is
                    excluded: in a causal model it can only attend to itself, and in a ViT it is
                    the CLS token itself).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

DEFAULT_CLUSTER_THRESHOLD = 0.05  # cosine distance, i.e. an angle of about 18 degrees


def single_linkage_labels(distances: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels [N] (0..C-1) of single-linkage clustering cut at `threshold`.

    Two points share a cluster iff a chain of points joins them with every step's distance
    <= threshold (connected components of the thresholded distance graph).

    Args:
      distances: [N, N] symmetric, non-negative, zero diagonal.
      threshold: the largest distance that still links two points (same unit as `distances`).
    """
    d = np.asarray(distances, np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square [N, N] matrix, got shape {d.shape}.")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}.")
    n = d.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    if n == 1:
        return np.zeros(1, np.int64)
    d = np.maximum((d + d.T) / 2, 0.0)
    np.fill_diagonal(d, 0.0)
    tree = hierarchy.linkage(squareform(d, checks=False), method="single")
    labels = hierarchy.fcluster(tree, t=threshold, criterion="distance")
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def cosine_distances(tokens: np.ndarray) -> np.ndarray:
    """1 - cos(x_i, x_j): tokens [N, D] -> [N, N] in [0, 2] (float64; zero rows count as 1e-12)."""
    x = np.asarray(tokens, np.float64)
    if x.ndim != 2:
        raise ValueError(f"tokens must be [N, D], got shape {x.shape}.")
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return np.clip(1.0 - x @ x.T, 0.0, 2.0)


def num_clusters(tokens: np.ndarray, threshold: float = DEFAULT_CLUSTER_THRESHOLD) -> int:
    """Number of token clusters: single linkage on cosine distance, cut at `threshold`.

    Args:
      tokens: [N, D] one token matrix (one image / sequence).
      threshold: cosine distance 1 - cos in [0, 2]; tokens closer than this (through a chain)
        are one cluster. 0.05 is an angle of about 18 degrees.
    """
    if not 0 <= threshold <= 2:
        raise ValueError(f"threshold is a cosine distance in [0, 2], got {threshold!r}.")
    return int(single_linkage_labels(cosine_distances(tokens), threshold).max(initial=-1) + 1)


def mean_pairwise_cosine(tokens: np.ndarray) -> np.ndarray:
    """Mean cosine similarity over ordered pairs i != j.

    Args:
      tokens: [..., N, D] with N >= 2.

    Returns:
      [...] (a 0-d array for a single matrix).
    """
    x = np.asarray(tokens, np.float64)
    if x.ndim < 2 or x.shape[-2] < 2:
        raise ValueError(f"tokens must be [..., N, D] with N >= 2, got shape {x.shape}.")
    n = x.shape[-2]
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    total = np.square(x.sum(axis=-2)).sum(axis=-1)  # sum over all i, j of cos(x_i, x_j)
    diagonal = np.square(x).sum(axis=(-2, -1))  # n, or fewer for zero rows
    return (total - diagonal) / (n * (n - 1))


def effective_rank(tokens: np.ndarray) -> np.ndarray:
    """Roy & Vetterli effective rank exp(-sum p log p), p = normalised singular values.

    Args:
      tokens: [..., N, D] (not centred).

    Returns:
      [...] in [1, min(N, D)]; NaN for an all-zero matrix.
    """
    x = np.asarray(tokens, np.float64)
    if x.ndim < 2:
        raise ValueError(f"tokens must be [..., N, D], got shape {x.shape}.")
    s = np.linalg.svd(x, compute_uv=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = s / s.sum(axis=-1, keepdims=True)
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return np.exp(entropy)


def first_token_mass(weights: np.ndarray, per_head: bool = True) -> np.ndarray:
    """Mean attention probability that queries 1..N-1 put on key 0 (the CLS / first pixel).

    Args:
      weights: [B, H, N, N] attention probabilities (rows sum to 1), N >= 2.
      per_head: True -> [H] (mean over batch and queries); False -> scalar (also over heads).
    """
    w = np.asarray(weights)
    if w.ndim != 4 or w.shape[-1] != w.shape[-2] or w.shape[-1] < 2:
        raise ValueError(f"weights must be [B, H, N, N] with N >= 2, got shape {w.shape}.")
    mass = w[:, :, 1:, 0].astype(np.float64)  # [B, H, N-1]
    return mass.mean(axis=(0, 2)) if per_head else mass.mean()


# ---------------------------------------------------------------------------------------------
# Per-layer series from a model's captured intermediates.


def _natural_key(path: tuple[str, ...]) -> tuple:
    return tuple(
        tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))
        for name in path
    )


def _collect(tree: Mapping, name: str, prefix: tuple[str, ...] = ()) -> list:
    """(path, value) of every entry `name` in a nested intermediates dict, in natural path order."""
    found = []
    for key, value in tree.items():
        path = (*prefix, str(key))
        if key == name:
            found.append((prefix, value[0] if isinstance(value, tuple) else value))
        elif isinstance(value, Mapping):
            found.extend(_collect(value, name, path))
    return sorted(found, key=lambda item: _natural_key(item[0]))


def dense_attention_weights(weights: Any, image: int | None = None) -> np.ndarray:
    """A captured `attention_weights` entry -> dense [B, H, N, N] NumPy array.

    Accepts a dense array or a `krause.attention.KrauseWeights` (densified). With `image`, only
    that batch entry is densified: [1, H, N, N].
    """
    from krause.attention import KrauseWeights, densify_weights

    if isinstance(weights, KrauseWeights):
        if image is not None:
            weights = KrauseWeights(
                weights.local_values[image : image + 1],
                weights.indices,
                weights.global_values[image : image + 1],
            )
        return np.asarray(densify_weights(weights))
    weights = np.asarray(weights)
    return weights if image is None else weights[image : image + 1]


def first_key_column(weights: Any) -> np.ndarray:
    """Attention probability of every query on key 0: [B, H, N] (float64), without densifying.

    Args:
      weights: dense [B, H, N, N] or a `krause.attention.KrauseWeights`.
    """
    from krause.attention import KrauseWeights

    if not isinstance(weights, KrauseWeights):
        return np.asarray(weights)[..., 0].astype(np.float64)
    values = np.asarray(weights.local_values, np.float64)  # [B, N, H, W]
    hits = np.asarray(weights.indices) == 0  # [N, W]
    column = np.einsum("bnhw,nw->bhn", values, hits.astype(np.float64))
    g = weights.global_values.shape[1]
    column[:, :, :g] = np.moveaxis(np.asarray(weights.global_values, np.float64)[..., 0], 1, 2)
    return column


def captured_layers(intermediates: Mapping) -> dict[str, list]:
    """Tokens and attention weights per layer from a model's "intermediates" collection.

    Returns:
      {"tokens": [embedding (if sown), hidden of layer 0, ...] each [B, N, D] (grids such as
       Swin's [B, H, W, C] are flattened to [B, H*W, C]),
       "weights": [the sown weights of layer 0 (dense [B, H, N, N] or `KrauseWeights`), ...]
        (None where a layer sowed none; `dense_attention_weights` densifies),
       "names": ["embedding", path of layer 0, ...]}.
    """
    hidden = _collect(intermediates, "hidden")
    weights = dict((path, value) for path, value in _collect(intermediates, "attention_weights"))
    if not hidden:
        raise ValueError(
            "no 'hidden' entries in the intermediates; apply the model with capture=True and "
            "mutable=['intermediates']."
        )
    tokens, names = [], []
    embedding = _collect(intermediates, "embedding")
    if embedding:
        tokens.append(embedding[0][1])
        names.append("embedding")
    layer_weights = []
    for path, value in hidden:
        tokens.append(value)
        names.append("/".join(path))
        # The attention weights of a layer are sown by the block or by its attention submodule.
        match = [w for p, w in weights.items() if p[: len(path)] == path]
        layer_weights.append(match[0] if match else None)
    tokens = [np.asarray(t).reshape(t.shape[0], -1, t.shape[-1]) for t in tokens]
    return {"tokens": tokens, "weights": layer_weights, "names": names}


def token_metrics(
    tokens: np.ndarray, threshold: float = DEFAULT_CLUSTER_THRESHOLD
) -> dict[str, float]:
    """Batch means of the synchronisation metrics of tokens [B, N, D]."""
    x = np.asarray(tokens, np.float64)
    if x.ndim != 3:
        raise ValueError(f"tokens must be [B, N, D], got shape {x.shape}.")
    return {
        "clusters": float(np.mean([num_clusters(t, threshold) for t in x])),
        "mean_cosine": float(np.mean(mean_pairwise_cosine(x))),
        "effective_rank": float(np.mean(effective_rank(x))),
    }


def layer_series(
    model: Any,
    params: Any,
    inputs: Any,
    *,
    threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    exclude_first_token: bool = False,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-layer synchronisation and sink metrics of `model` on `inputs` (batch means).

    Applies `model.clone(capture=True)` with `mutable=["intermediates"]` and `train=False`.

    Args:
      model: a Flax module with a `capture` field that sows "hidden" per block (and
        "attention_weights", and optionally "embedding"), e.g. ViT / KViT or PixelAR.
      params: the model's "params" collection.
      inputs: the model's input batch (images [B, H, W, C] or tokens [B, N]).
      threshold: cosine-distance threshold of `num_clusters`.
      exclude_first_token: compute the token metrics without token 0 (e.g. the CLS token).
      apply_kwargs: extra keyword arguments of `model.apply` (default {"train": False}).

    Returns:
      {"names": [L'] layer names ("embedding" first if the model sows it),
       "clusters", "mean_cosine", "effective_rank": [L'] lists (token metrics per entry of
       names), "first_token_mass": [L] lists of [H] per block (None where no weights were sown),
       "first_token_mass_mean": [L] mean over heads, "threshold": threshold}.
    """
    kwargs = {"train": False, **(apply_kwargs or {})}
    _, state = model.clone(capture=True).apply(
        {"params": params}, inputs, mutable=["intermediates"], **kwargs
    )
    return series_from_intermediates(state["intermediates"], threshold, exclude_first_token)


def series_from_intermediates(
    intermediates: Mapping,
    threshold: float = DEFAULT_CLUSTER_THRESHOLD,
    exclude_first_token: bool = False,
) -> dict[str, Any]:
    """`layer_series` of an already captured "intermediates" collection (same return value)."""
    layers = captured_layers(intermediates)
    series: dict[str, Any] = {"names": layers["names"], "threshold": threshold}
    per_layer = [
        token_metrics(t[:, 1:] if exclude_first_token else t, threshold) for t in layers["tokens"]
    ]
    for key in ("clusters", "mean_cosine", "effective_rank"):
        series[key] = [m[key] for m in per_layer]
    columns = [None if w is None else first_key_column(w) for w in layers["weights"]]
    mass = [None if c is None else c[:, :, 1:].mean(axis=(0, 2)) for c in columns]
    series["first_token_mass"] = [None if m is None else m.tolist() for m in mass]
    series["first_token_mass_mean"] = [None if m is None else float(m.mean()) for m in mass]
    return series


def mean_std(series: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean and standard deviation (ddof=1 if >= 2 seeds, else 0) of [seeds][L] values."""
    values = np.asarray(series, np.float64)
    if values.ndim != 2:
        raise ValueError(f"series must be [seeds][layers], got shape {values.shape}.")
    std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1])
    return values.mean(axis=0), std


def query_attention_grid(
    weights: np.ndarray, grid: tuple[int, int], query_patch: int, num_global: int = 1
) -> np.ndarray:
    """One query patch's attention over the patch grid, per head.

    Args:
      weights: [H, N, N] dense attention probabilities of one image, N = num_global + gh * gw
        (token num_global + r * gw + c is patch (r, c); the CLS token is token 0).
      grid: (gh, gw) patch grid.
      query_patch: the query's patch index r * gw + c.
      num_global: tokens before the patches (1: CLS).

    Returns:
      [H, gh, gw]: weights[h, num_global + query_patch, num_global + r * gw + c].
    """
    w = np.asarray(weights)
    gh, gw = grid
    if w.ndim != 3 or w.shape[1] != w.shape[2] or w.shape[1] != num_global + gh * gw:
        raise ValueError(
            f"weights must be [H, N, N] with N = {num_global} + {gh}*{gw}, got shape {w.shape}."
        )
    if not 0 <= query_patch < gh * gw:
        raise ValueError(f"query_patch must be in [0, {gh * gw}), got {query_patch!r}.")
    return w[:, num_global + query_patch, num_global:].reshape(w.shape[0], gh, gw)


def sigma_history(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list, list]]:
    """Learned widths over training from metrics.jsonl records (`krause.metrics.read_metrics`).

    Returns:
      {"<layer path>[/head_h]": (steps, sigmas)} for every key "sigma/<...>" in the records,
      in the order the layers first appear.
    """
    history: dict[str, tuple[list, list]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith("sigma/"):
                steps, values = history.setdefault(key.removeprefix("sigma/"), ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    return history

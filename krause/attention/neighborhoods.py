"""Neighbourhoods: which keys each query may attend to, as static, hashable data.

Token layout. A sequence of `length` tokens; for grids the first `num_global` tokens are global
(e.g. CLS) and patch (r, c) of an `height x width` grid is token `num_global + r * width + c`.

Every neighbourhood answers three questions, all with NumPy (they are static under `jit`):
  * `mask()`            -> bool [length, length], `mask[i, j]` iff key j is in N(i) (small N only);
  * `index_table()`     -> int32 [length, width], the keys of N(i) as slots, -1 for unused slots;
                           rows of "global queries" (see below) are all -1;
  * `num_global_queries`: the first queries that see *every* key (CLS rows); they are handled
                           densely in O(length) each instead of through the table.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np

Metric = Literal["manhattan", "chebyshev"]
METRICS = ("manhattan", "chebyshev")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class GridNeighborhood:
    """Patches on a `height x width` grid see a clipped window of `radius`, plus the global tokens.

    Global tokens (the first `num_global`) see every token. Windows clip at the borders (no
    wrap-around, no shifting), so border patches have fewer neighbours.
    """

    height: int
    width: int
    radius: int = 1
    metric: Metric = "manhattan"
    num_global: int = 1

    @property
    def length(self) -> int:
        return self.num_global + self.height * self.width

    @property
    def num_global_queries(self) -> int:
        return self.num_global

    @property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """Window offsets (dr, dc) in row-major order; (0, 0) is always included."""
        r = self.radius
        within = (
            (lambda dr, dc: abs(dr) + abs(dc) <= r)
            if self.metric == "manhattan"
            else (lambda dr, dc: max(abs(dr), abs(dc)) <= r)
        )
        rng = range(-r, r + 1)
        return tuple((dr, dc) for dr in rng for dc in rng if within(dr, dc))

    def describe(self) -> str:
        return (
            f"{self.height}x{self.width} grid (radius {self.radius} {self.metric}) "
            f"+ {self.num_global} global"
        )


@dataclasses.dataclass(frozen=True)
class CausalWindow:
    """Position i sees the `window` most recent positions including itself: j in (i - window, i]."""

    length: int
    window: int

    @property
    def num_global_queries(self) -> int:
        return 0

    def describe(self) -> str:
        return f"causal window {self.window} over {self.length} tokens"


@dataclasses.dataclass(frozen=True)
class Full:
    """Every query sees every key (no locality)."""

    length: int

    @property
    def num_global_queries(self) -> int:
        return self.length

    def describe(self) -> str:
        return f"full attention over {self.length} tokens"


Neighborhood = GridNeighborhood | CausalWindow | Full


def grid_neighborhood(
    height: int,
    width: int,
    radius: int = 1,
    metric: Metric = "manhattan",
    num_global: int = 1,
) -> GridNeighborhood:
    """Local window on a patch grid plus global tokens (first in the sequence).

    Args:
      height, width: grid size in patches (>= 1).
      radius: window radius in patches (>= 0); radius 0 keeps only the patch itself.
      metric: "manhattan" (radius 1 = the 4 von-Neumann neighbours) or "chebyshev"
        (radius 2 = a 5x5 square).
      num_global: number of global tokens (>= 0) placed before the patches.
    """
    _check_int("height", height, 1)
    _check_int("width", width, 1)
    _check_int("radius", radius, 0)
    _check_int("num_global", num_global, 0)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    return GridNeighborhood(int(height), int(width), int(radius), metric, int(num_global))


def causal_window(length: int, window: int) -> CausalWindow:
    """Sliding causal window: position i sees (i - window, i]; `window` may exceed `length`."""
    _check_int("length", length, 1)
    _check_int("window", window, 1)
    return CausalWindow(int(length), int(window))


def full(length: int) -> Full:
    """All-to-all neighbourhood (RBF attention without locality)."""
    _check_int("length", length, 1)
    return Full(int(length))


def causal(length: int) -> CausalWindow:
    """Plain causal neighbourhood: position i sees every j <= i."""
    _check_int("length", length, 1)
    return CausalWindow(int(length), int(length))


@functools.lru_cache(maxsize=64)
def index_table(nb: Neighborhood) -> np.ndarray:
    """Neighbour slots, int32 [length, width]; -1 marks unused slots and global-query rows.

    Slot order: grids put the global keys first, then the window offsets in `nb.offsets` order;
    causal windows order keys oldest first (slot s of query i is key i - window + 1 + s).
    """
    if isinstance(nb, GridNeighborhood):
        g, h, w = nb.num_global, nb.height, nb.width
        rows, cols = np.divmod(np.arange(h * w), w)
        slots = [np.broadcast_to(np.arange(g)[None, :], (h * w, g))]
        for dr, dc in nb.offsets:
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            slots.append(np.where(inside, g + r * w + c, -1)[:, None])
        table = np.concatenate(slots, axis=1)
        return np.concatenate([np.full((g, table.shape[1]), -1), table]).astype(np.int32)
    if isinstance(nb, CausalWindow):
        width = min(nb.window, nb.length)
        keys = np.arange(nb.length)[:, None] - width + 1 + np.arange(width)[None, :]
        return np.where(keys >= 0, keys, -1).astype(np.int32)
    if isinstance(nb, Full):
        return np.full((nb.length, 0), -1, np.int32)
    raise TypeError(f"not a neighbourhood: {nb!r}")


@functools.lru_cache(maxsize=64)
def dense_mask(nb: Neighborhood) -> np.ndarray:
    """bool [length, length]: mask[i, j] iff key j is in N(i). O(length^2): small N only."""
    n = nb.length
    mask = np.zeros((n, n), bool)
    table = index_table(nb)
    rows = np.repeat(np.arange(n), table.shape[1])
    keys = table.reshape(-1)
    mask[rows[keys >= 0], keys[keys >= 0]] = True
    mask[: nb.num_global_queries] = True
    return mask


def max_neighbors(nb: Neighborhood) -> int:
    """Largest |N(i)| over all queries (top-k at or above this keeps everything)."""
    if nb.num_global_queries > 0:
        return nb.length
    return int(np.max(np.sum(index_table(nb) >= 0, axis=1)))

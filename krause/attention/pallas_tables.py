"""Static block tables of the Pallas Krause kernel (NumPy, computed once per neighbourhood).

The kernel works on the *local* tokens only: for a grid the patches (token t >= num_global is
local token t - num_global, raster order), for a causal window every token. Global keys are one
extra key block that every patch query visits; global queries are dense rows outside the kernel.

Query block b holds local queries [b C_q, (b + 1) C_q); key block c holds local keys
[c C_k, (c + 1) C_k). The forward table lists, per query block, exactly the key blocks that hold
at least one neighbour of one of its queries (for a grid in raster order that is a contiguous
range of key rows; for a causal window W the ~W / C_k trailing blocks). The transposed table
lists, per key block, the query blocks that visit it (the backward pass for dk, dv).
Rows are padded to a common width with the row's last entry and a count says how many are real.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from krause.attention.neighborhoods import (
    CausalWindow,
    GridNeighborhood,
    Neighborhood,
    index_table,
)


def num_local(nb: Neighborhood) -> int:
    """Number of local (non-global) tokens."""
    if isinstance(nb, GridNeighborhood):
        return nb.height * nb.width
    return nb.length


def num_global_keys(nb: Neighborhood) -> int:
    return nb.num_global if isinstance(nb, GridNeighborhood) else 0


@functools.lru_cache(maxsize=64)
def local_neighbor_table(nb: Neighborhood) -> np.ndarray:
    """int32 [num_local, w]: local key indices of each local query's local neighbours, -1 unused.

    The global keys (which every patch sees) are not listed.
    """
    table = index_table(nb)
    g = num_global_keys(nb)
    local = table[g:, g:]
    return np.where(local >= 0, local - g, -1).astype(np.int32)


def _pad_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows -> (int32 [len(rows), width] padded with each row's last entry, counts)."""
    counts = np.array([len(r) for r in rows], np.int32)
    width = max(1, int(counts.max(initial=0)))
    table = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        if len(r):
            table[i, : len(r)] = r
            table[i, len(r) :] = r[-1]
    return table, counts


@functools.lru_cache(maxsize=64)
def block_tables(
    nb: Neighborhood, block_q: int, block_k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward and transposed block tables.

    Returns:
      table:    int32 [query blocks, T]: key blocks visited by each query block, ascending.
      counts:   int32 [query blocks]: how many entries of each row of `table` are real.
      table_t:  int32 [key blocks, T']: query blocks that visit each key block, ascending.
      counts_t: int32 [key blocks].
    """
    n = num_local(nb)
    neighbors = local_neighbor_table(nb)
    queries = np.repeat(np.arange(n), neighbors.shape[1])
    keys = neighbors.reshape(-1)
    used = keys >= 0
    pairs = np.unique(np.stack([queries[used] // block_q, keys[used] // block_k], axis=1), axis=0)
    q_blocks, k_blocks = math.ceil(n / block_q), math.ceil(n / block_k)
    rows = [pairs[pairs[:, 0] == b, 1] for b in range(q_blocks)]
    cols = [pairs[pairs[:, 1] == c, 0] for c in range(k_blocks)]
    table, counts = _pad_rows(rows)
    table_t, counts_t = _pad_rows(cols)
    return table, counts, table_t, counts_t


def supported(nb: Neighborhood) -> bool:
    return isinstance(nb, GridNeighborhood | CausalWindow)

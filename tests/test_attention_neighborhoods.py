"""Neighbourhood helpers against independent constructions (pure NumPy, no compilation)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import krause.attention as ka

SETTINGS = settings(max_examples=40, deadline=None, database=None)


def grid_mask_by_coordinates(height, width, radius, metric, num_global):
    """Broadcast construction: patch p = (p // width, p % width); globals see / are seen by all."""
    rows, cols = np.divmod(np.arange(height * width), width)
    dr = np.abs(rows[:, None] - rows[None, :])
    dc = np.abs(cols[:, None] - cols[None, :])
    dist = dr + dc if metric == "manhattan" else np.maximum(dr, dc)
    n = num_global + height * width
    mask = np.ones((n, n), bool)
    mask[num_global:, num_global:] = dist <= radius
    return mask


@SETTINGS
@given(
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    radius=st.integers(0, 5),
    metric=st.sampled_from(["manhattan", "chebyshev"]),
    num_global=st.integers(0, 2),
)
def test_grid_mask_equals_independent_construction(height, width, radius, metric, num_global):
    nb = ka.grid_neighborhood(height, width, radius, metric, num_global)
    assert isinstance(nb, ka.GridNeighborhood)
    assert nb.length == num_global + height * width
    assert nb.num_global_queries == num_global
    expected = grid_mask_by_coordinates(height, width, radius, metric, num_global)
    mask = ka.dense_mask(nb)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)
    # "top-k at or above this keeps everything": an upper bound on every |N(i)|.
    assert ka.max_neighbors(nb) >= expected.sum(-1).max()


@pytest.mark.parametrize(
    ("nb", "largest"),
    [
        (ka.grid_neighborhood(1, 1, 1, "manhattan", 0), 1),
        (ka.grid_neighborhood(2, 2, 2, "chebyshev", 0), 4),
        (ka.grid_neighborhood(8, 8, 1, "manhattan", 0), 5),
        (ka.grid_neighborhood(3, 3, 1, "manhattan", 1), 10),
    ],
)
def test_max_neighbors_is_the_largest_neighbourhood(nb, largest):
    """Documented as "Largest |N(i)| over all queries"."""
    assert ka.max_neighbors(nb) == largest


def test_grid_mask_examples_from_the_spec():
    # CIFAR: 8x8 grid, von Neumann radius 1 + CLS: interior patch sees 5 patches + CLS.
    mask = ka.dense_mask(ka.grid_neighborhood(8, 8, 1, "manhattan", 1))
    assert mask.shape == (65, 65)
    patch = lambda r, c: 1 + 8 * r + c
    assert set(np.flatnonzero(mask[patch(3, 4)])) == {
        0,
        patch(3, 4),
        patch(2, 4),
        patch(4, 4),
        patch(3, 3),
        patch(3, 5),
    }
    assert set(np.flatnonzero(mask[patch(0, 0)])) == {0, patch(0, 0), patch(1, 0), patch(0, 1)}
    assert mask[0].all() and mask[:, 0].all()
    # ImageNet: 14x14 grid, Chebyshev radius 2: 5x5 window, clipped (not shifted) at borders.
    mask = ka.dense_mask(ka.grid_neighborhood(14, 14, 2, "chebyshev", 1))
    counts = mask[1:].sum(-1) - 1  # minus CLS
    assert counts.reshape(14, 14)[5, 5] == 25
    assert counts.reshape(14, 14)[0, 0] == 9
    assert counts.reshape(14, 14)[0, 5] == 15


@SETTINGS
@given(length=st.integers(1, 40), window=st.integers(1, 50))
def test_causal_window_mask_is_j_in_i_minus_w_to_i(length, window):
    nb = ka.causal_window(length, window)
    assert isinstance(nb, ka.CausalWindow)
    assert nb.num_global_queries == 0
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    expected = (j <= i) & (j > i - window)
    np.testing.assert_array_equal(ka.dense_mask(nb), expected)
    assert ka.max_neighbors(nb) == min(window, length)


@pytest.mark.parametrize("length", [1, 2, 7, 30])
def test_full_and_causal(length):
    nb = ka.full(length)
    assert isinstance(nb, ka.Full)
    np.testing.assert_array_equal(ka.dense_mask(nb), np.ones((length, length), bool))
    assert nb.num_global_queries == length and ka.max_neighbors(nb) == length
    nb = ka.causal(length)
    assert isinstance(nb, ka.CausalWindow)
    np.testing.assert_array_equal(ka.dense_mask(nb), np.tril(np.ones((length, length), bool)))


@SETTINGS
@given(
    kind=st.sampled_from(["grid", "causal", "full"]),
    a=st.integers(1, 6),
    b=st.integers(1, 12),
    radius=st.integers(0, 3),
    metric=st.sampled_from(["manhattan", "chebyshev"]),
    num_global=st.integers(0, 2),
)
def test_index_table_lists_exactly_the_neighbourhood(kind, a, b, radius, metric, num_global):
    if kind == "grid":
        nb = ka.grid_neighborhood(a, b, radius, metric, num_global)
        expected = grid_mask_by_coordinates(a, b, radius, metric, num_global)
    elif kind == "causal":
        nb = ka.causal_window(a * b, radius + 1)
        i, j = np.arange(a * b)[:, None], np.arange(a * b)[None, :]
        expected = (j <= i) & (j > i - radius - 1)
    else:
        nb = ka.full(a * b)
        expected = np.ones((a * b, a * b), bool)
    table = ka.index_table(nb)
    assert table.dtype == np.int32 and table.shape[0] == nb.length
    g = nb.num_global_queries
    assert np.all(table[:g] == -1)
    assert np.all(table >= -1) and np.all(table < nb.length)
    for i in range(g, nb.length):
        slots = table[i][table[i] >= 0]
        assert len(set(slots)) == len(slots), "duplicate key in a row"
        assert set(slots) == set(np.flatnonzero(expected[i])), i


@pytest.mark.parametrize(("length", "window"), [(10, 3), (5, 8), (6, 6)])
def test_causal_index_table_is_oldest_first(length, window):
    table = ka.index_table(ka.causal_window(length, window))
    width = min(length, window)
    assert table.shape == (length, width)
    for i in range(length):
        for s in range(width):
            key = i - width + 1 + s
            assert table[i, s] == (key if key >= 0 else -1)


def test_grid_index_table_slot_order():
    """Global keys first, then the window offsets in `offsets` order; (0, 0) is an offset."""
    nb = ka.grid_neighborhood(3, 4, 1, "chebyshev", 2)
    assert (0, 0) in nb.offsets and len(nb.offsets) == 9
    table = ka.index_table(nb)
    for p in range(12):
        r, c = divmod(p, 4)
        row = table[2 + p]
        np.testing.assert_array_equal(row[:2], [0, 1])
        for (dr, dc), key in zip(nb.offsets, row[2:], strict=True):
            inside = 0 <= r + dr < 3 and 0 <= c + dc < 4
            assert key == (2 + (r + dr) * 4 + c + dc if inside else -1)


def test_neighbourhoods_are_hashable_static_values():
    assert ka.grid_neighborhood(2, 3) == ka.grid_neighborhood(2, 3)
    assert hash(ka.causal_window(5, 2)) == hash(ka.causal_window(5, 2))
    assert ka.causal(7) == ka.causal_window(7, 7)


@pytest.mark.parametrize(
    "nb",
    [
        ka.grid_neighborhood(8, 8, 1),
        ka.grid_neighborhood(32, 32, 1),
        ka.grid_neighborhood(64, 64, 2, "chebyshev", 0),
        ka.causal_window(100, 16),
        ka.causal_window(2048, 16),
        ka.causal_window(3072, 256),
        ka.causal(1000),
        ka.full(500),
    ],
    ids=lambda nb: nb.describe(),
)
def test_auto_resolution(nb):
    """auto picks an implementation that supports the neighbourhood, never the O(N^2 d) oracle,
    and an O(N w) one when N is much larger than the window."""
    allowed = (
        {"dense"}
        | ({"stencil", "banded"} if isinstance(nb, ka.GridNeighborhood) else set())
        | ({"blocked"} if isinstance(nb, ka.CausalWindow) else set())
    )
    impl = ka.resolve_impl("auto", nb)
    assert impl in allowed
    if nb.length >= 32 * ka.index_table(nb).shape[1] and nb.num_global_queries < nb.length:
        assert impl in {"stencil", "blocked"}
    for impl in ("reference", "dense"):
        assert ka.resolve_impl(impl, nb) == impl

"""Krause attention and baselines: pure functions on [batch, length, heads, head_dim] arrays."""

from krause.attention.baselines import (
    LinearAttentionState,
    init_linear_attention_state,
    linear_attention,
    linear_attention_step,
    softmax_attention,
)
from krause.attention.krause import (
    IMPLS,
    KrauseWeights,
    densify_weights,
    krause_attention,
    rbf_attention,
    resolve_impl,
)
from krause.attention.neighborhoods import (
    CausalWindow,
    Full,
    GridNeighborhood,
    Neighborhood,
    causal,
    causal_window,
    dense_mask,
    full,
    grid_neighborhood,
    index_table,
    max_neighbors,
)
from krause.attention.selection import kth_largest

__all__ = [
    "IMPLS",
    "CausalWindow",
    "Full",
    "GridNeighborhood",
    "KrauseWeights",
    "LinearAttentionState",
    "Neighborhood",
    "causal",
    "causal_window",
    "dense_mask",
    "densify_weights",
    "full",
    "grid_neighborhood",
    "index_table",
    "init_linear_attention_state",
    "krause_attention",
    "kth_largest",
    "linear_attention",
    "linear_attention_step",
    "max_neighbors",
    "rbf_attention",
    "resolve_impl",
    "softmax_attention",
]

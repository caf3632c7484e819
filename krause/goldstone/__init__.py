"""The second system: Goldstone modes for deep information propagation (arXiv 2605.14685).

Equivariant layers whose interior stack, once its weights are large enough (sigma_w > 1), breaks
the symmetry spontaneously: signals travel along the group orbit through very deep stacks
without residual connections or normalisation. See docs/goldstone.md.
"""

from krause.goldstone.layers import (
    GenericDense,
    OkDense,
    U1Dense,
    ok_matrix,
    radial_tanh,
    safe_norm,
    u1_matrix,
)
from krause.goldstone.models import (
    GROUP_NAMES,
    DeepMLP,
    InteriorLayer,
    InteriorStack,
    block_size_of,
    parse_group,
    sigma_w,
    torch_default_uniform,
)

__all__ = [
    "GROUP_NAMES",
    "DeepMLP",
    "GenericDense",
    "InteriorLayer",
    "InteriorStack",
    "OkDense",
    "U1Dense",
    "block_size_of",
    "ok_matrix",
    "parse_group",
    "radial_tanh",
    "safe_norm",
    "sigma_w",
    "torch_default_uniform",
    "u1_matrix",
]

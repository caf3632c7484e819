"""The deep MLP of experiment 1: 784 -> Dense(N) -> L x [interior linear, radial tanh] -> Dense(10).

The interior layers have no bias, no residual and no normalisation; they are stacked with
`nn.scan` (parameters carry a leading depth axis). Initialisation as in the authors' code: the
outer layers keep PyTorch's default (weights and biases uniform in +-1/sqrt(fan_in)), the
interior weights are N(0, std^2).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from krause.goldstone.layers import (
    GenericDense,
    OkDense,
    U1Dense,
    check_positive_std,
    check_width,
    radial_tanh,
    safe_norm,
)

GROUP_NAMES = ("u1", "ok", "generic")


def check_group(group: str, k: int | None) -> None:
    if group not in GROUP_NAMES:
        raise ValueError(f"Unknown group {group!r}; known groups: {list(GROUP_NAMES)}.")
    if group != "u1" and (k is None or k < 1):
        raise ValueError(f"group {group!r} needs a block size k >= 1, got {k!r}.")


def block_size_of(group: str, k: int | None) -> int:
    """Size of the blocks that the group (or, for "generic", the activation) acts on."""
    check_group(group, k)
    return 2 if group == "u1" else k


def parse_group(name: str) -> tuple[str, int]:
    """ "u1" -> ("u1", 2); "o4" / "ok4" -> ("ok", 4): the group and its block size."""
    if name == "u1":
        return "u1", 2
    digits = name.removeprefix("ok").removeprefix("o")
    if name.startswith("o") and digits.isdigit() and int(digits) >= 1:
        return "ok", int(digits)
    raise ValueError(f"Unknown group {name!r}; allowed: 'u1' or 'o<k>' with k >= 1 (e.g. 'o4').")


def sigma_w(std, width: int, group: str, k: int | None = None):
    """The weight scale: std * sqrt(N) for U(1), std * sqrt(N / k) for O(k); breaking above 1.

    (U(1): a complex weight w1 - i w2 has variance 2 std^2 and N / 2 complex inputs.)
    """
    check_group(group, k)
    if group == "generic":
        raise ValueError(
            "sigma_w of the generic baseline is that of the group it is compared with."
        )
    return std * (width / (1 if group == "u1" else k)) ** 0.5


def torch_default_uniform(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's nn.Linear default for weights and biases: uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class InteriorLayer(nn.Module):
    """One interior layer: x [..., N] -> (radial_tanh(x W^T), mean block radius [...])."""

    group: str
    width: int
    std: float
    k: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, _=None) -> tuple[jax.Array, jax.Array]:
        block = block_size_of(self.group, self.k)
        if self.group == "u1":
            dense = U1Dense(self.width, self.std, name="dense")
        elif self.group == "ok":
            dense = OkDense(self.width, self.k, self.std, name="dense")
        else:
            dense = GenericDense(self.width, self.std, name="dense")
        y = radial_tanh(dense(x), block)
        radius = safe_norm(y.reshape(*y.shape[:-1], -1, block)).mean(-1)
        return y, radius


class InteriorStack(nn.Module):
    """`depth` interior layers through nn.scan: x [..., N] -> (x_L [..., N], radii [depth, ...]).

    radii[l] is the mean per-block radius after layer l (the order parameter's ingredient).
    remat: recompute each layer's activation in the backward pass instead of storing it: the
    same gradients, less memory traffic (a training step of 40 vmapped models on the 2-core CPU:
    1.23x faster for U(1), 1.0-1.11x for the others; `scripts/bench_models.py --only goldstone`).
    """

    group: str
    width: int
    depth: int
    std: float
    k: int | None = None
    remat: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        check_group(self.group, self.k)
        check_positive_std(self.std)
        check_width(self.width, block_size_of(self.group, self.k))
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth!r}.")
        if x.shape[-1] != self.width:
            raise ValueError(f"input width {x.shape[-1]} != the stack's width {self.width}.")
        # prevent_cse=False: the scan already keeps the recomputation from being merged away.
        layer = nn.remat(InteriorLayer, prevent_cse=False) if self.remat else InteriorLayer
        scanned = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.depth,
        )
        return scanned(self.group, self.width, self.std, self.k, name="layers")(x, None)


class DeepMLP(nn.Module):
    """x [..., 784] -> logits [..., num_classes]: Dense -> InteriorStack -> Dense."""

    group: str
    width: int = 64
    depth: int = 100
    std: float = 0.1
    k: int | None = None
    num_classes: int = 10
    remat: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        init_in = torch_default_uniform(fan_in)
        x = nn.Dense(self.width, kernel_init=init_in, bias_init=init_in, name="input")(x)
        interior = InteriorStack(
            self.group, self.width, self.depth, self.std, self.k, self.remat, name="interior"
        )
        x, _ = interior(x)
        init_out = torch_default_uniform(self.width)
        return nn.Dense(self.num_classes, kernel_init=init_out, bias_init=init_out, name="output")(
            x
        )

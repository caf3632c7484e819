"""Equivariant dense layers and the radial tanh of the Goldstone system (arXiv 2605.14685).

Layouts act on the last axis of width N:
  U(1): interleaved pairs (2j, 2j+1) = (Re z_j, Im z_j). W[0::2, 0::2] = w1, W[0::2, 1::2] = w2,
    W[1::2, 0::2] = -w2, W[1::2, 1::2] = w1, i.e. z_out = (w1 - i w2) z_in; the group rotates
    every pair by the same angle.
  O(k): blocks of k (index = block * k + d). W = w (x) I_k, i.e. W[d::k, d::k] = w for every d;
    the group applies the same k x k orthogonal matrix to every block.
All layers compute y = x W^T without bias; w (and w1, w2) are drawn N(0, std^2).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

GROUPS = ("u1", "ok", "generic")


def check_positive_std(std: float) -> None:
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}.")


def check_width(width: int, block_size: int, what: str = "width") -> None:
    if width < 1 or width % block_size:
        raise ValueError(
            f"{what} {width} must be a positive multiple of the block size {block_size}."
        )


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """Euclidean norm over `axis` whose gradient at x = 0 is 0 (not NaN)."""
    squared = jnp.sum(x * x, axis=axis, keepdims=True)
    positive = squared > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    return norm if keepdims else jnp.squeeze(norm, axis)


def radial_tanh(x: jax.Array, block_size: int) -> jax.Array:
    """x [..., N] -> same shape: each block of `block_size` is scaled by tanh(r) / (r + 1e-12).

    r is the block's Euclidean norm: the direction (phase) is kept, the radius becomes tanh(r).
    block_size 2 for U(1), k for O(k); the generic baseline uses its group's block size.
    """
    check_width(x.shape[-1], block_size, "last axis")
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    r = safe_norm(blocks, keepdims=True)
    return (blocks * (jnp.tanh(r) / (r + 1e-12))).reshape(x.shape)


def u1_matrix(w1: jax.Array, w2: jax.Array) -> jax.Array:
    """w1, w2 [out/2, in/2] -> W [out, in] with 2x2 blocks [[w1, w2], [-w2, w1]] interleaved."""
    top = jnp.stack([w1, w2], axis=-1)  # [o, i, 2]: row 2a, columns (2b, 2b + 1)
    bottom = jnp.stack([-w2, w1], axis=-1)  # row 2a + 1
    blocks = jnp.stack([top, bottom], axis=1)  # [o, 2, i, 2]
    return blocks.reshape(2 * w1.shape[0], 2 * w1.shape[1])


def ok_matrix(w: jax.Array, k: int) -> jax.Array:
    """w [out/k, in/k] -> W = w (x) I_k [out, in] (index = block * k + d)."""
    return jnp.kron(w, jnp.eye(k, dtype=w.dtype))


class _EquivariantDense(nn.Module):
    def _check_input(self, x: jax.Array, block: int) -> None:
        check_positive_std(self.std)
        check_width(self.features, block, "features")
        check_width(x.shape[-1], block, "input width")


class U1Dense(_EquivariantDense):
    """U(1)-equivariant linear map x [..., in] -> [..., features] (complex matmul, no bias).

    Params w1, w2 [features/2, in/2] ~ N(0, std^2).
    """

    features: int
    std: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        self._check_input(x, 2)
        init = nn.initializers.normal(self.std)
        shape = (self.features // 2, x.shape[-1] // 2)
        w1 = self.param("w1", init, shape, jnp.float32)
        w2 = self.param("w2", init, shape, jnp.float32)
        return x @ u1_matrix(w1, w2).astype(x.dtype).T


class OkDense(_EquivariantDense):
    """O(k)-equivariant linear map x [..., in] -> [..., features], W = w (x) I_k (no bias).

    Param w [features/k, in/k] ~ N(0, std^2).
    """

    features: int
    k: int
    std: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}.")
        self._check_input(x, self.k)
        init = nn.initializers.normal(self.std)
        w = self.param("w", init, (self.features // self.k, x.shape[-1] // self.k), jnp.float32)
        # W = w (x) I_k acting on blocks: y[b, d] = sum_c w[b, c] x[c, d].
        blocks = x.reshape(*x.shape[:-1], x.shape[-1] // self.k, self.k)
        y = jnp.einsum("...cd,bc->...bd", blocks, w.astype(x.dtype))
        return y.reshape(*x.shape[:-1], self.features)


class GenericDense(nn.Module):
    """Plain linear map x [..., in] -> [..., features], no bias; kernel [in, features] ~ N(0, std²).

    The generic baseline: same init as the equivariant layers, no symmetry.
    """

    features: int
    std: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_positive_std(self.std)
        if self.features < 1:
            raise ValueError(f"features must be a positive integer, got {self.features!r}.")
        init = nn.initializers.normal(self.std)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), jnp.float32)
        return x @ kernel.astype(x.dtype)

"""Recurrent networks of the Goldstone system: equivariant RNN and GRU cells, sequence models.

The paper publishes no equations for its recurrent cells; these are ours (docs/goldstone.md):

  Equivariant RNN (U(1) or O(k); h [..., N] in the layouts of `krause.goldstone.layers`):
    h_t = radial_tanh(R h_{t-1} + B x_t)
  R equivariant (U1Dense / OkDense, std = sigma_w / sigma_w(1)), B a generic Dense (with bias).
  Equivariant GRU: gates from invariants, the per-block norms n = |h_{t-1}| [..., N/k]:
    z_t = sigmoid(W_z [n, x_t] + b_z),   r_t = sigmoid(W_r [n, x_t] + b_r)      [..., N/k]
    c_t = radial_tanh(R (r_t . h_{t-1}) + B x_t)
    h_t = (1 - z_t) . h_{t-1} + z_t . c_t       (gates act on whole blocks: `.` repeats each
                                                 gate over its block, so h -> g h commutes)
  With x_t = 0 both maps are equivariant: f(g h) = g f(h).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from krause.goldstone.layers import OkDense, U1Dense, check_width, radial_tanh, safe_norm
from krause.goldstone.models import block_size_of, check_group, sigma_w

CELLS = ("eq_rnn", "eq_gru", "rnn", "gru")


def _block_norms(h: jax.Array, block: int) -> jax.Array:
    return safe_norm(h.reshape(*h.shape[:-1], -1, block))


def _per_block(gate: jax.Array, block: int) -> jax.Array:
    return jnp.repeat(gate, block, axis=-1)


class _EquivariantCell(nn.Module):
    """Fields and maps shared by the equivariant cells: hidden width N in the group's layout,
    the recurrent map's weight scale sigma_w, the group's block size."""

    group: str
    width: int
    sigma: float = 1.5
    k: int | None = None

    @property
    def block(self) -> int:
        return block_size_of(self.group, self.k)

    def recurrent(self) -> nn.Module:
        """R: U1Dense / OkDense with std = sigma / sigma_w(std 1), named "recurrent"."""
        std = self.sigma / sigma_w(1.0, self.width, self.group, self.k)
        if self.group == "u1":
            return U1Dense(self.width, std, name="recurrent")
        return OkDense(self.width, self.k, std, name="recurrent")


class EquivariantRNNCell(_EquivariantCell):
    """(h [..., N], x [..., d]) -> (h', h'): h' = radial_tanh(R h + B x)."""

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = radial_tanh(self.recurrent()(h) + nn.Dense(self.width, name="input")(x), self.block)
        return h, h


class EquivariantGRUCell(_EquivariantCell):
    """(h [..., N], x [..., d]) -> (h', h'): a GRU whose gates see only block norms and x."""

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        block = self.block
        units = self.width // block
        invariants = jnp.concatenate([_block_norms(h, block), x], axis=-1)
        z = nn.sigmoid(nn.Dense(units, name="update_gate")(invariants))
        r = nn.sigmoid(nn.Dense(units, name="reset_gate")(invariants))
        candidate = radial_tanh(
            self.recurrent()(_per_block(r, block) * h) + nn.Dense(self.width, name="input")(x),
            block,
        )
        z = _per_block(z, block)
        h = (1.0 - z) * h + z * candidate
        return h, h


class SequenceModel(nn.Module):
    """xs [b, T, d] -> outputs [b, T, num_outputs] (every step) or [b, num_outputs] (last step).

    cell: "eq_rnn" | "eq_gru" (group, k, sigma apply) | "rnn" (nn.SimpleCell, tanh) | "gru"
    (nn.GRUCell); width: hidden size in real numbers (U(1): width / 2 complex units).
    """

    cell: str
    width: int
    num_outputs: int
    group: str = "u1"
    k: int | None = None
    sigma: float = 1.5
    last_only: bool = False

    @nn.compact
    def __call__(self, xs: jax.Array) -> jax.Array:
        if self.cell not in CELLS:
            raise ValueError(f"Unknown cell {self.cell!r}; known cells: {list(CELLS)}.")
        if self.cell.startswith("eq"):
            check_group(self.group, self.k)
            if self.group == "generic":
                raise ValueError("Equivariant cells need group 'u1' or 'ok'.")
            if not self.sigma > 0:
                raise ValueError(f"sigma must be > 0, got {self.sigma!r}.")
            check_width(self.width, block_size_of(self.group, self.k))
            cls = EquivariantRNNCell if self.cell == "eq_rnn" else EquivariantGRUCell
            args = dict(group=self.group, width=self.width, sigma=self.sigma, k=self.k)
        else:
            cls = nn.SimpleCell if self.cell == "rnn" else nn.GRUCell
            args = dict(features=self.width)
        scan = nn.scan(
            cls,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        h0 = jnp.zeros((xs.shape[0], self.width), xs.dtype)
        h_last, hs = scan(**args, name="cell")(h0, xs)
        readout = nn.Dense(self.num_outputs, name="readout")
        return readout(h_last) if self.last_only else readout(hs)

"""Order parameter of the interior stack at initialisation (the phase diagram in sigma_w)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from krause.goldstone.models import InteriorStack, block_size_of, sigma_w


def order_parameter(
    group: str,
    k: int | None,
    sigmas,
    *,
    width: int = 64,
    depth: int = 100,
    networks: int = 200,
    inputs: int = 100,
    last: int = 30,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Mean per-block radius over the last `last` layers of random interior stacks.

    For each sigma_w: `networks` random stacks (interior weights std = sigma_w / sigma_w(1)),
    `inputs` N(0, I) vectors fed directly into the stack. Returns, each [len(sigmas)]:
      radius: mean block radius (over layers, inputs, blocks, networks);
      radius_over_sqrt: radius / sqrt(N / k) (k = 2 for U(1)), the authors' normalisation;
      c: mean squared block radius (the mean-field order parameter, mean |z|^2 for U(1));
      radius_spread: std over networks of each network's mean radius.
    """
    if group not in ("u1", "ok"):
        raise ValueError(f"order_parameter needs group 'u1' or 'ok', got {group!r}.")
    if not 1 <= last <= depth:
        raise ValueError(f"last must be in [1, depth={depth}], got {last}.")
    block = block_size_of(group, k)
    stack = InteriorStack(group, width, depth, 1.0, k)
    key_init, key_x = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(key_x, (inputs, width))
    base = jax.vmap(lambda key: stack.init(key, x))(jax.random.split(key_init, networks))
    stds = jnp.asarray(sigmas, jnp.float32) / sigma_w(1.0, width, group, k)

    def one_network(params, std):
        scaled = jax.tree.map(lambda w: w * std, params)
        _, radii = stack.apply(scaled, x)  # [depth, inputs]
        tail = radii[-last:]
        return tail.mean(), (tail**2).mean()

    def one_std(std):
        radius, c = jax.vmap(one_network, in_axes=(0, None))(base, std)
        return radius.mean(), c.mean(), radius.std()

    radius, c, spread = jax.jit(lambda s: jax.lax.map(one_std, s))(stds)
    radius = np.asarray(radius)
    return {
        "sigma_w": np.asarray(sigmas, np.float64),
        "radius": radius,
        "radius_over_sqrt": radius / np.sqrt(width / block),
        "c": np.asarray(c),
        "radius_spread": np.asarray(spread),
    }

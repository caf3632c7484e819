r"""Equivariance and orbit transport of the 100-layer interior stack, float32 vs float64.

    python experiments/goldstone_physics.py > results/goldstone_physics.md

Also draws results/goldstone_physics.png: the norm of a Goldstone tangent T x_l and of a random
tangent, layer by layer (float64, U(1) and O(4), sigma_w 0.8 / 1.5 / 2.8).

For each group and sigma_w: relative error of f(g x) = g f(x) (random rotation / Haar O(4)
element), of J(x0) T x0 = T x_L (generator T), and the gain |J d| / |d| of a random direction d
against that of the Goldstone direction T x0 (N 64, L 100, 32 Gaussian inputs, one network).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

import krause.goldstone as gs

N, L = 64, 100


def measure(group: str, k: int | None, sigma: float, dtype: str, seed: int = 0) -> dict:
    with jax.enable_x64(dtype == "float64"):
        stack = gs.InteriorStack(group, N, L, sigma / gs.sigma_w(1.0, N, group, k), k)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(32, N)).astype(dtype)
        params = stack.init(jax.random.key(seed), x)
        params = jax.tree.map(lambda a: a.astype(dtype), params)
        if group == "u1":
            c, s = np.cos(0.7), np.sin(0.7)
            g = np.kron(np.eye(N // 2), np.array([[c, -s], [s, c]]))
            t = np.kron(np.eye(N // 2), np.array([[0.0, -1.0], [1.0, 0.0]]))
        else:
            g = np.kron(np.eye(N // k), scipy.stats.ortho_group.rvs(k, random_state=rng))
            a = rng.normal(size=(k, k))
            t = np.kron(np.eye(N // k), a - a.T)
        g, t = g.astype(dtype), t.astype(dtype)

        def f(v):
            return stack.apply(params, v)[0]

        fx = np.asarray(jax.jit(f)(x), np.float64)
        fgx = np.asarray(jax.jit(f)(x @ g.T), np.float64)
        eq = np.linalg.norm(fgx - fx @ g.T) / np.linalg.norm(fx)
        x_l, tangent = jax.jvp(f, (x,), (x @ t.T,))
        orbit = np.asarray(x_l, np.float64) @ t.T
        transport = np.linalg.norm(np.asarray(tangent) - orbit) / np.linalg.norm(orbit)
        d = rng.normal(size=x.shape).astype(dtype)
        _, random_tangent = jax.jvp(f, (x,), (d,))
        return {
            "equivariance": eq,
            "transport": transport,
            "goldstone_gain": np.linalg.norm(tangent) / np.linalg.norm(x @ t.T),
            "random_gain": np.linalg.norm(random_tangent) / np.linalg.norm(d),
        }


def tangent_norms(group: str, k: int | None, sigma: float, seed: int = 0) -> dict:
    """Per-layer mean norms of the Goldstone tangent (T x0 pushed forward) and a random one."""
    with jax.enable_x64(True):
        std = sigma / gs.sigma_w(1.0, N, group, k)
        stack = gs.InteriorStack(group, N, L, std, k)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(32, N))
        params = stack.init(jax.random.key(seed), x)["params"]["layers"]
        params = jax.tree.map(lambda a: a.astype(np.float64), params)
        layer = gs.InteriorLayer(group, N, std, k)
        if group == "u1":
            t = np.kron(np.eye(N // 2), np.array([[0.0, -1.0], [1.0, 0.0]]))
        else:
            a = rng.normal(size=(k, k))
            t = np.kron(np.eye(N // k), a - a.T)

        def step(carry, p):
            h, goldstone, random = carry

            def f(v):
                return layer.apply({"params": p}, v)[0]

            h_next, goldstone = jax.jvp(f, (h,), (goldstone,))
            _, random = jax.jvp(f, (h,), (random,))
            norms = (jnp.linalg.norm(goldstone, axis=-1), jnp.linalg.norm(random, axis=-1))
            return (h_next, goldstone, random), norms

        d = rng.normal(size=x.shape)
        d *= np.linalg.norm(x @ t.T, axis=-1, keepdims=True) / np.linalg.norm(
            d, axis=-1, keepdims=True
        )
        _, (g_norm, r_norm) = jax.jit(lambda c: jax.lax.scan(step, c, params))((x, x @ t.T, d))
        start = np.linalg.norm(x @ t.T, axis=-1)
        return {
            "goldstone": np.asarray(g_norm / start).mean(-1),
            "random": np.exp(np.log(np.asarray(r_norm / start)).mean(-1)),
        }


def figure(path: str = "results/goldstone_physics.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, (group, k, name) in zip(axes, (("u1", None, "U(1)"), ("ok", 4, "O(4)")), strict=True):
        for sigma, color in ((0.8, "C0"), (1.5, "C1"), (2.8, "C3")):
            norms = tangent_norms(group, k, sigma)
            layers = np.arange(1, L + 1)
            ax.semilogy(
                layers, norms["goldstone"], color=color, label=f"Goldstone, sigma_w {sigma}"
            )
            ax.semilogy(
                layers, norms["random"], color=color, ls=":", label=f"random, sigma_w {sigma}"
            )
        ax.set(xlabel="layer", title=f"{name}: tangent norm / initial norm (float64)")
    axes[0].set_ylabel("gain")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    print(
        print(
            "| group | sigma_w | dtype | equivariance | transport | gain Goldstone | gain random |"
        )
    )
    print("|---|---|---|---|---|---|---|")
    for group, k, name in (("u1", None, "U(1)"), ("ok", 4, "O(4)")):
        for sigma in (0.8, 1.05, 1.5, 2.8):
            for dtype in ("float32", "float64"):
                m = measure(group, k, sigma, dtype)
                print(
                    f"| {name} | {sigma} | {dtype} | {m['equivariance']:.1e} | {m['transport']:.1e}"
                    f" | {m['goldstone_gain']:.3g} | {m['random_gain']:.3g} |"
                )
    figure()


if __name__ == "__main__":
    main()

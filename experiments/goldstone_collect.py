r"""Collects experiment 1 of the Goldstone system into results/goldstone_mlp.{json,md,png}.

    python experiments/goldstone_collect.py [--dataset fashion_mnist] \
        [--workdirs workdirs/goldstone]

Reads every workdirs/goldstone/<dataset>/<group>_<model>_seeds*/history.json (runs over disjoint
seed ranges of one architecture are merged; only epochs finished by all of them are used), and
the order parameter at initialisation (50 sigma_w values x 200 networks x 100 Gaussian inputs,
cached in results/goldstone_order_parameter.json; `--recompute_order_parameter` refreshes it).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

ARCHS = (("u1", "equivariant"), ("u1", "generic"), ("o4", "equivariant"), ("o4", "generic"))
EXPECTED = {
    "equivariant": "> 85% for sigma_w > 1, near chance (10%) below",
    "generic": "< 20% at every std",
}


def load_architecture(root: pathlib.Path, group: str, model: str) -> dict | None:
    runs = []
    for workdir in sorted(root.glob(f"{group}_{model}_seeds*")):
        history_path, config_path = workdir / "history.json", workdir / "config.json"
        if history_path.exists() and config_path.exists():
            history = json.loads(history_path.read_text())
            if history["test_accuracy"]:
                runs.append((json.loads(config_path.read_text()), history))
    if not runs:
        return None
    epochs = min(len(h["test_accuracy"]) for _, h in runs)
    accuracy = np.concatenate([np.asarray(h["test_accuracy"][:epochs]) for _, h in runs], -1)
    seeds = [s for c, _ in runs for s in c["seeds"]]
    if len(set(seeds)) < len(seeds):
        raise ValueError(
            f"{root}/{group}_{model}_seeds*: runs overlap in their seeds {seeds}; keep each seed "
            f"in one workdir (move the others out of {root})."
        )
    config = runs[0][0]
    stds = np.asarray(config["stds"])
    factor = np.sqrt(config["width"] / (1 if group == "u1" else int(group[1:])))
    final = accuracy[-1]  # [std, seed]
    return {
        "group": group,
        "model": model,
        "stds": stds.tolist(),
        "sigma_w": (stds * factor).tolist(),
        "seeds": seeds,
        "epochs_done": epochs,
        "epochs_planned": max(c["epochs"] for c, _ in runs),
        "test_accuracy": accuracy.tolist(),  # [epoch, std, seed]
        "final_mean": final.mean(-1).tolist(),
        "final_std": final.std(-1).tolist(),
        "curve_mean": accuracy.mean(-1).tolist(),  # [epoch, std]
        "epoch_time_s": [t for _, h in runs for t in h["epoch_time_s"]],
        "expected": EXPECTED[model],
    }


def order_parameters(path: pathlib.Path, recompute: bool) -> dict:
    if path.exists() and not recompute:
        return json.loads(path.read_text())
    from krause.goldstone.physics import order_parameter

    sigmas = np.linspace(0.2, 3.0, 50)
    out = {"settings": "50 sigma_w x 200 networks x 100 Gaussian inputs, N 64, L 100, last 30"}
    for group, k in (("u1", None), ("o4", 4)):
        op = order_parameter("u1" if group == "u1" else "ok", k, sigmas)
        out[group] = {key: np.asarray(v).tolist() for key, v in op.items()}
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def markdown(results: dict, dataset: str) -> str:
    lines = [
        f"# Goldstone system, experiment 1 (deep MLP weight-scale scan) on {dataset}",
        "",
        "784 -> Dense(64) -> 100 interior layers (no bias, residual, normalisation) -> Dense(10);",
        "Adam 1e-3, batch 256 (235 steps per epoch), pixels / 255. Test accuracy (%) after",
        "the last finished epoch: mean +- std over the seeds that finished it. Produced by",
        "`bash experiments/goldstone_grid.sh` then `python experiments/goldstone_collect.py`.",
        "",
    ]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        lines += [
            f"## {r['group']} {r['model']} (expected: {r['expected']})",
            "",
            f"Seeds {r['seeds']}, epochs finished {r['epochs_done']} of {r['epochs_planned']};"
            f" mean epoch time {np.mean(r['epoch_time_s']):.0f} s for the program.",
            "",
            "| std | sigma_w | test acc. % | per-epoch mean % |",
            "|---|---|---|---|",
        ]
        curve = np.asarray(r["curve_mean"])
        for j, (std, sigma) in enumerate(zip(r["stds"], r["sigma_w"], strict=True)):
            per_epoch = ", ".join(f"{100 * a:.1f}" for a in curve[:, j])
            lines.append(
                f"| {std:.4f} | {sigma:.2f} | {100 * r['final_mean'][j]:.2f} +- "
                f"{100 * r['final_std'][j]:.2f} | {per_epoch} |"
            )
        lines.append("")
    return "\n".join(lines)


def figure(results: dict, ops: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, group, title in ((axes[0], "u1", "U(1)"), (axes[1], "o4", "O(4)")):
        for model, color in (("equivariant", "C0"), ("generic", "C3")):
            r = results.get(f"{group}_{model}")
            if r is None:
                continue
            sigma, mean, spread = (
                np.asarray(r[key]) for key in ("sigma_w", "final_mean", "final_std")
            )
            label = f"{model} ({len(r['seeds'])} seeds, epoch {r['epochs_done']})"
            ax.errorbar(
                sigma, 100 * mean, 100 * spread, color=color, marker="o", capsize=3, label=label
            )
        ax.axvline(1.0, color="gray", ls="--", lw=1)
        ax.set(xlabel=r"$\sigma_w$", ylabel="test accuracy (%)", title=f"{title}", ylim=(0, 100))
        twin = ax.twinx()
        op = ops[group]
        twin.plot(op["sigma_w"], op["radius"], color="k", lw=1, label="order parameter (raw)")
        twin.plot(
            op["sigma_w"],
            op["radius_over_sqrt"],
            color="k",
            lw=1,
            ls=":",
            label=r"order parameter / $\sqrt{N/k}$",
        )
        twin.set_ylabel("mean block radius at init (last 30 layers)")
        twin.set_ylim(0, 1.05)
        handles = ax.get_legend_handles_labels()
        twin_handles = twin.get_legend_handles_labels()
        ax.legend(
            handles[0] + twin_handles[0],
            handles[1] + twin_handles[1],
            fontsize=7,
            loc="center right",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--workdirs", default="workdirs/goldstone")
    parser.add_argument("--results", default="results")
    parser.add_argument("--recompute_order_parameter", action="store_true")
    args = parser.parse_args()
    root = pathlib.Path(args.workdirs) / args.dataset
    out = pathlib.Path(args.results)
    suffix = "" if args.dataset == "fashion_mnist" else f"_{args.dataset}"
    results = {}
    for group, model in ARCHS:
        r = load_architecture(root, group, model)
        if r is not None:
            results[f"{group}_{model}"] = r
    ops = order_parameters(out / "goldstone_order_parameter.json", args.recompute_order_parameter)
    (out / f"goldstone_mlp{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"goldstone_mlp{suffix}.md").write_text(markdown(results, args.dataset) + "\n")
    figure(results, ops, out / f"goldstone_mlp{suffix}.png")
    print(markdown(results, args.dataset))


if __name__ == "__main__":
    main()

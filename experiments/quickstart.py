r"""Quick start: a small ViT and a small KViT trained on Fashion-MNIST on the CPU, compared.

    python experiments/quickstart.py --workdir runs/quickstart

Prepares Fashion-MNIST from the archives in --archive_dir if --data_dir does not hold it yet
(`apt-get install -y dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist), then
trains both models with `configs/fashion_mnist_vit.py:model={vit_t4,kvit_t4},quickstart` (the same
pre-LN layout, only the attention differs; see that file for the recipe) into WORKDIR/vit and
WORKDIR/kvit, and writes:
  WORKDIR/summary.md    the comparison table (also printed)
  WORKDIR/summary.json  the same numbers
  WORKDIR/curves.png    training loss and test accuracy against the step, both models
  WORKDIR/attention.png the trained KViT's attention on test images: per layer, what CLS attends
                        to, and the top-k weights of one patch inside its 4-neighbour window
Like every run, it resumes from WORKDIR after an interruption (a finished run is only evaluated).

The README's quick-start section shows this command's result on the development machine.

Table columns: top-1 accuracy on the 10,000 test images at the last step (no selection);
parameters; forward FLOPs per image as XLA's cost analysis of the compiled forward pass counts
them (a multiply-add is 2 FLOPs; the paper's "FLOPs" are multiply-adds and, for Krause models,
omit the q/k/v/o projections); training step time (median over the run's logging intervals,
batch 128, input pipeline included, compilation and evaluation excluded); wall time of the
run in this invocation (compilation and evaluation included; less when resumed).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app, flags, logging

from krause.allocator import reexec_with_tcmalloc

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = (("vit", "vit_t4", "softmax"), ("kvit", "kvit_t4", "krause"))

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (both runs, table, curves).")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "tfds data directory.")
_ARCHIVE_DIR = flags.DEFINE_string(
    "archive_dir", "/usr/share/datasets/fashion-mnist", "Fashion-MNIST idx archives."
)
_EPOCHS = flags.DEFINE_float("epochs", None, "Override the quick start's 3 epochs.")
flags.mark_flag_as_required("workdir")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    sys.path.insert(0, str(REPO))
    import jax
    import jax.numpy as jnp

    from krause.data import prepare
    from krause.metrics import quiet_library_logs, read_metrics
    from krause.models import get_model
    from krause.train import train_and_evaluate
    from krause.train.config import load_config

    quiet_library_logs()
    start = time.perf_counter()
    workdir = pathlib.Path(_WORKDIR.value).expanduser().absolute()
    data_dir = str(pathlib.Path(_DATA_DIR.value).expanduser())
    prepare("fashion_mnist", data_dir=data_dir, archive_dir=_ARCHIVE_DIR.value)
    logging.info("Fashion-MNIST ready in %s (%.0f s).", data_dir, time.perf_counter() - start)

    rows, configs = [], {}
    for name, model_name, attention in MODELS:
        config = load_config(
            f"{REPO / 'configs/fashion_mnist_vit.py'}:model={model_name},quickstart"
        )
        config.input.data_dir = data_dir
        if _EPOCHS.value is not None:
            config.total_epochs = _EPOCHS.value
        configs[name] = config
        run_start = time.perf_counter()
        results = train_and_evaluate(config, workdir / name)
        wall = time.perf_counter() - run_start

        model = get_model(config.model_name, **config.model.to_dict())
        rows.append(
            {
                "model": name,
                "attention": attention,
                "test_accuracy": results["test/accuracy"],
                "params": results["num_params"],
                "forward_flops_per_image": forward_flops(model, jax, jnp),
                "train_step_ms": 1e3 * median_step_time(read_metrics(workdir / name)),
                "batch": config.input.global_batch_size,
                "steps": results["step"],
                "run_wall_s": wall,
            }
        )

    table = format_table(rows)
    print(table)
    (workdir / "summary.md").write_text(table + "\n")
    total = time.perf_counter() - start
    summary = {"rows": rows, "total_wall_s": total, "devices": str(jax.devices())}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curves({name: read_metrics(workdir / name) for name, _, _ in MODELS}, workdir)
    plot_attention(configs["kvit"], workdir / "kvit", workdir / "attention.png")
    print(f"Figures: {workdir / 'curves.png'}, {workdir / 'attention.png'}.")
    print(f"Total wall time {total:.0f} s.")


def forward_flops(model, jax, jnp) -> float:
    """FLOPs of one image's forward pass, from XLA's cost analysis of the compiled program."""
    image = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 1), jnp.float32)
    params = jax.eval_shape(
        lambda x: model.init({"params": jax.random.key(0)}, x, train=False), image
    )
    forward = jax.jit(lambda p, x: model.apply(p, x, train=False))
    cost = forward.lower(params, image).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def median_step_time(records: list[dict]) -> float:
    times = sorted(r["train/step_time_s"] for r in records if "train/step_time_s" in r)
    return times[len(times) // 2] if times else float("nan")


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | attention | test acc. (%) | params | fwd MFLOPs/img (XLA) | step (ms) "
        "| wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['attention']} | {100 * r['test_accuracy']:.2f} "
            f"| {r['params']:,} | {r['forward_flops_per_image'] / 1e6:.2f} "
            f"| {r['train_step_ms']:.0f} (batch {r['batch']}) | {r['run_wall_s']:.0f} |"
        )
    return "\n".join(lines)


def plot_curves(histories: dict[str, list[dict]], workdir: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, records), color in zip(histories.items(), ("tab:blue", "tab:orange"), strict=False):
        train = [r for r in records if "train/loss" in r]
        test = [r for r in records if "test/accuracy" in r]
        steps = [r["step"] for r in train]
        loss_ax.plot(steps, [r["train/loss"] for r in train], color=color, label=name)
        acc_ax.plot(
            steps,
            [r["train/accuracy"] for r in train],
            color=color,
            alpha=0.35,
            label=f"{name} (training batches)",
        )
        acc_ax.plot(
            [r["step"] for r in test],
            [r["test/accuracy"] for r in test],
            color=color,
            marker="o",
            label=f"{name} (test set)",
        )
    loss_ax.set(xlabel="step", ylabel="training loss (cross-entropy)", yscale="log")
    acc_ax.set(xlabel="step", ylabel="top-1 accuracy", ylim=(0.5, 1.0))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Fashion-MNIST quick start: ViT vs KViT (same layout, only the attention differs)")
    fig.tight_layout()
    fig.savefig(workdir / "curves.png", dpi=120)
    plt.close(fig)


def plot_attention(config, run_dir: pathlib.Path, path: pathlib.Path, num_images: int = 4) -> None:
    """The trained Krause model's attention on the first test images, from its last checkpoint.

    Columns: the image; for each layer the CLS query's weights on the patches (mean over heads);
    the last layer's weights of one patch query, which live in its 4-neighbour window (top-k).
    """
    import matplotlib
    import numpy as np
    import orbax.checkpoint as ocp

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from krause.attention import densify_weights
    from krause.data import data_source, get_dataset_info
    from krause.data.pipeline import preprocess_eval
    from krause.models import get_model

    manager = ocp.CheckpointManager(run_dir / "checkpoints")
    params = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())["params"]
    model = get_model(config.model_name, **{**config.model.to_dict(), "capture": True})
    info = get_dataset_info(config.input.dataset)
    test = data_source(config.input, info.test_split)
    examples = [preprocess_eval(test[i], config=config.input, info=info) for i in range(num_images)]
    images = np.stack([e["image"] for e in examples])
    _, captured = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
    blocks = sorted(k for k in captured["intermediates"] if k.startswith("block_"))
    # [layer, batch, heads, N, N] dense probabilities, token 0 is CLS.
    probs = np.stack(
        [
            densify_weights(captured["intermediates"][b]["attention"]["attention_weights"][0])
            for b in blocks
        ]
    )
    grid = model.image_size // model.patch_size
    query = 1 + grid + 1  # patch (1, 1)
    columns = len(blocks) + 2
    fig, axes = plt.subplots(num_images, columns, figsize=(2 * columns, 2 * num_images))
    for row in range(num_images):
        axes[row, 0].imshow(images[row, ..., 0], cmap="gray")
        for layer in range(len(blocks)):
            cls = probs[layer, row, :, 0, 1:].mean(0).reshape(grid, grid)
            axes[row, layer + 1].imshow(cls, cmap="magma", vmin=0)
            if row == 0:
                axes[row, layer + 1].set_title(f"layer {layer + 1}: CLS", fontsize=9)
        local = probs[-1, row, :, query, 1:].mean(0).reshape(grid, grid)
        axes[row, -1].imshow(local, cmap="magma", vmin=0)
        axes[row, -1].add_patch(plt.Circle((1, 1), 0.15, color="cyan"))
        if row == 0:
            axes[row, 0].set_title("test image", fontsize=9)
            axes[row, -1].set_title(f"layer {len(blocks)}: patch (1,1)", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"KViT attention ({grid}x{grid} patches + CLS; mean over heads; the dot marks the query)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    reexec_with_tcmalloc()
    app.run(main)

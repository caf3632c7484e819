"""Benchmark whole models: ViT vs KViT train steps, and ARM / LARM / KARM cached sampling.

(a) Train step = forward, backward and AdamW update of ViT-S/4 vs KViT-S/4 (32x32 images) and
    ViT-S/16 vs KViT-S/16 (224x224), under `jax.jit` with donated state, warmed up, median of
    repeats, and the median of the per-round ratios (the two models alternate, so each round
    compares them under nearly the same load). Models come from `krause.models.get_model` with
    their registered defaults (`--layout` overrides the block layout of both, e.g. `post_ln` for
    a controlled comparison; `--layout paper,post_ln` times both layouts in the same rounds).
(b) Sampling throughput: images per second of `krause.models.sampling.sample` (one jitted scan
    over the positions with the decoding cache: masked preallocated cache for ARM, ring buffer of
    the last W keys/values for KARM, running sums for LARM), warmed up (compile excluded), median
    of repeats. MNIST size uses the full 12-layer model; CIFAR-10 size the full 3072-token,
    width-512 model at a reduced depth (stated in the output).
(c) Goldstone experiment 1: one training step (forward, backward, Adam) of the vmapped program
    of 8 stds x 5 seeds of one architecture (784 -> 64 -> 100 interior layers -> 10, batch 256),
    for U(1) / O(4) x equivariant / generic, with and without rematerialising the interior
    layers (`InteriorStack(remat=...)`), timed alternately.

Candidates of one comparison are compiled and warmed up first, then timed alternately (round
robin), so that a change in the machine's load hits them alike. Wall-clock times depend on
everything else running on the machine; the output also gives process CPU time (summed over
threads, less sensitive to other processes), the CPU count and the load average before and after.

Usage:
  python scripts/bench_models.py            # everything (~25 min on 2 idle cores)
  python scripts/bench_models.py --quick    # smoke run (~2 min): depth 2, tiny batches
  python scripts/bench_models.py --only sample --json results/bench_models_sample.json
  python scripts/bench_models.py --only goldstone --json results/bench_models_goldstone.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from krause.allocator import reexec_with_tcmalloc
from krause.goldstone import train as goldstone_train
from krause.machine import describe as describe_machine
from krause.models import get_model
from krause.models.sampling import sample
from krause.models.vit import LAYOUTS
from krause.train.config import load_config

ATTENTION_NAMES = {"softmax": "ARM", "linear": "LARM", "krause": "KARM"}
TRAIN_PAIRS = {"cifar": ("vit_s4", "kvit_s4"), "imagenet": ("vit_s16", "kvit_s16")}
SAMPLE_MODELS = {"mnist": "pixel_ar_mnist", "cifar10": "pixel_ar_cifar10"}
GOLDSTONE_CONFIG = Path(__file__).parent.parent / "configs" / "goldstone_mlp.py"


def param_count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def interleaved_times(runs: dict, repeats: int) -> dict[str, dict]:
    """Time each `runs[name]()` (which must block until done) `repeats` times, round-robin.

    Interleaving spreads any change in the machine's load over all candidates alike. Returns,
    per name, the median wall and process-CPU seconds (CPU time summed over threads is less
    disturbed by other processes) and the wall times.
    """
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: dict(
            wall_s=statistics.median(wall[name]),
            cpu_s=statistics.median(cpu[name]),
            wall_s_all=[round(t, 4) for t in wall[name]],
        )
        for name in runs
    }


def timing_columns(timing: dict, prefix: str, images: int) -> dict:
    """A row's columns from one `interleaved_times` entry: median wall and CPU seconds per call
    ({prefix}_s, {prefix}_cpu_s), every call's wall seconds ({prefix}_s_all), images/s."""
    return {
        f"{prefix}_s": timing["wall_s"],
        f"{prefix}_cpu_s": timing["cpu_s"],
        f"{prefix}_s_all": timing["wall_s_all"],
        "images_per_s": images / timing["wall_s"],
    }


def paired_ratios(times: list[float], baseline_times: list[float]) -> list[float]:
    """Per-round time ratios of two candidates timed in the same `interleaved_times` rounds.

    Both ran back to back in each round, so a ratio compares them under nearly the same load;
    its median is steadier than the ratio of medians when the load drifts.
    """
    return [t / b for t, b in zip(times, baseline_times, strict=True)]


def compiled_and_warm(run) -> float:
    """Call `run()` twice (compile, then warm up); return the first call's seconds."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    run()
    return first


# ---------------------------------------------------------------------------------------------
# (a) ViT / KViT train steps


def prepare_train_step(name: str, batch: int, overrides: dict):
    """A jitted AdamW train step on random data; returns (run, row describing the case)."""
    model = get_model(name, num_classes=10, **overrides)
    size = model.image_size
    images = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    init = jax.jit(lambda key, x: model.init({"params": key}, x, train=False))
    params = init(jax.random.key(2), images[:1])["params"]
    optimizer = optax.adamw(1e-3, weight_decay=0.05)

    def train_step(params, opt_state, images, labels, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    state = [params, optimizer.init(params), None]
    keys = iter(jax.random.split(jax.random.key(3), 10_000))

    def run():
        state[:] = jax.block_until_ready(train_step(state[0], state[1], images, labels, next(keys)))

    row = dict(
        model=name,
        attention=model.attention,
        layout=model.layout,
        image_size=size,
        patch_size=model.patch_size,
        depth=model.depth,
        batch=batch,
        params=param_count(params),
    )
    row["compile_s"] = round(compiled_and_warm(run), 2)
    row["loss_finite"] = bool(np.isfinite(float(state[2])))
    return run, row


def bench_train(args) -> list[dict]:
    """Rows of (baseline, Krause) per size and layout; a size's models share the timing rounds."""
    overrides = {"depth": 2} if args.quick else {}
    batches = {"cifar": args.batch_cifar, "imagenet": args.batch_imagenet}
    layouts = args.layout.split(",") if args.layout else [None]  # None: the registry's default
    rows = []
    for size in args.train_sizes.split(","):
        (baseline, krause), batch = TRAIN_PAIRS[size], batches[size]
        runs, size_rows = {}, {}
        for layout in layouts:
            layout_overrides = overrides if layout is None else {**overrides, "layout": layout}
            for name in (baseline, krause):
                key = (name, layout)
                runs[key], size_rows[key] = prepare_train_step(name, batch, layout_overrides)
        for key, timing in interleaved_times(runs, args.repeats).items():
            row = size_rows[key]
            row.update(timing_columns(timing, "step", batch))
            print(_train_line(row), flush=True)
            rows.append(row)
        del runs  # free the size's buffers before the next
    return rows


def _train_line(row: dict) -> str:
    return (
        f"{row['model']:<9} {row['image_size']:>3}px  depth {row['depth']:>2}  "
        f"batch {row['batch']:>3}  {row['params']:>11,d} params  "
        f"{row['step_s'] * 1e3:9.1f} ms/step (CPU {row['step_cpu_s'] * 1e3:.0f} ms)  "
        f"{row['images_per_s']:8.1f} img/s  "
        f"(compile {row['compile_s']:.0f} s)"
    )


# ---------------------------------------------------------------------------------------------
# (b) cached sampling


def prepare_sampling(name: str, attention: str, num_images: int, overrides: dict):
    """Jitted `sample` of `num_images` images; returns (run, row describing the case)."""
    model = get_model(name, attention=attention, **overrides)
    dummy = jnp.zeros((1, model.length), jnp.int32)
    params = jax.jit(model.init)({"params": jax.random.key(0)}, dummy)["params"]
    keys = iter(jax.random.split(jax.random.key(1), 10_000))
    run = lambda: jax.block_until_ready(
        sample(model, params, next(keys), num_images, temperature=1.0)
    )
    cache_slots = {"softmax": model.length, "krause": min(model.window, model.length)}
    row = dict(
        model=name,
        variant=ATTENTION_NAMES[attention],
        attention=attention,
        length=model.length,
        width=model.width,
        depth=model.depth,
        window=model.window if attention == "krause" else None,
        top_k=model.top_k if attention == "krause" else None,
        cache_slots=cache_slots.get(attention),
        num_images=num_images,
        params=param_count(params),
    )
    row["first_call_s"] = round(compiled_and_warm(run), 2)
    return run, row


def bench_sampling(args) -> list[dict]:
    mnist_depth = 2 if args.quick else 12
    cases = {
        "mnist": ({"depth": mnist_depth}, args.num_images_mnist),
        "cifar10": ({"depth": args.cifar_depth}, args.num_images_cifar),
    }
    rows = []
    for size in args.sample_sizes.split(","):
        name, (overrides, num_images) = SAMPLE_MODELS[size], cases[size]
        runs, case_rows = {}, {}
        for attention in ATTENTION_NAMES:
            runs[attention], case_rows[attention] = prepare_sampling(
                name, attention, num_images, overrides
            )
        timings = interleaved_times(runs, args.sample_repeats)
        arm = timings["softmax"]
        for attention, timing in timings.items():
            row = case_rows[attention]
            row.update(
                timing_columns(timing, "sample", num_images),
                ms_per_step=timing["wall_s"] / row["length"] * 1e3,
                cpu_ms_per_step=timing["cpu_s"] / row["length"] * 1e3,
                speedup_vs_arm=arm["wall_s"] / timing["wall_s"],
                cpu_speedup_vs_arm=arm["cpu_s"] / timing["cpu_s"],
            )
            print(_sample_line(row), flush=True)
            rows.append(row)
    return rows


def _sample_line(row: dict) -> str:
    return (
        f"{row['variant']:<5} {row['model']:<17} L {row['length']:>4}  depth {row['depth']:>2}  "
        f"{row['num_images']:>3} images  {row['images_per_s']:8.3f} img/s  "
        f"{row['ms_per_step']:7.2f} ms/step (CPU {row['cpu_ms_per_step']:.2f} ms)  "
        f"(first call {row['first_call_s']:.0f} s)"
    )


# ---------------------------------------------------------------------------------------------
# (c) Goldstone deep MLP


def prepare_goldstone_step(group: str, model_name: str, remat: bool, depth: int):
    """The jitted, vmapped [std, seed] Adam step of experiment 1 (configs/goldstone_mlp.py's stds,
    seeds, batch and learning rate) on random data."""
    config = load_config(f"{GOLDSTONE_CONFIG}:group={group},model={model_name}")
    model, _ = goldstone_train.build_model(config)
    model = model.clone(depth=depth, remat=remat)
    stds, seeds = jnp.asarray(config.stds), jnp.asarray(config.seeds)
    params = goldstone_train.init_params(model, stds, seeds, 784)
    tx, step, _ = goldstone_train.make_functions(model, config.learning_rate)
    rng = np.random.default_rng(0)
    x = rng.random((len(seeds), config.batch_size, 784), np.float32)
    y = rng.integers(0, 10, (len(seeds), config.batch_size)).astype(np.int32)
    state = [params, jax.vmap(jax.vmap(tx.init))(params), None]

    def run():
        state[:] = jax.block_until_ready(step(state[0], state[1], x, y))

    row = dict(
        group=group,
        model=model_name,
        remat=remat,
        depth=depth,
        models=len(stds) * len(seeds),
        batch=config.batch_size,
        # a full run: its epochs over the 60,000 training images
        run_steps=config.epochs * -(-60_000 // config.batch_size),
    )
    row["compile_s"] = round(compiled_and_warm(run), 2)
    return run, row


def bench_goldstone(args) -> list[dict]:
    depth = 2 if args.quick else 100
    runs, rows = {}, {}
    for group in ("u1", "o4"):
        for model_name in ("equivariant", "generic"):
            for remat in (False, True):
                key = (group, model_name, remat)
                runs[key], rows[key] = prepare_goldstone_step(group, model_name, remat, depth)
    timings = interleaved_times(runs, args.goldstone_repeats)
    for key, timing in timings.items():
        rows[key].update(step_s=timing["wall_s"], step_cpu_s=timing["cpu_s"])
        rows[key]["step_s_all"] = timing["wall_s_all"]
        if key[2]:
            stored = timings[(*key[:2], False)]["wall_s_all"]
            rows[key]["paired_speedup"] = paired_ratios(stored, timing["wall_s_all"])
        print(_goldstone_line(rows[key]), flush=True)
    return list(rows.values())


def _goldstone_line(row: dict) -> str:
    return (
        f"{row['group']} {row['model']:<11} remat {row['remat']!s:<5} depth {row['depth']}  "
        f"{row['step_s'] * 1e3:8.1f} ms/step (CPU {row['step_cpu_s'] * 1e3:.0f} ms)  "
        f"(compile {row['compile_s']:.0f} s)"
    )


# ---------------------------------------------------------------------------------------------


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), jax {m['jax']} ({m['backend']}), "
        f"python {m['python']}, {m['date']}",
        f"load average before {m['load_average_before']}, after {m['load_average_after']}",
        f"command: {result['command']}",
    ]
    if result["train"]:
        lines += [
            "",
            "(a) train step: forward + backward + AdamW, jit, warmed up, median of "
            f"{result['args']['repeats']} (baseline and Krause timed alternately)",
            "| model | image | depth | batch | params | ms / step | CPU ms / step | images / s "
            "| time K / baseline (wall, CPU) | paired: median K / baseline (IQR), K faster |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = result["train"]
        for i, row in enumerate(rows):
            base = rows[i - i % 2]
            ratios = paired_ratios(row["step_s_all"], base["step_s_all"])
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            paired = (
                f"{quartiles[1]:.3f}x (IQR {quartiles[0]:.3f}-{quartiles[2]:.3f}), "
                f"{sum(r < 1 for r in ratios)} of {len(ratios)} rounds"
                if row is not base
                else ""
            )
            lines.append(
                f"| {row['model']} ({row['layout']}) | {row['image_size']} | {row['depth']} | "
                f"{row['batch']} | {row['params']:,d} | {row['step_s'] * 1e3:.1f} | "
                f"{row['step_cpu_s'] * 1e3:.1f} | {row['images_per_s']:.2f} | "
                f"{row['step_s'] / base['step_s']:.2f}x, "
                f"{row['step_cpu_s'] / base['step_cpu_s']:.2f}x | {paired} |"
            )
    if result["sample"]:
        lines += [
            "",
            "(b) cached sampling, temperature 1, jit, compile excluded, median of "
            f"{result['args']['sample_repeats']} (ARM, LARM, KARM timed alternately)",
            "| model | size | tokens | depth | cache slots | images | images / s | ms / step "
            "| CPU ms / step | speed vs ARM (wall, CPU) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["sample"]:
            size = "MNIST" if "mnist" in row["model"] else "CIFAR-10"
            slots = row["cache_slots"] if row["cache_slots"] is not None else "running sums"
            lines.append(
                f"| {row['variant']} | {size} | {row['length']} | {row['depth']} | {slots} | "
                f"{row['num_images']} | {row['images_per_s']:.3f} | {row['ms_per_step']:.2f} | "
                f"{row['cpu_ms_per_step']:.2f} | {row['speedup_vs_arm']:.2f}x, "
                f"{row['cpu_speedup_vs_arm']:.2f}x |"
            )
    if result.get("goldstone"):
        rows = result["goldstone"]
        lines += [
            "",
            f"(c) Goldstone experiment 1: one Adam step of {rows[0]['models']} models (stds x "
            f"seeds) vmapped, batch {rows[0]['batch']}, median of "
            f"{result['args']['goldstone_repeats']} (all eight timed alternately); run minutes = "
            f"{rows[0]['run_steps']} steps (all epochs) x ms/step",
            "| group | model | remat | ms / step | CPU ms / step | run (min) "
            "| paired speed-up of remat: median (IQR) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            paired = ""
            if "paired_speedup" in row:
                q = statistics.quantiles(row["paired_speedup"], n=4)
                paired = f"{q[1]:.2f}x ({q[0]:.2f}-{q[2]:.2f})"
            lines.append(
                f"| {row['group']} | {row['model']} | {row['remat']} | {row['step_s'] * 1e3:.0f} "
                f"| {row['step_cpu_s'] * 1e3:.0f} | {row['run_steps'] * row['step_s'] / 60:.1f} "
                f"| {paired} |"
            )
        for remat in (False, True):
            total = sum(r["run_steps"] * r["step_s"] for r in rows if r["remat"] == remat)
            lines.append(f"| all four | | {remat} | | | {total / 60:.1f} | |")
    return "\n".join(lines)


def main():
    reexec_with_tcmalloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: depth 2, tiny batches")
    parser.add_argument(
        "--only", choices=("train", "sample", "goldstone"), help="run one part only"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--layout",
        help="ViT block layout(s) for both models, comma separated, timed in the same rounds "
        "(default: the registry's, 'paper')",
    )
    parser.add_argument("--batch-cifar", type=int, default=None, help="train batch at 32x32")
    parser.add_argument("--batch-imagenet", type=int, default=None, help="train batch at 224")
    parser.add_argument("--repeats", type=int, default=None, help="timed train steps")
    parser.add_argument("--num-images-mnist", type=int, default=None)
    parser.add_argument("--num-images-cifar", type=int, default=None)
    parser.add_argument("--cifar-depth", type=int, default=None, help="CIFAR-size sampling depth")
    parser.add_argument("--sample-repeats", type=int, default=None, help="timed sampling runs")
    parser.add_argument("--goldstone-repeats", type=int, default=None, help="timed MLP steps")
    parser.add_argument("--train-sizes", default=",".join(TRAIN_PAIRS), help="train pairs to run")
    parser.add_argument(
        "--sample-sizes", default=",".join(SAMPLE_MODELS), help="sampling cases to run"
    )
    args = parser.parse_args()
    for option, value, known in (
        ("--train-sizes", args.train_sizes, tuple(TRAIN_PAIRS)),
        ("--sample-sizes", args.sample_sizes, tuple(SAMPLE_MODELS)),
        ("--layout", args.layout or "paper", LAYOUTS),
    ):
        unknown = [item for item in value.split(",") if item not in known]
        if unknown:
            parser.error(f"{option}: unknown {unknown}; choose from {', '.join(known)}")
    defaults = dict(
        batch_cifar=(4, 64),
        batch_imagenet=(2, 16),
        repeats=(2, 15),
        num_images_mnist=(2, 16),
        num_images_cifar=(1, 4),
        cifar_depth=(1, 4),
        sample_repeats=(1, 3),
        goldstone_repeats=(3, 9),
    )
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)

    result = dict(
        machine=describe_machine(),
        command="python " + " ".join(sys.argv),
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        train=bench_train(args) if args.only in (None, "train") else [],
        sample=bench_sampling(args) if args.only in (None, "sample") else [],
        goldstone=bench_goldstone(args) if args.only in (None, "goldstone") else [],
    )
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

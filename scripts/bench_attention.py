"""Benchmark Krause attention against dense softmax and the authors' dense-masked formulation.

Forward + backward (gradients w.r.t. q, k, v and sigma) under `jax.jit`, warmed up, median of
repeats (at least --repeats calls and at least 2 s of calls; the methods of one size are timed
round robin, one call each per round, so that load changes hit them alike, unless their peak
memories add up to more than the budget: then one after the other, each in a process of its
own on the CPU); peak memory from XLA's buffer assignment of the
compiled program (`memory_analysis()`: arguments + outputs + temporaries), so it is known even
for programs too big to run, and the peak resident memory of the process that ran the size (on
the CPU every size runs in a fresh child process, so the whole run needs no more than its
biggest size). Sizes that would exceed the memory budget run at a smaller batch
(stated); sizes whose extrapolated time exceeds the time budget are skipped (stated).

Families:
  grid:   h x h patches + 1 global token, radius-1 Manhattan window, top_k 4.
  causal: causal window 128, top_k 96.
  model:  the sizes the models train at: 8x8+1 (radius-1 Manhattan, top_k 4) and 14x14+1
          (5x5 Chebyshev, top_k 12).

On an accelerator (GPU / TPU) the table adds krause/pallas (the fused kernel) and
jax.nn.dot_product_attention (cuDNN where XLA picks it), and per row: achieved bandwidth against
the HBM-traffic floor (reading q, k, v and writing the output once forward, reading q, k, v, out,
d_out and writing dq, dk, dv once backward) and achieved FLOP/s of the useful attention math
(QK^T and PV over the keys a query needs, forward and backward), both against the device's peak
(`DEVICE_PEAKS`). On the CPU these columns are skipped (it says so).

Usage:
  python scripts/bench_attention.py                 # full table (~25 min on 2 CPU cores)
  python scripts/bench_attention.py --quick         # small sizes only (~1 min)
  python scripts/bench_attention.py --json results/bench_attention.json
  python scripts/bench_attention.py --growth  # growth pairs only, small and big interleaved
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from krause.allocator import reexec_with_tcmalloc, release_free_memory
from krause.attention import (
    causal_window,
    dense_mask,
    grid_neighborhood,
    index_table,
    krause_attention,
    kth_largest,
    resolve_impl,
    softmax_attention,
)
from krause.machine import describe as describe_machine

SIGMA = 2.5
# Peak HBM bandwidth (bytes/s) and dense float32 FLOP/s (full-precision tensor-core-free math,
# the precision the kernels use) of known devices, matched on `device_kind`; others: no ratio.
DEVICE_PEAKS = {
    "H200": (4.8e12, 67e12),
    "H100": (3.35e12, 67e12),
    "A100": (2.0e12, 19.5e12),
    "TPU v5 lite": (8.2e11, 197e12),
    "TPU v4": (1.2e12, 275e12),
}


def on_accelerator() -> bool:
    return jax.default_backend() in ("gpu", "tpu")


def accelerator_columns(case: Case, method: str, batch: int, heads: int, dim: int, t: float):
    """Achieved HBM bandwidth (traffic floor / t) and useful FLOP/s, and their share of peak."""
    n = case.nb.length
    floor_bytes = 4 * batch * n * heads * dim * (4 + 8)  # float32; forward 4, backward 8 arrays
    if method.startswith("krause/") and method != "krause/dense":
        keys = float(np.mean(np.sum(index_table(case.nb) >= 0, axis=1)))  # neighbourhood size
    else:
        keys = (n + 1) / 2 if case.causal else n
    flops = 2 * batch * heads * n * keys * dim * (2 + 4)  # 2 matmuls forward, 4 backward
    cols = dict(gb_per_s=floor_bytes / t / 1e9, tflop_per_s=flops / t / 1e12)
    kind = jax.devices()[0].device_kind
    peak = next((p for name, p in DEVICE_PEAKS.items() if name in kind), None)
    if peak:
        cols |= dict(hbm_pct=100 * floor_bytes / t / peak[0], flop_pct=100 * flops / t / peak[1])
    return cols


@dataclasses.dataclass
class Case:
    family: str
    label: str  # e.g. "64x64+1" or "4096"
    nb: object
    top_k: int
    causal: bool


def grid_case(side: int) -> Case:
    """The grid family: side x side patches + 1 global token, radius-1 Manhattan, top_k 4."""
    return Case("grid", f"{side}x{side}+1", grid_neighborhood(side, side, 1), 4, False)


def causal_case(length: int) -> Case:
    """The causal family: window 128, top_k 96."""
    return Case("causal", str(length), causal_window(length, 128), 96, True)


def dense_masked_release(q, k, v, sigma, mask, top_k):
    """The authors' formulation: N x N distances, mask, top-k over full rows, softmax.

    Top-k uses this project's fast radix select (XLA's CPU top_k would be ~10x slower still), so
    the comparison isolates the quadratic formulation, not a slow sort.
    """
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, H, N, D]
    sq_dist = (
        jnp.sum(qt**2, -1)[..., :, None]
        + jnp.sum(kt**2, -1)[..., None, :]
        - 2 * jnp.einsum("bhid,bhjd->bhij", qt, kt)
    )
    scores = jnp.where(mask, -sq_dist / (2 * sigma**2), -jnp.inf)
    scores = jnp.where(scores >= kth_largest(scores, top_k), scores, -jnp.inf)
    p = jax.nn.softmax(scores, axis=-1)
    return jnp.swapaxes(jnp.einsum("bhij,bhjd->bhid", p, vt), 1, 2)


def methods(case: Case) -> dict[str, Callable]:
    """name -> attention(q, k, v, log_sigma)."""
    nb, top_k = case.nb, case.top_k
    krause = lambda impl: (
        lambda q, k, v, s: krause_attention(
            q, k, v, sigma=jnp.exp(s), neighborhood=nb, top_k=top_k, impl=impl
        )
    )
    out = {"krause/auto": krause("auto")}
    impls = ("stencil", "banded", "blocked", "dense")
    for impl in impls + (("pallas",) if on_accelerator() else ()):
        try:
            resolve_impl(impl, nb)
        except ValueError:
            continue
        out[f"krause/{impl}"] = krause(impl)
    out["softmax"] = lambda q, k, v, s: softmax_attention(q, k, v, causal=case.causal)
    if on_accelerator():
        out["dot_product_attention"] = lambda q, k, v, s: jax.nn.dot_product_attention(
            q, k, v, is_causal=case.causal
        )
    mask = jnp.asarray(dense_mask(nb)) if nb.length <= 20_000 else None
    out["dense-masked (release)"] = lambda q, k, v, s: dense_masked_release(
        q, k, v, jnp.exp(s), mask, top_k
    )
    return out


def compile_step(fn, batch, n, heads, dim):
    """jit(grad) of a scalar loss of fn; returns (compiled, args, peak bytes)."""

    def loss(q, k, v, s, cot):
        return jnp.sum(fn(q, k, v, s) * cot)

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    shape = jax.ShapeDtypeStruct((batch, n, heads, dim), jnp.float32)
    sigma = jax.ShapeDtypeStruct((), jnp.float32)
    compiled = step.lower(shape, shape, shape, sigma, shape).compile()
    mem = compiled.memory_analysis()
    peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    return compiled, peak


MIN_TIMED_S = 2.0


def random_args(batch, n, heads, dim) -> list:
    keys = jax.random.split(jax.random.key(0), 4)
    args = [jax.random.normal(key, (batch, n, heads, dim), jnp.float32) for key in keys]
    args.insert(3, jnp.float32(np.log(SIGMA)))
    return args


def time_interleaved(programs: dict, repeats: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call of each `programs[name] = (compiled, args)`, timed round robin.

    One call of each program per round, so that a change in the machine's load hits all methods
    of a size alike (ratios are what the table is about). Each program gets at least `repeats`
    calls and, if fast, at least MIN_TIMED_S of calls (the median of 5 calls of a few
    milliseconds is at the mercy of whatever else runs), and stops after `budget_s` of calls.
    """
    for compiled, args in programs.values():
        jax.block_until_ready(compiled(*args))  # warm-up
    times = {name: [] for name in programs}

    def wants_more(name):
        t = times[name]
        enough = len(t) >= repeats and (sum(t) >= MIN_TIMED_S or len(t) >= 1000)
        return not enough and sum(t) <= budget_s

    while active := [name for name in programs if wants_more(name)]:
        for name in active:
            compiled, args = programs[name]
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run(args) -> list[dict]:
    """Every size of the table; on the CPU each size in a fresh child process (see run_case)."""
    grids = [int(x) for x in args.grids.split(",") if x]
    lengths = [int(x) for x in args.lengths.split(",") if x]
    cases = [
        Case("model", "8x8+1", grid_neighborhood(8, 8, 1, "manhattan", 1), 4, False),
        Case("model", "14x14+1", grid_neighborhood(14, 14, 2, "chebyshev", 1), 12, False),
    ]
    cases += [grid_case(h) for h in grids] + [causal_case(n) for n in lengths]
    rows, last = [], {}  # last: (family, method) -> (n, seconds per example)
    # Children return their memory to the OS when they exit; one process keeps the high-water
    # mark of every program it ran (tcmalloc keeps freed buffers; see --mem_budget_gb).
    # Accelerators keep one process (a child would find the device memory taken).
    spawn = None if on_accelerator() else multiprocessing.get_context("spawn")

    def in_child(*run_case_args):
        if spawn is None:
            return run_case(*run_case_args)
        with spawn.Pool(1) as child:
            return child.apply(run_case, run_case_args)

    for case in cases:
        case_rows, case_last = in_child(case, args, last)
        if case_rows is None:  # its programs do not fit in memory together: one child each
            case_rows, case_last = [], dict(last)
            for name in methods(case):
                method_rows, method_last = in_child(case, args, last, (name,))
                case_rows += method_rows
                case_last |= method_last
        rows += case_rows
        last = case_last
    return rows


def run_case(
    case: Case, args, last: dict, only: tuple[str, ...] | None = None
) -> tuple[list[dict] | None, dict]:
    """The rows of one size (every method, or those in `only`, timed round robin) and `last`
    updated with them; (None, last) on the CPU when all methods' programs together exceed the
    memory budget (the caller then runs each method alone, in a process of its own).

    Each row also gets process_peak_mb: the peak resident memory of the process that ran it (a
    child process on the CPU), beside peak_mb, XLA's buffer assignment of the program.
    """
    n = case.nb.length
    b, heads, dim = args.batch, args.heads, args.dim
    budget = args.mem_budget_gb * 2**30
    last = dict(last)
    case_rows, programs, inputs = [], {}, {}
    for name, fn in methods(case).items():
        if only is not None and name not in only:
            continue
        row = dict(family=case.family, size=case.label, tokens=n, method=name)
        case_rows.append(row)
        if name.startswith("krause/"):
            row["impl"] = resolve_impl(name.split("/")[1], case.nb)
        prev = last.get((case.family, name))
        quadratic = name in ("softmax", "dense-masked (release)", "krause/dense")
        est = prev[1] * b * (n / prev[0]) ** (2 if quadratic else 1) if prev else 0.0
        if est > args.time_budget_s:
            row["skipped"] = f"extrapolated {est:.0f} s per step > budget"
            continue
        batch = b
        compiled, peak = compile_step(fn, batch, n, heads, dim)
        while peak > budget and batch > 1:
            batch //= 2
            compiled, peak = compile_step(fn, batch, n, heads, dim)
        row |= dict(batch=batch, peak_mb=peak / 2**20)
        if peak > budget:
            row["skipped"] = f"needs {peak / 2**30:.1f} GiB at batch 1"
            continue
        if batch not in inputs:
            inputs[batch] = random_args(batch, n, heads, dim)
        programs[name] = (compiled, inputs[batch])
    if sum(row.get("peak_mb", 0) for row in case_rows) * 2**20 <= budget:
        seconds = time_interleaved(programs, args.repeats, args.time_budget_s)
    elif only is None and not on_accelerator():
        return None, last
    else:  # all of them at once would not fit: one program after the other
        seconds = {}
        for name, program in programs.items():
            release_free_memory()
            seconds |= time_interleaved({name: program}, args.repeats, args.time_budget_s)
    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    for row in case_rows:
        if row["method"] in seconds:
            t = seconds[row["method"]]
            row |= dict(ms=1e3 * t, ms_per_example=1e3 * t / row["batch"])
            row["process_peak_mb"] = process_peak_mb
            if on_accelerator():
                row |= accelerator_columns(case, row["method"], row["batch"], heads, dim, t)
            last[(case.family, row["method"])] = (n, t / row["batch"])
        print(_fmt_row(row), flush=True)
    return case_rows, last


def growth_interleaved(args) -> list[str]:
    """krause/auto at both sizes of each growth pair, timed round robin in one process.

    The table's growth ratios divide times measured minutes apart; on a shared machine that
    alone moves them by tens of percent. Here the small and the big size alternate call by call.
    """
    pairs = [(grid_case(64), grid_case(128)), (causal_case(4096), causal_case(16384))]
    lines = []
    for small, big in pairs:
        programs, peaks = {}, {}
        for case in (small, big):
            n = case.nb.length
            compiled, peaks[case.label] = compile_step(
                methods(case)["krause/auto"], args.batch, n, args.heads, args.dim
            )
            programs[case.label] = (compiled, random_args(args.batch, n, args.heads, args.dim))
        seconds = time_interleaved(programs, args.repeats, 10 * args.time_budget_s)
        ratio = seconds[big.label] / seconds[small.label]
        lines.append(
            f"krause/auto {big.label} vs {small.label}, interleaved (batch {args.batch}): "
            f"{1e3 * seconds[small.label]:.0f} ms and {1e3 * seconds[big.label]:.0f} ms per "
            f"step, time {ratio:.2f}x, peak memory {peaks[big.label] / peaks[small.label]:.2f}x"
        )
        print(lines[-1], flush=True)
        del programs
        release_free_memory()
    return lines


def _fmt_row(row: dict) -> str:
    if "skipped" in row:
        return f"{row['size']:>9} {row['method']:<24} skipped: {row['skipped']}"
    extra = ""
    if "gb_per_s" in row:
        extra = f"  {row['gb_per_s']:>8.0f} GB/s  {row['tflop_per_s']:>7.2f} TFLOP/s"
        if "hbm_pct" in row:
            extra += f" ({row['hbm_pct']:.0f}% HBM, {row['flop_pct']:.0f}% FLOP peak)"
    return (
        f"{row['size']:>9} {row['method']:<24} batch {row['batch']:>2} "
        f"{row['ms']:>10.1f} ms  {row['peak_mb']:>9.0f} MB (XLA) "
        f"{row.get('process_peak_mb', float('nan')):>7.0f} MB (process)" + extra
    )


def table(rows: list[dict]) -> str:
    """Markdown table with per-example ratios against softmax and the dense-masked release."""
    per_ex = {(r["family"], r["size"], r["method"]): r.get("ms_per_example") for r in rows}
    lines = [
        "| family | tokens | method | batch | fwd+bwd ms | ms / example | peak MB (XLA) "
        "| process peak MB | softmax / this | dense-masked / this |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if any("gb_per_s" in r for r in rows):
        lines[0] += " HBM floor / time, FLOP/s (% of peak) |"
        lines[1] += "---|"
    for r in rows:
        name = r["method"] + (f" ({r['impl']})" if r["method"] == "krause/auto" else "")
        if "skipped" in r:
            lines.append(
                f"| {r['family']} | {r['size']} | {name} | – | – | – | "
                f"{r.get('peak_mb', float('nan')):.0f} | – | {r['skipped']} | |"
            )
            continue
        ratios = [
            f"{per_ex[(r['family'], r['size'], other)] / r['ms_per_example']:.1f}x"
            if per_ex.get((r["family"], r["size"], other))
            else "–"
            for other in ("softmax", "dense-masked (release)")
        ]
        lines.append(
            f"| {r['family']} | {r['size']} | {name} | {r['batch']} | {r['ms']:.1f} | "
            f"{r['ms_per_example']:.2f} | {r['peak_mb']:.0f} | {r['process_peak_mb']:.0f} | "
            f"{ratios[0]} | {ratios[1]} |"
        )
        if "gb_per_s" in r:  # accelerator: bandwidth and FLOP/s (and share of peak) appended
            peak = f" ({r['hbm_pct']:.0f}%, {r['flop_pct']:.0f}%)" if "hbm_pct" in r else ""
            lines[-1] += f" {r['gb_per_s']:.0f} GB/s, {r['tflop_per_s']:.2f} TFLOP/s{peak} |"
    return "\n".join(lines)


def growth(rows: list[dict]) -> list[str]:
    """time and memory growth of krause/auto when the token count grows ~4x."""
    out = []
    auto = {r["size"]: r for r in rows if r["method"] == "krause/auto" and "ms" in r}
    for small, big in (("64x64+1", "128x128+1"), ("4096", "16384")):
        if small in auto and big in auto:
            a, b = auto[small], auto[big]
            out.append(
                f"krause/auto {big} vs {small} ({b['tokens'] / a['tokens']:.2f}x tokens): "
                f"time {b['ms_per_example'] / a['ms_per_example']:.2f}x, "
                f"peak memory {b['peak_mb'] / a['peak_mb']:.2f}x"
            )
    return out


def main():
    reexec_with_tcmalloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", default="8,16,32,64,128", help="grid sides, comma separated")
    parser.add_argument("--lengths", default="784,1024,4096,16384", help="causal lengths")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    # Per program, by XLA's buffer assignment. Under tcmalloc a process running a big program
    # repeatedly holds up to ~2.3x that resident (measured on the dense 64x64+1 programs: 4.7 GB
    # by XLA, 11.1 GB resident from the second call on; freed buffers are kept, not reused in
    # place). Releasing them after each call would cost ~40% of the call's time in page faults.
    parser.add_argument("--mem_budget_gb", type=float, default=4.0)
    parser.add_argument("--time_budget_s", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument(
        "--growth", action="store_true", help="only the growth pairs, timed interleaved"
    )
    parser.add_argument("--json", default="", help="write results here")
    args = parser.parse_args()
    if args.quick:
        args.grids, args.lengths, args.repeats = "8,16,32", "784,1024", 3
    info = describe_machine()
    print(f"machine: {info}")
    if not on_accelerator():
        print(
            "no accelerator: krause/pallas, dot_product_attention and the device-time, "
            "HBM-bandwidth and FLOP/s columns are skipped"
        )
    if args.growth:
        result = dict(growth=growth_interleaved(args))
    else:
        rows = run(args)
        print()
        print(table(rows))
        for line in growth(rows):
            print(line)
        result = dict(rows=rows)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, args=vars(args), **result), f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Every table of the paper by one command: rows x seeds, resumable, collected beside the paper.

    python -m krause.reproduce --list
    python -m krause.reproduce TABLE [--scale paper|reduced] [--seeds N] [--workdir_root DIR]
    python -m krause.reproduce TABLE --rows vit_t4,kvit_t4 # run some rows, collect all
    python -m krause.reproduce TABLE --collect-only        # rebuild results/TABLE.{md,json}
    python -m krause.reproduce --update-readme             # README blocks from results/*.json

A table is rows x seeds. A row is the paper's row name, a config spec ("configs/X.py:ARGS") and
field overrides; seed i of a row sets `config.seed` to the config's seed + i (seed 0 is the
recipe's 3407). Each run has its own workdir, `ROOT/TABLE/ROW/seed_S` (default ROOT:
`workdirs/reproduce/SCALE`), and runs in this process through `krause.train.train_and_evaluate`:

* a finished run (results.json present) is skipped, an unfinished one resumes from its latest
  checkpoint, so a table can be run in pieces and an interrupted invocation finishes with the
  numbers of an uninterrupted one;
* before anything runs, every existing run's saved config.json is compared with the config it
  would get now; a difference is an error naming the run and the differing fields (nothing is
  overwritten);
* one progress line per run: which of how many, and the ETA from this invocation's run times;
* runs go seed by seed (the first seed of every row, then the second, ...), so an interrupted
  table has numbers for every row; `--order row` finishes each row's seeds first.

`--scale paper` uses the configs as they are (the paper's models and recipes). `--scale reduced`
applies the table's documented reduction (`Table.reduced`: smaller models, fewer epochs, and where
the dataset is not available here a substitute) and every output says so.

Collected: `results/TABLE.md` and `results/TABLE.json`, per row the mean +- sample standard
deviation (ddof 1) over the finished seeds with n, the paper's number beside it (`krause.paper`),
the scale, and the exact `python -m krause.main` command of every run (which reproduces that run
alone). Test accuracy is in %, bits per dimension as is; numbers are final-step test numbers.

Analyses (attention maps, synchronisation, sinks, sigma, particles) are listed too; running one
dispatches to `python -m krause.analysis.NAME` with the remaining arguments.

Costs in `--list` are estimates per seed, not measurements: the models' MACs per image
(`scripts/flops.py`; training = 6 FLOPs per MAC) times the images of the recipe, at the ~1.4e11
FLOP/s a ViT-S/4 train step reaches on the 2 development CPU cores (results/bench_models_train.txt)
or the ~5e10 FLOP/s of the quick start's small models (reduced scale), and at an assumed
sustained 1e14 FLOP/s on one current accelerator (H100 class).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import pathlib
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from krause import paper

SCALES = ("paper", "reduced")
ORDERS = ("row", "seed")  # run order of a table: all seeds of a row first, or seed by seed
RESULTS_DIR = pathlib.Path("results")
README = pathlib.Path("README.md")


# ---------------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run: config spec, field overrides (dotted path -> value), seed, workdir."""

    config: str
    overrides: tuple[tuple[str, Any], ...]
    seed: int
    workdir: pathlib.Path
    name: str = ""

    def build_config(self):
        """The run's config: `get_config(arg)` of the file, then the overrides and the seed."""
        from krause.train.config import load_config

        config = load_config(self.config)
        apply_overrides(config, [*self.overrides, ("seed", self.seed)])
        return config

    def command(self) -> str:
        """The `python -m krause.main` command that trains this run alone."""
        flags = [f"--config.{k}={format_value(v)}" for k, v in self.overrides]
        argv = ["python", "-m", "krause.main", f"--config={self.config}"]
        argv += [f"--workdir={self.workdir}", f"--config.seed={self.seed}", *flags]
        return shlex.join(argv)

    @property
    def finished(self) -> bool:
        return (self.workdir / "results.json").is_file()

    def results(self) -> dict | None:
        file = self.workdir / "results.json"
        return json.loads(file.read_text()) if file.is_file() else None


def format_value(value: Any) -> str:
    """A value as `--config.FIELD=VALUE` writes it (ml_collections' flag syntax)."""
    if isinstance(value, tuple | list):
        return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else ")")
    return str(value)


def apply_overrides(config, overrides: Iterable[tuple[str, Any]]) -> None:
    """Sets dotted fields of `config` in place; an unknown field is a ValueError listing the
    known ones (the same check as `krause.main`)."""
    from krause.train.config import field_parent

    for path, value in overrides:
        node, leaf = field_parent(config, path)
        node[leaf] = value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": leaf}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields that differ between two configs (as JSON): ["lr: saved 0.001, now 0.0003", ...]."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            diffs.append(f"{key}: not in the saved config, now {b[key]!r}")
        elif key not in b:
            diffs.append(f"{key}: saved {a[key]!r}, not in the current config")
        elif a[key] != b[key]:
            diffs.append(f"{key}: saved {a[key]!r}, now {b[key]!r}")
    return diffs


class ConfigMismatchError(ValueError):
    """Existing runs were trained with another config than the one they would get now."""


def check_saved_configs(runs: Sequence[RunSpec]) -> list:
    """The config of every run; ConfigMismatchError naming every run whose saved config.json
    differs from it (with the fields), before anything is run or written."""
    configs, problems = [], []
    for run in runs:
        config = run.build_config()
        configs.append(config)
        saved_file = run.workdir / "config.json"
        if saved_file.is_file():
            current = json.loads(config.to_json_best_effort())
            diffs = config_differences(json.loads(saved_file.read_text()), current)
            if diffs:
                state = "finished" if run.finished else "unfinished"
                problems.append(f"{run.workdir} ({state}):\n    " + "\n    ".join(diffs))
    if problems:
        raise ConfigMismatchError(
            "These runs were trained with another config than the current one (nothing was"
            " run or overwritten; move them away, use another --workdir_root, or restore the"
            " config):\n  " + "\n  ".join(problems)
        )
    return configs


def duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def run_all(
    runs: Sequence[RunSpec],
    train_fn: Callable | None = None,
    *,
    tag: str = "",
    parallel: int = 1,
    log: Callable[[str], None] = print,
) -> list[RunSpec]:
    """Runs every unfinished run (resuming from checkpoints), skipping finished ones, after
    checking every saved config. `parallel` > 1: that many `python -m krause.main`
    subprocesses at a time; else in this process with `train_fn` (default
    `krause.train.train_and_evaluate`). Returns the runs that failed (subprocesses only; in
    this process an error propagates)."""
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}.")
    configs = check_saved_configs(runs)
    todo = [
        (i, run, config)
        for i, (run, config) in enumerate(zip(runs, configs, strict=True))
        if not run.finished
    ]
    n = len(runs)
    log(f"{tag}{n} runs: {n - len(todo)} finished, {len(todo)} to run.")
    if parallel > 1:
        return _run_subprocesses(todo, n, parallel, tag, log)
    if train_fn is None:
        from krause.train import train_and_evaluate as train_fn

        show_training_log()
    times: list[float] = []
    for done, (i, run, config) in enumerate(todo):
        eta = f"ETA {duration(np.mean(times) * (len(todo) - done))}" if times else "ETA unknown"
        steps = checkpoint_steps(run.workdir)
        state = f"resuming from step {steps[-1]}" if steps else "starting"
        log(f"{tag}run {i + 1}/{n} {run.name} seed {run.seed}: {state} | {eta} | {run.workdir}")
        start = time.perf_counter()
        train_fn(config, run.workdir)
        times.append(time.perf_counter() - start)
        log(f"{tag}run {i + 1}/{n} {run.name} seed {run.seed}: done in {duration(times[-1])}")
    return []


def show_training_log() -> None:
    """The trainer's absl log (progress, ETA, metrics) on stderr, as under `krause.main`."""
    from absl import logging as absl_logging

    from krause.metrics import quiet_library_logs

    absl_logging.set_verbosity(absl_logging.INFO)
    quiet_library_logs()


def _run_subprocesses(todo, n, parallel, tag, log) -> list[RunSpec]:
    """`python -m krause.main` for each run, `parallel` at a time; output to WORKDIR/train.log."""
    pending, active, failed, times = list(todo), [], [], []
    started = 0
    while pending or active:
        while pending and len(active) < parallel:
            i, run, _ = pending.pop(0)
            run.workdir.mkdir(parents=True, exist_ok=True)
            argv = shlex.split(run.command())[1:]
            log_file = open(run.workdir / "train.log", "a")  # noqa: SIM115 (closed below)
            process = subprocess.Popen(
                [sys.executable, *argv], stdout=log_file, stderr=subprocess.STDOUT
            )
            started += 1
            remaining = len(pending) + len(active) + 1
            eta = (
                f"ETA {duration(np.mean(times) * remaining / parallel)}" if times else "ETA unknown"
            )
            log(f"{tag}run {i + 1}/{n} {run.name} seed {run.seed}: started | {eta} | {run.workdir}")
            active.append((i, run, process, log_file, time.perf_counter()))
        time.sleep(0.2)
        for item in list(active):
            i, run, process, log_file, start = item
            if process.poll() is None:
                continue
            active.remove(item)
            log_file.close()
            times.append(time.perf_counter() - start)
            if process.returncode:
                failed.append(run)
                log(
                    f"{tag}run {i + 1}/{n} {run.name} seed {run.seed}: FAILED (exit"
                    f" {process.returncode}; see {run.workdir / 'train.log'})"
                )
            else:
                took = duration(times[-1])
                log(f"{tag}run {i + 1}/{n} {run.name} seed {run.seed}: done in {took}")
    return failed


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None for fewer than 2 values)."""
    if not values:
        return None, None
    array = np.asarray(values, np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None


def format_mean_std(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


# ---------------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row: `name` is its row in `krause.paper` (on the table's dataset; a name the paper
    lacks has no paper number) and its workdir; `config` the config spec; `overrides` field
    overrides (dotted path, value)."""

    name: str
    config: str
    overrides: tuple[tuple[str, Any], ...] = ()


def _with_args(spec: str, args: str) -> str:
    """`path:k=v,flag` with `args` ("k=v,flag") set: a key already there takes the new value."""
    if not args:
        return spec
    path, _, current = spec.partition(":")
    merged = {part.split("=")[0]: part for part in current.split(",") if part}
    merged.update({part.split("=")[0]: part for part in args.split(",")})
    return f"{path}:{','.join(merged.values())}"


@dataclasses.dataclass(frozen=True)
class Reduced:
    """The reduced scale of a table: `args` set in every row's config argument,
    `overrides` set on every run, `note` what this means in words."""

    args: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    title: str
    dataset: str  # the paper's dataset (krause.paper key)
    data: str  # what the table needs
    rows: tuple[Row, ...]
    reduced: Reduced
    cost_paper: str  # per seed, here and on an accelerator (estimates; see module docstring)
    cost_reduced: str
    notes: tuple[str, ...] = ()

    @property
    def metric(self) -> str:
        return paper.BPD if self.name.startswith("pixel") else paper.ACC

    def runs(self, scale: str, seeds: int, root: pathlib.Path, order: str = "row") -> list[RunSpec]:
        """Every run of the table at `scale`, rows x seeds: order "row" runs all seeds of a row
        before the next row, "seed" the first seed of every row before the second seed."""
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
        if seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds}.")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}.")
        runs = []
        for row in self.rows:
            spec, overrides = row.config, row.overrides
            if scale == "reduced":
                spec = _with_args(spec, self.reduced.args)
                overrides = (*overrides, *self.reduced.overrides)
            base_seed = _config_seed(spec)
            for i in range(seeds):
                seed = base_seed + i
                workdir = root / self.name / row.name / f"seed_{seed}"
                runs.append(RunSpec(spec, tuple(overrides), seed, workdir, row.name))
        if order == "seed":
            runs = [runs[r * seeds + i] for i in range(seeds) for r in range(len(self.rows))]
        return runs


def _config_seed(spec: str) -> int:
    from krause.train.config import load_config

    return int(load_config(spec).seed)


def _rows(config: str, rows: Iterable[tuple[str, str]], **kw) -> tuple[Row, ...]:
    file, *_ = config.split(":")
    return tuple(Row(name, f"{file}:{arg}", **kw) for name, arg in rows)


_VIT_REDUCED = (
    ("model.width", 64),
    ("model.depth", 4),
    ("model.heads", 4),
    ("model.mlp_dim", 128),
    ("total_epochs", 10.0),
    ("warmup_epochs", 1.0),
    ("eval_every_epochs", 5.0),
    ("checkpoint_every_epochs", 1.0),
)
_VIT_REDUCED_NOTE = (
    "ViT/KViT at width 64, depth 4, 4 heads, MLP 128 (patch and image as in the paper),"
    " 10 epochs with 1 warm-up epoch; the rest of the recipe unchanged."
)
_CIFAR_MODELS = ("vit_t4", "kvit_t4", "vit_s4", "kvit_s4", "vit_b4", "kvit_b4")


def _cifar_rows(dataset: str) -> tuple[Row, ...]:
    rows = [(m, f"model={m},dataset={dataset}") for m in _CIFAR_MODELS]
    rows += [(f"{m}+rope", f"model={m},dataset={dataset},rope") for m in ("vit_b4", "kvit_b4")]
    return _rows("configs/cifar_vit.py", rows)


def _pixel_reduced(depth: int) -> tuple[tuple[str, Any], ...]:
    return (
        ("model.width", 64),
        ("model.depth", depth),
        ("model.heads", 2),
        ("total_epochs", 0.5),
        ("eval_every_epochs", 0.5),
        ("checkpoint_every_steps", 200),
    )


def _by_name(*items: Any) -> dict[str, Any]:
    return {item.name: item for item in items}


TABLES: dict[str, Table] = _by_name(
    Table(
        "cifar10",
        "CIFAR-10: ViT vs KViT (T, S, B; B with RoPE)",
        "cifar10",
        "CIFAR-10 (cifar-10-python.tar.gz; not available here)",
        _cifar_rows("cifar10"),
        Reduced(overrides=_VIT_REDUCED, note=_VIT_REDUCED_NOTE),
        "~190 days here, ~6.5 h on an accelerator",
        "~15 min per run here, ~2 h per seed",
    ),
    Table(
        "cifar100",
        "CIFAR-100: ViT vs KViT (T, S, B; B with RoPE)",
        "cifar100",
        "CIFAR-100 (cifar-100-python.tar.gz; not available here)",
        _cifar_rows("cifar100"),
        Reduced(overrides=_VIT_REDUCED, note=_VIT_REDUCED_NOTE),
        "~190 days here, ~6.5 h on an accelerator",
        "~15 min per run here, ~2 h per seed",
        notes=(
            "The authors' page swaps the ViT-S / KViT-S pair (page: KViT-S "
            f"{paper.CIFAR100_PAGE_SWAP[('cifar100', 'kvit_s4')]}, ViT-S "
            f"{paper.CIFAR100_PAGE_SWAP[('cifar100', 'vit_s4')]}); the consistent reading"
            " is shown.",
        ),
    ),
    Table(
        "imagenet",
        "ImageNet-1K: ViT vs KViT (S/16, S/32, B/16, B/16 RoPE, B/32)",
        "imagenet2012",
        "ImageNet-1K (ILSVRC2012 train and val tars, ~150 GB; not available here)",
        _rows(
            "configs/imagenet_vit.py",
            [
                (m, f"model={m}")
                for m in ("vit_s16", "kvit_s16", "vit_s32", "kvit_s32", "vit_b16", "kvit_b16")
            ]
            + [(f"{m}+rope", f"model={m},rope") for m in ("vit_b16", "kvit_b16")]
            + [(m, f"model={m}") for m in ("vit_b32", "kvit_b32")],
        ),
        Reduced(
            overrides=(
                ("model.depth", 6),
                ("total_epochs", 10.0),
                ("warmup_epochs", 1.0),
                ("eval_every_epochs", 5.0),
                ("checkpoint_every_steps", 1000),
            ),
            note="Depth 6 instead of 12, 10 epochs with 1 warm-up epoch; the rest unchanged.",
        ),
        "decades here, ~24 days on one accelerator (~3 days on 8)",
        "~5 months here, ~10 h on one accelerator",
        notes=(
            "A first version of the paper reported ViT-S-16 "
            f"{paper.FIRST_VERSION[('imagenet2012', 'vit_s16')]} and KViT-S-16 "
            f"{paper.FIRST_VERSION[('imagenet2012', 'kvit_s16')]}.",
        ),
    ),
    Table(
        "fashion_mnist",
        "Fashion-MNIST: ViT-T vs KViT-T, paper and controlled settings, ablations",
        "fashion_mnist",
        "Fashion-MNIST (prepared here: python -m krause.data.prepare --dataset fashion_mnist)",
        _rows(
            "configs/fashion_mnist_vit.py",
            [
                ("vit_t4", "model=vit_t4"),
                ("kvit_t4", "model=kvit_t4"),
                ("vit_t4+pre_ln", "model=vit_t4,layout=pre_ln"),
                ("kvit_t4+pre_ln", "model=kvit_t4,layout=pre_ln"),
                ("kvit_t4+no_top_k", "model=kvit_t4,top_k=none"),
                ("kvit_t4+no_locality+no_top_k", "model=kvit_t4,top_k=none,locality=false"),
                ("kvit_t4+no_locality", "model=kvit_t4,locality=false"),
            ],
        ),
        Reduced(
            overrides=(
                ("model.width", 64),
                ("model.depth", 4),
                ("model.heads", 4),
                ("model.mlp_dim", 128),
                ("total_epochs", 3.0),
                ("warmup_epochs", 0.25),
                ("eval_every_epochs", 1.0),
                ("checkpoint_every_epochs", 0.5),
            ),
            note=(
                "ViT-T-like models at width 64, depth 4, 4 heads, MLP 128 (patch 4: 7x7"
                " grid + CLS, as the paper's row), 3 epochs with a quarter-epoch warm-up;"
                " the recipe otherwise the paper's CIFAR one (batch 256, lr 3e-4, crop,"
                " flip, CutMix/MixUp, smoothing)."
            ),
        ),
        "~17 days here, ~35 min on an accelerator (2 paper rows: ~5 days, ~10 min)",
        "~4 min per run here, ~30 min per seed (7 rows)",
        notes=(
            "Rows +pre_ln: both attentions in the same pre-LN block (controlled"
            " comparison). Ablations without a paper number: the paper's ablation is on"
            " CIFAR-10 (table cifar_ablation).",
        ),
    ),
    Table(
        "swin",
        "CIFAR-10: Swin-T vs KSwin-T",
        "cifar10",
        "CIFAR-10 (not available here)",
        _rows("configs/cifar_swin.py", [(m, f"model={m}") for m in ("swin_t", "kswin_t")]),
        Reduced(
            overrides=(
                ("model.embed_dim", 48),
                ("total_epochs", 10.0),
                ("warmup_epochs", 1.0),
                ("eval_every_epochs", 5.0),
                ("checkpoint_every_epochs", 1.0),
            ),
            note="Swin-T with embed 48 instead of 96, 10 epochs with 1 warm-up epoch.",
        ),
        "~3 days here, ~10 min on an accelerator",
        "~50 min per run here, ~2 h per seed",
    ),
    Table(
        "cifar_ablation",
        "CIFAR-10 ablation of KViT-S (Mixup/CutMix): top-k and locality",
        "cifar10",
        "CIFAR-10 (not available here)",
        _rows(
            "configs/cifar_vit.py",
            [
                ("vit_s4", "model=vit_s4,dataset=cifar10"),
                ("kvit_s4", "model=kvit_s4,dataset=cifar10"),
                ("kvit_s4+no_top_k", "model=kvit_s4,dataset=cifar10,top_k=none"),
                (
                    "kvit_s4+no_locality+no_top_k",
                    "model=kvit_s4,dataset=cifar10,top_k=none,locality=false",
                ),
            ],
        ),
        Reduced(overrides=_VIT_REDUCED, note=_VIT_REDUCED_NOTE),
        "~42 days here, ~1.4 h on an accelerator",
        "~15 min per run here, ~1 h per seed",
    ),
    Table(
        "pixel_mnist",
        "Autoregressive pixels, MNIST: ARM vs LARM vs KARM (bits per dimension)",
        "mnist",
        "MNIST (idx files; not available here; reduced scale uses Fashion-MNIST)",
        _rows(
            "configs/pixel_ar.py",
            [
                ("arm", "dataset=mnist,attention=softmax"),
                ("larm", "dataset=mnist,attention=linear"),
                ("karm", "dataset=mnist,attention=krause"),
                (
                    "karm+no_top_k+no_window",
                    "dataset=mnist,attention=krause,window=none,top_k=none",
                ),
            ],
        ),
        Reduced(
            args="dataset=fashion_mnist",
            overrides=_pixel_reduced(depth=2),
            note=(
                "Fashion-MNIST instead of MNIST (not available here; same 784-token"
                " geometry), width 64, depth 2, 2 heads (window and top-k as in the"
                " paper), half an epoch with 5% warm-up. The paper's numbers are MNIST's."
            ),
        ),
        "~33 days here, ~1.1 h on an accelerator",
        "~15 min per run here, ~1 h per seed",
    ),
    Table(
        "pixel_cifar10",
        "Autoregressive pixels, CIFAR-10: ARM vs LARM vs KARM (bits per dimension)",
        "cifar10",
        "CIFAR-10 (not available here)",
        _rows(
            "configs/pixel_ar.py",
            [(r, f"dataset=cifar10,attention={a}") for a, r in paper.PIXEL_ROWS.items()],
        ),
        Reduced(
            overrides=_pixel_reduced(depth=2),
            note=(
                "Width 64, depth 2, 2 heads (window and top-k as in the paper), half an"
                " epoch with 5% warm-up."
            ),
        ),
        "~1.4 years here, ~17 h on an accelerator",
        "~2 h per run here, ~6 h per seed",
    ),
)


@dataclasses.dataclass(frozen=True)
class Analysis:
    name: str
    title: str
    needs: str

    @property
    def module(self) -> str:
        return f"krause.analysis.{self.name}"

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False


ANALYSES: dict[str, Analysis] = _by_name(
    Analysis(
        "attention_maps",
        "per-head attention maps on the patch grid, Krause vs softmax",
        "trained ViT and KViT runs (e.g. table fashion_mnist)",
    ),
    Analysis(
        "synchronisation",
        "token clusters, mean pairwise cosine similarity and effective rank per layer",
        "trained ViT and KViT runs of the same size and budget, several seeds",
    ),
    Analysis(
        "sinks",
        "mean attention mass on the first token (CLS / first pixel) per layer",
        "trained ViT/KViT and pixel-model runs",
    ),
    Analysis(
        "sigma",
        "the learned sigma of every Krause layer over training",
        "trained Krause runs (their metrics logs)",
    ),
    Analysis(
        "particles",
        "200 particles on the circle and sphere under softmax vs Krause dynamics",
        "nothing (simulation, no training)",
    ),
)


def known_names() -> str:
    return f"tables: {', '.join(TABLES)}; analyses: {', '.join(ANALYSES)}"


def listing() -> str:
    lines = ["Tables (estimated cost per seed, here on 2 CPU cores and on one accelerator):"]
    for t in TABLES.values():
        lines.append(f"  {t.name:<15} {t.title}")
        lines.append(f"  {'':<15} rows: {', '.join(r.name for r in t.rows)}")
        lines.append(f"  {'':<15} data: {t.data}")
        lines.append(f"  {'':<15} paper scale: {t.cost_paper}")
        lines.append(f"  {'':<15} reduced scale: {t.cost_reduced}; {t.reduced.note}")
    lines.append("Analyses (python -m krause.reproduce NAME [ARGS] runs python -m MODULE [ARGS]):")
    for a in ANALYSES.values():
        state = "available" if a.available() else "not available yet"
        lines.append(f"  {a.name:<15} {a.title}")
        lines.append(f"  {'':<15} module {a.module} ({state}); needs: {a.needs}")
    lines.append("Costs are estimates (see `python -m krause.reproduce --help`).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- collect


def invocation(table: Table, scale: str, seeds: int, root: pathlib.Path) -> str:
    return shlex.join(
        ["python", "-m", "krause.reproduce", table.name, "--scale", scale, "--seeds", str(seeds)]
        + ["--workdir_root", str(root)]
    )


def row_label(dataset: str, row: str) -> str:
    """The paper's label of a row, or of its base row with the tags: "KViT-T (no_top_k)"."""
    if (dataset, row) in paper.PAPER:
        return paper.result(dataset, row).label
    base, *tags = row.split("+")
    if (dataset, base) in paper.PAPER and tags:
        return f"{paper.result(dataset, base).label} ({', '.join(tags)})"
    return row


def collect(table: Table, scale: str, seeds: int, root: pathlib.Path) -> dict:
    """The table's finished runs, aggregated per row (see module docstring)."""
    factor = 100.0 if table.metric == paper.ACC else 1.0
    digits = 2 if table.metric == paper.ACC else 4
    runs = table.runs(scale, seeds, root)
    by_row: dict[str, list[RunSpec]] = {}
    for run in runs:
        by_row.setdefault(run.name, []).append(run)
    rows = []
    for row in table.rows:
        reported = paper.PAPER.get((table.dataset, row.name))
        label = row_label(table.dataset, row.name)
        entries, values = [], []
        params, datasets, steps = set(), set(), set()
        for run in by_row[row.name]:
            results = run.results()
            value = None
            if results is not None and table.metric in results:
                value = factor * results[table.metric]
                values.append(value)
                params.add(results.get("num_params"))
                datasets.add(results.get("dataset"))
                steps.add(results.get("step"))
            entries.append(
                dict(seed=run.seed, workdir=str(run.workdir), command=run.command(), value=value)
            )
        mean, std = mean_std(values)
        rows.append(
            dict(
                row=row.name,
                label=label,
                n=len(values),
                mean=mean,
                std=std,
                paper=None if reported is None else reported[1],
                paper_params=None if reported is None else reported[2],
                params=sorted(params) if len(params) > 1 else next(iter(params), None),
                dataset=sorted(datasets) if len(datasets) > 1 else next(iter(datasets), None),
                steps=sorted(steps) if len(steps) > 1 else next(iter(steps), None),
                runs=entries,
            )
        )
    return dict(
        table=table.name,
        title=table.title,
        scale=scale,
        scale_note=table.reduced.note if scale == "reduced" else "the paper's models and recipes",
        metric=table.metric,
        unit="%" if table.metric == paper.ACC else "bits/dim",
        digits=digits,
        seeds=seeds,
        command=invocation(table, scale, seeds, root),
        rows=rows,
        notes=list(table.notes),
    )


def _params(value) -> str:
    if value is None:
        return "–"
    return " / ".join(f"{v:,}" for v in value) if isinstance(value, list) else f"{value:,}"


def table_lines(collected: dict) -> list[str]:
    """The markdown table of a collected table (also the README block's body)."""
    metric = collected["metric"].split("/")[-1].replace("bpd", "BPD")
    unit = collected["unit"]
    digits = collected["digits"]
    lines = [
        f"| row | ours: {metric} ({unit}), mean ± std | n | paper | params (ours) |"
        " params (paper) |",
        "|---|---|---|---|---|---|",
    ]
    for r in collected["rows"]:
        paper_value = "–" if r["paper"] is None else f"{r['paper']:.{digits}f}"
        lines.append(
            f"| {r['label']} | {format_mean_std(r['mean'], r['std'], digits)} | {r['n']} | "
            f"{paper_value} | {_params(r['params'])} | {_params(r['paper_params'])} |"
        )
    return lines


def markdown(collected: dict) -> str:
    lines = [
        f"# {collected['title']}",
        "",
        f"Scale: **{collected['scale']}**: {collected['scale_note']}",
        "",
        f"Command: `{collected['command']}`",
        "",
        *table_lines(collected),
        "",
        "Final-step test numbers (no checkpoint selection); std is the sample standard"
        " deviation over seeds (ddof 1), n the number of finished seeds.",
    ]
    lines += [f"{note}" for note in collected["notes"]]
    lines += ["", "Runs:", ""]
    for r in collected["rows"]:
        for run in r["runs"]:
            state = "finished" if run["value"] is not None else "not finished"
            lines.append(f"- {r['row']} seed {run['seed']} ({state}): `{run['command']}`")
    return "\n".join(lines) + "\n"


def write_collected(
    collected: dict, results_dir: pathlib.Path
) -> tuple[pathlib.Path, pathlib.Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    md = results_dir / f"{collected['table']}.md"
    js = results_dir / f"{collected['table']}.json"
    md.write_text(markdown(collected))
    js.write_text(json.dumps(collected, indent=1) + "\n")
    return md, js


# ---------------------------------------------------------------------------------- README


def readme_block(collected: dict) -> str:
    """The README's block for a collected table, between its markers."""
    name = collected["table"]
    body = [
        f"**{collected['title']}**, scale **{collected['scale']}** ({collected['scale_note']})",
        f"`{collected['command']}`",
        "",
        *table_lines(collected),
    ]
    return f"<!-- reproduce:{name} -->\n" + "\n".join(body) + f"\n<!-- /reproduce:{name} -->"


def _block_pattern(name: str) -> re.Pattern:
    return re.compile(
        rf"<!-- reproduce:{re.escape(name)} -->.*?<!-- /reproduce:{re.escape(name)} -->", re.S
    )


def readme_blocks(text: str) -> dict[str, str]:
    """The marked blocks of a README: {table: block}."""
    names = re.findall(r"<!-- reproduce:([\w.-]+) -->", text)
    return {name: m.group(0) for name in names if (m := _block_pattern(name).search(text))}


def update_readme(readme: pathlib.Path, results_dir: pathlib.Path) -> tuple[list[str], list[str]]:
    """Replaces every marked block of `readme` whose table has results/TABLE.json; returns
    (updated tables, collected tables without a block in the README)."""
    text = readme.read_text()
    updated, missing = [], []
    for file in sorted(results_dir.glob("*.json")):
        if file.stem not in TABLES:
            continue
        block = readme_block(json.loads(file.read_text()))
        pattern = _block_pattern(file.stem)
        if pattern.search(text):
            text = pattern.sub(lambda _, block=block: block, text)
            updated.append(file.stem)
        else:
            missing.append(file.stem)
    readme.write_text(text)
    return updated, missing


# ---------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("name", nargs="?", help="a table or analysis (see --list)")
    parser.add_argument("--scale", default="reduced", choices=SCALES, help="default reduced")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    parser.add_argument("--workdir_root", help="default workdirs/reproduce/SCALE")
    parser.add_argument("--rows", help="run only these rows (comma separated); all are collected")
    parser.add_argument(
        "--order",
        default="seed",
        choices=ORDERS,
        help="seed (default): the first seed of every row, then the second, ...; row: all seeds"
        " of a row, then the next row",
    )
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    parser.add_argument("--list", action="store_true", help="every table and analysis")
    parser.add_argument("--collect-only", action="store_true", help="only collect finished runs")
    parser.add_argument("--update-readme", action="store_true", help="README blocks from results")
    parser.add_argument("--readme", default=str(README), help="README for --update-readme")
    args, extra = parser.parse_known_args(argv)

    if args.list:
        print(listing())
        return 0
    if args.update_readme:
        updated, missing = update_readme(pathlib.Path(args.readme), pathlib.Path(args.results_dir))
        print(f"updated the README blocks of: {', '.join(updated) or 'none'}")
        for name in missing:
            print(f"no block in {args.readme} for {name}; add:")
            print(
                readme_block(
                    json.loads((pathlib.Path(args.results_dir) / f"{name}.json").read_text())
                )
            )
        return 0
    if args.name is None:
        parser.error(f"give a table or analysis ({known_names()}), or --list")
    if args.name in ANALYSES:
        analysis = ANALYSES[args.name]
        if not analysis.available():
            print(
                f"Analysis {args.name!r} is not available yet: module {analysis.module} does"
                f" not exist. It needs: {analysis.needs}.",
                file=sys.stderr,
            )
            return 2
        command = [sys.executable, "-m", analysis.module, *extra]
        print(shlex.join(["python", *command[1:]]), flush=True)
        return subprocess.run(command, check=False).returncode
    if args.name not in TABLES:
        parser.error(f"unknown table or analysis {args.name!r}; known {known_names()}")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    table = TABLES[args.name]
    root = pathlib.Path(args.workdir_root or f"workdirs/reproduce/{args.scale}")
    runs = table.runs(args.scale, args.seeds, root, order=args.order)
    if args.rows:
        wanted = args.rows.split(",")
        unknown = [r for r in wanted if r not in {row.name for row in table.rows}]
        if unknown:
            parser.error(
                f"table {table.name} has no rows {unknown}; its rows:"
                f" {', '.join(row.name for row in table.rows)}"
            )
        selected = [run for run in runs if run.name in wanted]
    else:
        selected = runs
    scale_note = table.reduced.note if args.scale == "reduced" else "the paper's configs as is"
    print(f"{table.name} at scale {args.scale}: {scale_note}")
    if args.collect_only:
        check_saved_configs([run for run in runs if run.finished])
    else:
        run_all(selected, tag=f"[{table.name}] ")
    collected = collect(table, args.scale, args.seeds, root)
    if not any(r["n"] for r in collected["rows"]):
        print(
            f"No finished runs of table {table.name} under {root / table.name} (expected e.g."
            f" {runs[0].workdir / 'results.json'}); nothing written.",
            file=sys.stderr,
        )
        return 1
    md, js = write_collected(collected, pathlib.Path(args.results_dir))
    print("\n".join(table_lines(collected)))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    from krause import cli

    cli.run(main)

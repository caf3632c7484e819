"""Hyperparameter sweeps: the product of a grid x seeds, run resumably, collected into one table.

    python -m krause.sweep --config configs/fashion_mnist_vit.py:model=kvit_t4 \\
        --grid lr=1e-3,3e-4 --grid wd=0.05,0.1 --seeds 3 --workdir_root runs/sweep_lr_wd \\
        [--parallel 2] [--dry_run] [--collect-only] [--config.FIELD=VALUE ...]

Settings: with `--grid FIELD=V1,V2,...` (any config field, dotted for nested ones; values are
converted to the field's type, "none" gives None), the product of the grids; without, the
config file's `get_sweep(arg)` if it defines one (a list of {"arg": config-file argument,
FIELD: value, ...}, e.g. every row of a paper table), else the config alone. `--config.FIELD=VALUE`
flags apply to every run. Seed i of a setting sets `config.seed` to the config's seed + i.

Each run has its workdir `ROOT/SETTING/seed_S` (SETTING like "lr-0.001_wd-0.05") and is run as
in `krause.reproduce`: finished runs (results.json) are skipped, unfinished ones resume from their
checkpoints, a saved config.json that differs from the current config is an error naming the
fields. `--parallel N` runs N `python -m krause.main` subprocesses at a time (each logs to
WORKDIR/train.log); otherwise runs go one after the other in this process.

Collected into ROOT/sweep.md and ROOT/sweep.json: per setting the mean +- std (ddof 1) over the
finished seeds of every final metric in results.json ("val/...", "test/...", train loss), with n.
The best setting is selected on the validation metrics ("val/accuracy", highest, else "val/bpd"
or "val/loss", lowest) when results.json has them, never on test metrics; without a validation
part no setting is marked, and the table says so.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import pathlib
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from krause.reproduce import (
    RunSpec,
    apply_overrides,
    check_saved_configs,
    format_mean_std,
    format_value,
    mean_std,
    run_all,
)

# Validation metrics a best setting is selected on, in order of preference: (key, higher is better).
SELECTION = (("val/accuracy", True), ("val/bpd", False), ("val/loss", False))
TRUTH = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_value(config, path: str, text: str) -> Any:
    """`text` as a value of dotted field `path` of `config`, converted to the field's type."""
    from krause.train.config import field_parent

    node, leaf = field_parent(config, path)
    kind = node.get_type(leaf)
    if text.lower() == "none":
        return None
    try:
        if kind is bool:
            return TRUTH[text.lower()]
        if kind in (int, float):
            return kind(text)
        if kind is str:
            return text
        return ast.literal_eval(text)
    except (KeyError, ValueError, SyntaxError) as error:
        name = getattr(kind, "__name__", str(kind))
        raise ValueError(f"{path}={text!r} is not a valid {name} (field {path}).") from error


def parse_grid(config, grids: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """["lr=1e-3,3e-4", ...] -> [("lr", [0.001, 0.0003]), ...] (typed by the config's fields)."""
    parsed, seen = [], set()
    for grid in grids:
        field, sep, values = grid.partition("=")
        field = field.strip().removeprefix("config.")
        if not sep or not field or not values.strip():
            raise ValueError(f"--grid {grid!r}: expected FIELD=V1,V2,... (e.g. lr=1e-3,3e-4).")
        if field == "seed":
            raise ValueError("--grid seed=...: seeds are given by --seeds N (config seed + i).")
        if field in seen:
            raise ValueError(f"--grid gives field {field!r} twice.")
        seen.add(field)
        parsed.append((field, [parse_value(config, field, v.strip()) for v in values.split(",")]))
    return parsed


def setting_name(arg: str | None, overrides: Sequence[tuple[str, Any]]) -> str:
    """A directory name for one setting: "model-kvit_t4_lr-0.001_wd-0.05"."""
    parts = [arg] if arg else []
    parts += [f"{k}={format_value(v)}" for k, v in overrides]
    name = "_".join(parts).replace(",", "_").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_.+-]", "", name) or "default"


def settings(
    config_spec: str, grids: Sequence[str], extra: Sequence[tuple[str, Any]] = ()
) -> list[dict]:
    """The sweep's settings: [{"name", "spec", "overrides" (grid/get_sweep ones), ...}]."""
    from krause.train.config import load_config_module

    path, _, arg = config_spec.partition(":")
    module = load_config_module(path)
    base = module.get_config(arg or None)
    apply_overrides(base, extra)
    if grids:
        grid = parse_grid(base, grids)
        fields = [field for field, _ in grid]
        combos = itertools.product(*(values for _, values in grid))
        return [
            dict(name=setting_name(None, list(zip(fields, c, strict=True))), spec=config_spec)
            | dict(overrides=tuple(zip(fields, c, strict=True)))
            for c in combos
        ]
    if hasattr(module, "get_sweep"):
        out = []
        for run in module.get_sweep(arg or None):
            run = dict(run)
            run_arg = run.pop("arg", None)
            spec = f"{path}:{run_arg}" if run_arg else path
            overrides = tuple(run.items())
            out.append(dict(name=setting_name(run_arg, overrides), spec=spec, overrides=overrides))
        return out
    return [dict(name=setting_name(arg or None, ()), spec=config_spec, overrides=())]


def expand(
    config_spec: str,
    grids: Sequence[str],
    seeds: int,
    root: pathlib.Path,
    extra: Sequence[tuple[str, Any]] = (),
) -> tuple[list[dict], list[RunSpec]]:
    """Settings and their runs (settings x seeds, setting-major)."""
    from krause.train.config import load_config

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}.")
    found = settings(config_spec, grids, extra)
    runs = []
    for setting in found:
        overrides = (*setting["overrides"], *extra)
        config = load_config(setting["spec"])
        apply_overrides(config, overrides)
        for i in range(seeds):
            seed = int(config.seed) + i
            workdir = root / setting["name"] / f"seed_{seed}"
            runs.append(RunSpec(setting["spec"], overrides, seed, workdir, setting["name"]))
    return found, runs


def collect(found: list[dict], runs: list[RunSpec], command: str) -> dict:
    """Per setting: mean +- std over finished seeds of every final metric; best on validation."""
    rows = []
    for setting in found:
        results = [r.results() for r in runs if r.name == setting["name"]]
        finished = [r for r in results if r is not None]
        keys = sorted(
            {k for r in finished for k, v in r.items() if _is_metric(k, v)},
            key=lambda k: (not k.startswith("val/"), not k.startswith("test/"), k),
        )
        metrics = {}
        for key in keys:
            values = [float(r[key]) for r in finished if key in r]
            mean, std = mean_std(values)
            metrics[key] = dict(mean=mean, std=std, n=len(values))
        row = dict(name=setting["name"], spec=setting["spec"])
        row |= dict(overrides={k: v for k, v in setting["overrides"]}, n=len(finished))
        row |= dict(runs=[r.command() for r in runs if r.name == setting["name"]])
        rows.append(row | dict(metrics=metrics, best=False))
    selection = None
    for key, higher in SELECTION:
        candidates = [r for r in rows if r["metrics"].get(key, {}).get("mean") is not None]
        if candidates:
            best = (max if higher else min)(candidates, key=lambda r: r["metrics"][key]["mean"])
            best["best"] = True
            selection = dict(metric=key, higher_is_better=higher, setting=best["name"])
            break
    return dict(command=command, settings=rows, selection=selection)


def _is_metric(key: str, value: Any) -> bool:
    wanted = key.startswith(("val/", "test/")) or key == "train/loss"
    return wanted and isinstance(value, int | float) and key != "test/images"


def markdown(collected: dict) -> str:
    rows = collected["settings"]
    keys = []
    for r in rows:
        keys += [k for k in r["metrics"] if k not in keys]
    lines = [f"Command: `{collected['command']}`", ""]
    lines.append("| setting | " + " | ".join(keys) + " | n | best |")
    lines.append("|---" * (len(keys) + 3) + "|")
    for r in rows:
        cells = []
        for key in keys:
            m = r["metrics"].get(key)
            digits = 2 if key.endswith("accuracy") else 4
            factor = 100.0 if key.endswith("accuracy") else 1.0
            if m is None or m["mean"] is None:
                cells.append("–")
            else:
                std = None if m["std"] is None else factor * m["std"]
                cells.append(format_mean_std(factor * m["mean"], std, digits))
        best = "**best**" if r["best"] else ""
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['n']} | {best} |")
    lines.append("")
    lines.append("Mean ± std (ddof 1) over finished seeds; accuracies in %.")
    selection = collected["selection"]
    if selection:
        direction = "highest" if selection["higher_is_better"] else "lowest"
        lines.append(
            f"Best setting: {selection['setting']}, the {direction} mean {selection['metric']}"
            " (validation part; test metrics are not used for selection)."
        )
    else:
        lines.append(
            "No setting is marked best: results.json has no validation metrics (val/...), and"
            " the test split is never used for selection."
        )
    lines += ["", "Runs:", ""]
    lines += [f"- `{command}`" for r in rows for command in r["runs"]]
    return "\n".join(lines) + "\n"


def parse_extra(config_spec: str, flags: Sequence[str]) -> list[tuple[str, Any]]:
    """`--config.FIELD=VALUE` flags as typed overrides (fields of the config file's config)."""
    from krause.train.config import load_config

    config = load_config(config_spec)
    out = []
    for flag in flags:
        field, sep, value = flag.removeprefix("--config.").partition("=")
        if not sep:
            raise ValueError(f"{flag!r}: expected --config.FIELD=VALUE.")
        out.append((field, parse_value(config, field, value)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1] + "\nOther arguments: --config.FIELD=VALUE for every run.",
    )
    parser.add_argument("--config", required=True, help="configs/X.py[:ARGS]")
    parser.add_argument("--grid", action="append", default=[], help="FIELD=V1,V2,... (repeat)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per setting (default 1)")
    parser.add_argument("--workdir_root", required=True, help="parent of the runs' workdirs")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (subprocesses)")
    parser.add_argument("--dry_run", action="store_true", help="print the runs' commands only")
    parser.add_argument("--collect-only", action="store_true", help="only collect finished runs")
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    root = pathlib.Path(args.workdir_root)
    overrides = parse_extra(args.config, extra)
    found, runs = expand(args.config, args.grid, args.seeds, root, overrides)
    if args.dry_run:
        print("\n".join(run.command() for run in runs))
        return 0
    failed = []
    if args.collect_only:
        check_saved_configs([run for run in runs if run.finished])
    else:
        failed = run_all(runs, tag="[sweep] ", parallel=args.parallel)
    command = shlex.join(
        ["python", "-m", "krause.sweep", *(argv if argv is not None else sys.argv[1:])]
    )
    collected = collect(found, runs, command)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps(collected, indent=1) + "\n")
    text = markdown(collected)
    (root / "sweep.md").write_text(text)
    print(text + f"wrote {root / 'sweep.md'} and {root / 'sweep.json'}")
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed:", file=sys.stderr)
        for run in failed:
            print(f"  {run.command()}  (log: {run.workdir / 'train.log'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    from krause import cli

    cli.run(main)

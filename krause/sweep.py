"""Expand a config file's sweep into runs: print their commands, or run them one by one.

    python -m krause.sweep --config configs/cifar_vit.py --workdir_root runs/cifar [--run] \\
        [--config.FIELD=VALUE ...]

The config file defines `get_sweep(arg)` returning a list of runs, each a dict with an optional
"arg" (the config-file argument of that run, e.g. "model=kvit_s4,dataset=cifar100") and any
number of field overrides {"lr": 1e-3, "model.depth": 6}. The argument after the colon of
`--config` is passed to `get_sweep` (e.g. `configs/cifar_vit.py:smoke`). Each run gets the
workdir `<workdir_root>/<name>`, its name built from its argument and overrides, so re-running
the sweep resumes every run. Extra `--config.FIELD=VALUE` flags are added to every run.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

from krause.train.config import load_config_module, unknown_field_message


def run_name(run: dict) -> str:
    """A directory name for one run: "model-kvit_s4_dataset-cifar10_lr-0.001"."""
    parts = [run["arg"]] if run.get("arg") else []
    parts += [f"{k}={v}" for k, v in run.items() if k != "arg"]
    name = "_".join(parts).replace(",", "_").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_.+-]", "", name) or "default"


def expand(config: str, workdir_root: str, extra: Sequence[str] = ()) -> list[list[str]]:
    """The `krause.main` command (argv, without the interpreter) of every run of the sweep."""
    path, _, arg = config.partition(":")
    module = load_config_module(path)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path} defines no get_sweep(arg).")
    commands = []
    for run in module.get_sweep(arg or None):
        run = dict(run)
        run_arg = run.get("arg")
        resolved = module.get_config(run_arg)  # fails early on a bad argument
        overrides = [f"--config.{k}={v}" for k, v in run.items() if k != "arg"]
        for flag in [*overrides, *extra]:
            field = flag.removeprefix("--config.").split("=", 1)[0]
            message = unknown_field_message(resolved, field)
            if message:
                raise ValueError(message)
        config_flag = f"--config={path}:{run_arg}" if run_arg else f"--config={path}"
        workdir = pathlib.Path(workdir_root) / run_name(run)
        commands.append(
            ["-m", "krause.main", config_flag, f"--workdir={workdir}", *overrides, *extra]
        )
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Other arguments must be --config.FIELD=VALUE overrides for every run.",
    )
    parser.add_argument("--config", required=True, help="configs/X.py[:ARG]")
    parser.add_argument("--workdir_root", required=True, help="parent of the runs' workdirs")
    parser.add_argument("--run", action="store_true", help="run the commands sequentially")
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    commands = expand(args.config, args.workdir_root, extra)
    failed = []
    for i, command in enumerate(commands, 1):
        print(shlex.join(["python", *command]), flush=True)
        if args.run:
            print(f"# run {i}/{len(commands)}", flush=True)
            if subprocess.run([sys.executable, *command], check=False).returncode:
                failed.append(command)
    if failed:
        print(f"{len(failed)} of {len(commands)} runs failed:", file=sys.stderr)
        for command in failed:
            print("  " + shlex.join(["python", *command]), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

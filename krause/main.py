"""Command line: train and evaluate one config.

    python -m krause.main --config configs/cifar_vit.py:model=kvit_s4,dataset=cifar100 \\
        --workdir runs/kvit_s4_c100 [--config.FIELD=VALUE ...]

The string after the colon selects the config file's variant; `--config.FIELD=VALUE` overrides
any field (nested with dots: `--config.input.data_dir=DIR`, `--config.model.depth=6`). An unknown
field is an error that lists the known ones. Running the same command again resumes from the
workdir's latest checkpoint (an unreadable latest checkpoint is set aside). Console script:
`krause-train` (`krause.main:run`).

Config values are checked before any work (`krause.train.config.validate_config`). A finished run
is read back by `krause.runs.load_run(workdir)`, evaluated again by
`python -m krause.evaluate --workdir DIR`, sampled (pixel models) by
`python -m krause.sample --workdir DIR --out FILE.png`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from krause.allocator import reexec_with_tcmalloc
from krause.metrics import quiet_library_logs
from krause.train.config import load_config, unknown_field_message

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an argument: configs/X.py:ARGS.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a clear error for overrides of fields the config lacks."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as error:
        # ml_collections reports an unknown field as an AttributeError without the known ones.
        message = _unknown_field(argv)
        if message is None and not isinstance(error, flags.Error):
            raise
        sys.exit(f"FATAL Flags parsing error: {message or error}\nPass --helpshort for help.")


def _unknown_field(argv: list[str]) -> str | None:
    """The error message for the first `--config.FIELD` override that the config lacks."""
    spec = _flag_value(argv, "config")
    if spec is None:
        return None
    config = load_config(spec)
    for arg in argv[1:]:
        name = arg.lstrip("-").split("=", 1)[0]
        if name.startswith("config."):
            message = unknown_field_message(config, name.removeprefix("config."))
            if message:
                return message
    return None


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name=VALUE` or `--name VALUE` in argv (the last one), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith((f"--{name}=", f"-{name}=")):
            value = arg.split("=", 1)[1]
    return value


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    reexec_with_tcmalloc()  # before any work: see krause/allocator.py
    quiet_library_logs()
    from krause.train import train_and_evaluate  # after flag parsing: imports jax

    logging.info("Config:\n%s", _CONFIG.value)
    results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print({k: v for k, v in results.items() if k.startswith("test/")})


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()

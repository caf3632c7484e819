"""Command line: train and evaluate one config.

    python -m krause.main --config configs/cifar_vit.py:model=kvit_s4,dataset=cifar100 \\
        --workdir runs/kvit_s4_c100 [--config.FIELD=VALUE ...]

The string after the colon selects the config file's variant; `--config.FIELD=VALUE` overrides
any field (nested with dots: `--config.input.data_dir=DIR`, `--config.model.depth=6`). An unknown
field is an error that lists the known ones. Running the same command again resumes from the
workdir's latest checkpoint. Console script: `krause-train` (`krause.main:run`).
"""

from __future__ import annotations

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from krause.train.config import unknown_field_message

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
    except flags.Error as error:
        sys.exit(f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull for help.")
    except (AttributeError, KeyError) as error:
        config = FLAGS["config"].value
        for arg in argv[1:]:
            name = arg.lstrip("-").split("=", 1)[0]
            if config is not None and name.startswith("config."):
                message = unknown_field_message(config, name.removeprefix("config."))
                if message:
                    sys.exit(f"FATAL Flags parsing error: {message}")
        raise error


class QuietLibraries(pylogging.Filter):
    """Drops INFO records of orbax and tensorflow_datasets (very chatty); keeps warnings."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = ("/orbax/", "/tensorflow_datasets/")
        return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in noisy)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(QuietLibraries())
    from krause.train import train_and_evaluate  # after flag parsing: imports jax

    logging.info("Config:\n%s", _CONFIG.value)
    results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print({k: v for k, v in results.items() if k.startswith("test/")})


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()

"""Command line of the Goldstone experiments (same conventions as `krause.main`).

    python -m krause.goldstone.main --config configs/goldstone_mlp.py:group=u1,model=equivariant \\
        --workdir workdirs/goldstone/u1_equivariant [--config.FIELD=VALUE ...]

Running the same command again resumes from the workdir's latest (per-epoch) checkpoint.
The config's `experiment` field selects the program: "mlp" (experiment 1), "copy", "psmnist".
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from krause.allocator import reexec_with_tcmalloc
from krause.main import parse_flags  # also defines the shared --config and --workdir flags
from krause.metrics import quiet_library_logs

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    reexec_with_tcmalloc()  # before any work: see krause/allocator.py
    quiet_library_logs()
    config = FLAGS.config
    logging.info("Config:\n%s", config)
    if config.experiment == "mlp":
        from krause.goldstone.train import train_and_evaluate
    else:
        from krause.goldstone.recurrent_train import train_and_evaluate
    results = train_and_evaluate(config, FLAGS.workdir)
    summary = {k: v for k, v in results.items() if k.startswith("final") or k == "sigma_w"}
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

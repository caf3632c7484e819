"""Training: `train_and_evaluate(config, workdir)` and the config schema (`krause.train.config`).

Command line: `python -m krause.main --config configs/X.py:ARGS --workdir DIR`.
"""

from krause.train.trainer import train_and_evaluate

__all__ = ["train_and_evaluate"]

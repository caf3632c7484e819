"""Training: `train_and_evaluate(config, workdir)` and the config schema (`krause.train.config`).

Command line: `python -m krause.main --config configs/X.py:ARGS --workdir DIR`. A finished run:
`krause.runs.load_run`, `python -m krause.evaluate`, `python -m krause.sample`.
"""

from krause.train.config import validate_config
from krause.train.trainer import DivergenceError, train_and_evaluate

__all__ = ["DivergenceError", "train_and_evaluate", "validate_config"]

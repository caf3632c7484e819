r"""Goldstone system, experiment 1: the deep MLP's weight-scale scan (arXiv 2605.14685).

One architecture (group x model) per command; its 8 stds x 5 seeds train as one vmapped program:

    python -m krause.goldstone.main --config configs/goldstone_mlp.py:group=u1,model=equivariant \
        --workdir workdirs/goldstone/u1_equivariant

Arguments (after the colon, comma separated):
  group=u1|o4|o<k>        U(1) (pairs) or O(k) (blocks of k); default u1
  model=equivariant|generic   generic: plain Dense (no bias) with the same init, std grid and radial
                          tanh over the group's blocks; default equivariant
  dataset=fashion_mnist|mnist   MNIST needs `python -m krause.data.prepare --dataset mnist ...`
  seeds=A-B|S             the seeds to train (default 0-4); runs over disjoint seed ranges are
                          merged by experiments/goldstone_collect.py
  smoke                   width 8, depth 3, 2 stds x 2 seeds, 1 epoch on 2,048 images

Authors' settings (github.com/nabiliqbal/ssb-goldstone-deep-info-prop): 784 -> Dense(64) ->
100 interior layers -> Dense(10); Adam 1e-3, batch 256 (last partial batch of 96 kept), 5 epochs,
seeds 0-4; std grids U(1) linspace(0.05, 0.35, 8), O(4) linspace(0.10, 0.70, 8) (sigma_w 0.4-2.8).
"""

import ml_collections
import numpy as np

from krause.data import default_input_config
from krause.train import config as tc

STD_GRIDS = {"u1": (0.05, 0.35), "ok": (0.10, 0.70)}


def parse_seeds(text: str) -> list[int]:
    """ "0-4" -> [0, 1, 2, 3, 4]; "3" -> [3]."""
    low, _, high = text.partition("-")
    seeds = list(range(int(low), int(high or low) + 1))
    if not seeds or seeds[0] < 0:
        raise ValueError(f"seeds={text!r}: expected a non-negative seed S or a range A-B, A <= B.")
    return seeds


def get_config(arg=None):
    arg = tc.parse_arg(
        arg, group="u1", model="equivariant", dataset="fashion_mnist", seeds="0-4", smoke=False
    )
    config = ml_collections.ConfigDict()
    config.experiment = "mlp"
    config.group = arg.group
    config.model = arg.model
    config.input = default_input_config(arg.dataset, "none")
    config.width = 64
    config.depth = 100
    config.num_classes = 10
    low, high = STD_GRIDS["u1" if arg.group == "u1" else "ok"]
    config.stds = np.linspace(low, high, 8).round(6).tolist()
    config.seeds = parse_seeds(str(arg.seeds))
    config.epochs = 5
    config.batch_size = 256
    config.learning_rate = 1e-3
    config.eval_batch_size = 2000
    config.max_train_examples = 0  # 0: the whole training split
    config.log_every_steps = 50
    if arg.smoke:
        config.width, config.depth = 8, 3
        config.stds = [config.stds[0], config.stds[-1]]
        config.seeds = [0, 1]
        config.epochs = 1
        config.max_train_examples = 2048
    return config

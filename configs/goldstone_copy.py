r"""Goldstone system, recurrent experiment: the variable-delay copy task (10 tokens).

    python -m krause.goldstone.main --config configs/goldstone_copy.py:cell=eq_gru,max_delay=200 \
        --workdir workdirs/goldstone/copy/eq_gru_32_T200

Arguments (after the colon, comma separated):
  cell=eq_rnn|eq_gru|rnn|gru   equivariant U(1) cells (recurrent map equivariant, input map and
                  readout generic) or flax's nn.SimpleCell / nn.GRUCell; default eq_gru
  units=N         hidden units: complex units for the U(1) cells (width 2N), real units for the
                  baselines; default 32 (the paper: 32 complex units; baselines 32 and 64)
  max_delay=T     maximum delay (25, 100, 200 in the paper); default 200
  steps=S         optimizer steps (default 2000; our choice: the paper gives no budget)
  smoke           3 steps, 2 seeds, max_delay 5
All 10 seeds train as one vmapped program. Our choices: Adam 1e-3, clip 1.0, batch 128,
sigma_w 1.5 for the recurrent map, alphabet of 8 symbols, success = all 10 tokens exact on
1,000 fresh sequences per seed.
"""

import ml_collections

from krause.train import config as tc


def get_config(arg=None):
    arg = tc.parse_arg(arg, cell="eq_gru", units=32, max_delay=200, steps=2000, smoke=False)
    config = ml_collections.ConfigDict()
    config.experiment = "copy"
    config.cell = arg.cell
    config.group = "u1"
    config.width = 2 * arg.units if arg.cell.startswith("eq") else arg.units
    config.sigma = 1.5
    config.num_outputs = 8
    config.max_delay = arg.max_delay
    config.seeds = list(range(10))
    config.steps = arg.steps
    config.batch_size = 128
    config.lr = 1e-3
    config.grad_clip_norm = 1.0
    config.eval_every_steps = 250
    config.eval_size = 1000
    if arg.smoke:
        config.steps, config.seeds, config.max_delay = 3, [0, 1], 5
        config.eval_every_steps, config.eval_size, config.batch_size = 3, 16, 8
    return config

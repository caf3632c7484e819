r"""Goldstone system, recurrent experiment: permuted sequential MNIST with an O(24) RNN.

Full (MNIST; prepare it with `python -m krause.data.prepare --dataset mnist ...`):

    python -m krause.goldstone.main --config configs/goldstone_psmnist.py:dataset=mnist \
        --workdir workdirs/goldstone/psmnist/mnist_o24

Reduced CPU run on Fashion-MNIST pixels (seed 0, 1,000 steps of 128, the whole test split):

    python -m krause.goldstone.main --config configs/goldstone_psmnist.py:reduced \
        --workdir workdirs/goldstone/psmnist/fmnist_o24_reduced

Arguments: dataset=mnist|fashion_mnist, cell=eq_rnn|eq_gru|rnn|gru, group=o24 (any u1 / o<k>),
blocks=B (hidden width B * k; default 8, width 192), reduced, smoke.
Our choices (the paper publishes no recurrent details): one pixel per step in the fixed
permutation np.random.default_rng(0), readout of the last hidden state, Adam 1e-3, clip 1.0,
batch 128, sigma_w 1.5, 3 seeds, 20,000 steps (the full run).
"""

import ml_collections

from krause.data import default_input_config
from krause.goldstone.models import parse_group
from krause.train import config as tc


def get_config(arg=None):
    arg = tc.parse_arg(
        arg, dataset="mnist", cell="eq_rnn", group="o24", blocks=8, reduced=False, smoke=False
    )
    _, k = parse_group(arg.group)
    config = ml_collections.ConfigDict()
    config.experiment = "psmnist"
    config.cell = arg.cell
    config.group = arg.group
    config.width = arg.blocks * k
    config.sigma = 1.5
    config.num_outputs = 10
    config.input = default_input_config(arg.dataset, "none")
    config.permutation_seed = 0
    config.seeds = [0, 1, 2]
    config.steps = 20_000
    config.batch_size = 128
    config.lr = 1e-3
    config.grad_clip_norm = 1.0
    config.eval_every_steps = 1000
    config.eval_size = 1000
    config.max_train_examples = 0
    config.max_test_examples = 0
    if arg.reduced:
        config.input = default_input_config("fashion_mnist", "none")
        config.seeds = [0]
        config.steps, config.eval_every_steps = 1000, 250
    if arg.smoke:
        config.seeds, config.steps, config.batch_size, config.eval_every_steps = [0], 2, 4, 2
        config.max_train_examples, config.max_test_examples, config.eval_size = 64, 32, 32
    return config

r"""Autoregressive pixel models on MNIST and CIFAR-10: ARM (softmax), LARM (linear), KARM (Krause).

One table row (the paper's recipe is the default):

    python -m krause.main --config configs/pixel_ar.py:dataset=mnist,attention=krause \
        --workdir runs/mnist_karm --config.input.data_dir ~/tensorflow_datasets

Every row, with seeds and the table beside the paper's: `python -m krause.reproduce pixel_mnist`
(`pixel_cifar10`).

Arguments (after the colon, comma separated):
  dataset=mnist|cifar10|fashion_mnist   (default mnist; fashion_mnist uses the MNIST model)
  attention=softmax|linear|krause       ARM | LARM | KARM (default krause)
  window=none|W   Krause causal window (default 128 MNIST, 256 CIFAR-10); none: the whole past
  top_k=none|K    Krause top-k within the window (default 96 MNIST, 192 CIFAR-10)
                  (window=none,top_k=none is the ablation "KARM without window and top-k")
  decay_all       weight-decay every parameter (the reference code's AdamW decays everything)
  smoke           a tiny model (width 32, depth 1, window 16, top-k 8), 3 steps of 4 images

Metric: bits per dimension on the whole test split, every sub-pixel counted including the first:
total NLL (nats) / (10,000 * 784 (MNIST) or 3072 (CIFAR-10)) / ln 2 (see `krause.train.tasks`).
The paper's numbers are listed at the end of this docstring (from `krause.paper`).

Recipe (experiments.md): AdamW (0.9, 0.999), lr 1e-3, wd 0.01, 30 epochs, global batch 64 (MNIST;
28,125 steps) or 8 (CIFAR-10; 187,500 steps), 5% linear warm-up then cosine to 0, no clipping,
dropout 0.1, no augmentation; sigma0 2.5 per head. Runtime: not measured here (no accelerator).
"""

from krause import paper
from krause.train import config as tc

# The paper's numbers (krause.paper, the one source), appended to this docstring.
__doc__ += "\nPaper, MNIST:\n" + paper.describe("mnist")
__doc__ += "\nPaper, CIFAR-10 (the pixel rows are ARM, LARM, KARM):\n" + paper.describe("cifar10")

MODEL_NAMES = {
    "mnist": "pixel_ar_mnist",
    "fashion_mnist": "pixel_ar_mnist",
    "cifar10": "pixel_ar_cifar10",
}
BATCH = {"mnist": 64, "fashion_mnist": 64, "cifar10": 8}
EVAL_BATCH = {"mnist": 200, "fashion_mnist": 200, "cifar10": 50}
SMOKE_MODEL = dict(width=32, depth=1, heads=2, window=16, top_k=8)


def get_config(arg=None):
    arg = tc.parse_arg(
        arg,
        dataset="mnist",
        attention="krause",
        window="default",
        top_k="default",
        decay_all=False,
        smoke=False,
    )
    if arg.dataset not in MODEL_NAMES:
        raise ValueError(f"Unknown dataset {arg.dataset!r} for pixels; known: {list(MODEL_NAMES)}.")
    model_name = MODEL_NAMES[arg.dataset]
    model = dict(attention=arg.attention)
    if arg.smoke:
        model.update(SMOKE_MODEL)
    if arg.window != "default":  # none: the whole past (the sequence length)
        length = 784 if model_name == "pixel_ar_mnist" else 3072
        model["window"] = length if arg.window is None else int(arg.window)
    if arg.top_k != "default":
        model["top_k"] = None if arg.top_k is None else int(arg.top_k)

    config = tc.base_config()
    config.seed = 3407
    config.model_name = model_name
    config.model = tc.model_config(model_name, **model)
    config.input = tc.input_config(
        arg.dataset,
        "pixels",
        global_batch_size=BATCH[arg.dataset],
        eval_batch_size=EVAL_BATCH[arg.dataset],
    )
    config.cache_dataset = True  # small dataset: decode once, keep in memory
    config.total_epochs = 30.0
    config.warmup_fraction = 0.05
    config.lr = 1e-3
    config.wd = 0.01
    config.grad_clip_norm = None
    config.decay_all = arg.decay_all
    config.log_every_steps = 100
    config.eval_every_epochs = 1.0
    config.checkpoint_every_steps = 2000

    if arg.smoke:
        tc.shrink_to_smoke(config, global_batch_size=4, eval_batch_size=8, warmup_steps=None)
    return config


def get_sweep(arg=None):
    """Every row of the pixel table and the MNIST ablation; `arg` is added to each."""
    rows = [
        f"dataset={d},attention={a}"
        for d in ("mnist", "cifar10")
        for a in ("krause", "linear", "softmax")
    ]
    rows += ["dataset=mnist,attention=krause,window=none,top_k=none"]
    return [{"arg": ",".join(filter(None, (row, arg)))} for row in rows]

r"""CIFAR-10 with Swin-T and KSwin-T (Krause attention inside the Swin windows).

    python -m krause.main --config configs/cifar_swin.py:model=kswin_t \
        --workdir runs/cifar10_kswin_t --config.input.data_dir ~/tensorflow_datasets

Both rows, seeds and the table beside the paper's: `python -m krause.reproduce swin`.

Arguments (after the colon, comma separated):
  model=swin_t|kswin_t   (default kswin_t)
  dataset=cifar10|cifar100   (the paper reports CIFAR-10)
  decay_all       weight-decay every parameter, as the paper's reference code does
  smoke           a tiny Swin (embed 16, depths 2-0-1-0), 3 steps of 8 images

The paper's numbers are listed at the end of this docstring (from `krause.paper`); KSwin-T has
one sigma per head per block.

Recipe (experiments.md): the CIFAR ViT recipe (AdamW (0.9, 0.999), batch 256, 300 epochs, cosine,
clipping 1.0, RandomCrop pad 4, flip, CutMix/MixUp, smoothing 0.1, seed 3407) with lr 2e-3,
wd 0.01, 20 warm-up epochs, drop-path 0.1 and RandomErasing 0.25; window 4, patch 4, embed 96,
depths 2-2-6-2, heads 3-6-12-24; KSwin sigma0 4.0 per head, no top-k.
Runtime: not measured here (no accelerator).
"""

from krause import paper
from krause.data import get_dataset_info
from krause.train import config as tc

# The paper's numbers (krause.paper, the one source), appended to this docstring.
__doc__ += "\nPaper, CIFAR-10 (the Swin rows are Swin-T, KSwin-T):\n" + paper.describe("cifar10")

MODELS = ("swin_t", "kswin_t")
SMOKE_MODEL = dict(embed_dim=16, depths=(2, 0, 1, 0), heads=(1, 1, 2, 2))


def get_config(arg=None):
    arg = tc.parse_arg(arg, model="kswin_t", dataset="cifar10", decay_all=False, smoke=False)
    if arg.model not in MODELS:
        raise ValueError(f"Unknown model {arg.model!r} for Swin on CIFAR; known: {list(MODELS)}.")
    info = get_dataset_info(arg.dataset)
    model = dict(num_classes=info.num_classes, drop_path_rate=0.1)
    if arg.smoke:
        model.update(SMOKE_MODEL)

    config = tc.base_config()
    config.seed = 3407
    config.model_name = arg.model
    config.model = tc.model_config(arg.model, **model)
    config.input = tc.input_config(arg.dataset, "cifar_swin", global_batch_size=256)
    config.cache_dataset = True  # small dataset: decode once, keep in memory
    config.total_epochs = 300.0
    config.warmup_epochs = 20.0
    config.lr = 2e-3
    config.wd = 0.01
    config.grad_clip_norm = 1.0
    config.decay_all = arg.decay_all
    config.log_every_steps = 100
    config.eval_every_epochs = 10.0
    config.checkpoint_every_epochs = 5.0

    if arg.smoke:
        tc.shrink_to_smoke(config)
    return config


def get_sweep(arg=None):
    """Both rows (Swin-T, KSwin-T on CIFAR-10); `arg` (e.g. "smoke") is added to each."""
    return [{"arg": ",".join(filter(None, (f"model={m}", arg)))} for m in MODELS]

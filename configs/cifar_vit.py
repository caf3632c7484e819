r"""CIFAR-10/100 with ViT-{T,S,B}/4 and KViT-{T,S,B}/4: the paper's CIFAR tables and ablations.

One table row (the paper's recipe is the default):

    python -m krause.main --config configs/cifar_vit.py:model=kvit_s4,dataset=cifar10 \
        --workdir runs/cifar10_kvit_s4 --config.input.data_dir ~/tensorflow_datasets

Every row: `python -m krause.sweep --config configs/cifar_vit.py --workdir_root runs/cifar`.
Data: `python -m krause.data.prepare --dataset cifar10 --archive_dir DIR` (cifar-10-python.tar.gz).

Arguments (after the colon, comma separated):
  model=vit_t4|vit_s4|vit_b4|kvit_t4|kvit_s4|kvit_b4   (default kvit_s4)
  dataset=cifar10|cifar100                             (default cifar10)
  rope            2-D axial RoPE on q and k (the "(RoPE)" rows; no extra parameters)
  top_k=none      Krause without top-k (ablation); top_k=K sets k0 (default: the model's, 2)
  locality=false  every token sees every token (with top_k=none: the "RBF only" ablation)
  layout=paper|pre_ln|post_ln   paper: KViT post-LN + drop-path, ViT pre-LN (the paper's
                  comparison); pre_ln/post_ln: the same block for both (controlled comparison)
  decay_all       weight-decay every parameter, as the paper's reference code does
  smoke           a tiny model, 3 steps of 8 images (seconds on a CPU)

Paper (top-1 %, test set; we report the final epoch, no checkpoint selection):
  CIFAR-10   KViT-T 93.81  ViT-T 90.75 | KViT-S 95.20  ViT-S 93.33 | KViT-B 95.35  ViT-B 92.45
             (RoPE) KViT-B 95.68  ViT-B 94.10
  CIFAR-100  KViT-T 74.34  ViT-T 66.07 | KViT-S 77.05  ViT-S 71.74 | KViT-B 78.03  ViT-B 72.28
             (RoPE) KViT-B 79.65  ViT-B 74.84   (the authors' page swaps the S pair)
  Ablation, CIFAR-10 S: top_k=none 95.59; top_k=none,locality=false (RBF only) 94.06.
Parameters: ViT-T 5,362,762 / KViT-T 5,362,774 on CIFAR-10 (+12 = one log_sigma per layer).

Recipe (experiments.md): AdamW (0.9, 0.999), lr 3e-4, wd 0.05, batch 256, 300 epochs (58,593
steps), 10 linear warm-up epochs then cosine to 0, clipping at global norm 1.0; RandomCrop 32 pad 4,
flip, CutMix(1.0) p 0.8 else MixUp(0.8) on every batch, label smoothing 0.1; seed 3407; Krause
sigma0 2.5, k0 2, the 4-neighbour window on the 8x8 grid plus CLS.
Runtime: not measured here (no accelerator); a CPU cannot run this recipe in reasonable time.
"""

from krause.data import get_dataset_info
from krause.train import config as tc

MODELS = ("vit_t4", "vit_s4", "vit_b4", "kvit_t4", "kvit_s4", "kvit_b4")
SMOKE_MODEL = dict(depth=2, width=32, heads=2, mlp_dim=64)


def get_config(arg=None):
    arg = tc.parse_arg(
        arg,
        model="kvit_s4",
        dataset="cifar10",
        rope=False,
        top_k="default",
        locality=True,
        layout="paper",
        decay_all=False,
        smoke=False,
    )
    if arg.model not in MODELS:
        raise ValueError(f"Unknown model {arg.model!r} for CIFAR; known: {list(MODELS)}.")
    info = get_dataset_info(arg.dataset)
    model = dict(num_classes=info.num_classes, layout=arg.layout, rope=arg.rope)
    model.update(locality=arg.locality)
    if arg.top_k != "default":
        model["k0"] = None if arg.top_k is None else int(arg.top_k)
    if arg.smoke:
        model.update(SMOKE_MODEL)

    config = tc.base_config()
    config.seed = 3407
    config.model_name = arg.model
    config.model = tc.model_config(arg.model, **model)
    config.input = tc.input_config(arg.dataset, "cifar", global_batch_size=256)
    config.cache_dataset = True  # small dataset: decode once, keep in memory
    config.total_epochs = 300.0
    config.warmup_epochs = 10.0
    config.lr = 3e-4
    config.wd = 0.05
    config.adam.b1, config.adam.b2 = 0.9, 0.999
    config.grad_clip_norm = 1.0
    config.decay_all = arg.decay_all
    config.log_every_steps = 100
    config.eval_every_epochs = 10.0
    config.checkpoint_every_epochs = 5.0

    if arg.smoke:
        tc.shrink_to_smoke(config)
    return config


def get_sweep(arg=None):
    """Every row of the CIFAR tables and the ablation; `arg` (e.g. "smoke") is added to each."""
    rows = [f"model={m},dataset={d}" for d in ("cifar10", "cifar100") for m in MODELS]
    rows += [
        f"model={m},dataset={d},rope"
        for d in ("cifar10", "cifar100")
        for m in ("vit_b4", "kvit_b4")
    ]
    rows += ["model=kvit_s4,dataset=cifar10,top_k=none"]
    rows += ["model=kvit_s4,dataset=cifar10,top_k=none,locality=false"]
    return [{"arg": ",".join(filter(None, (row, arg)))} for row in rows]

r"""CIFAR-10/100 with ViT-{T,S,B}/4 and KViT-{T,S,B}/4: the paper's CIFAR tables and ablations.

One table row (the paper's recipe is the default):

    python -m krause.main --config configs/cifar_vit.py:model=kvit_s4,dataset=cifar10 \
        --workdir runs/cifar10_kvit_s4 --config.input.data_dir ~/tensorflow_datasets

Every row: `python -m krause.sweep --config configs/cifar_vit.py --workdir_root runs/cifar`.
Data: `python -m krause.data.prepare --dataset cifar10 --archive_dir DIR` (cifar-10-python.tar.gz).

Arguments (after the colon, comma separated):
  model=vit_t4|vit_s4|vit_b4|kvit_t4|kvit_s4|kvit_b4   (default kvit_s4)
  dataset=cifar10|cifar100                             (default cifar10)
  layout, rope, top_k, locality, decay_all, smoke      the ViT variants (krause.train.vit_variants)

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
from krause.train import vit_variants as vv

MODELS = ("vit_t4", "vit_s4", "vit_b4", "kvit_t4", "kvit_s4", "kvit_b4")


def get_config(arg=None):
    arg, model = vv.parse_vit_arg(arg, models=MODELS, default_model="kvit_s4", dataset="cifar10")
    model["num_classes"] = get_dataset_info(arg.dataset).num_classes
    config_input = tc.input_config(arg.dataset, "cifar", global_batch_size=256)
    config = vv.cifar_recipe(vv.vit_config(arg, model, config_input))
    config.cache_dataset = True  # small dataset: decode once, keep in memory
    return vv.finish(config, arg)


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

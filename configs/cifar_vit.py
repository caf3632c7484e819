r"""CIFAR-10/100 with ViT-{T,S,B}/4 and KViT-{T,S,B}/4: the paper's CIFAR tables and ablations.

One table row (the paper's recipe is the default):

    python -m krause.main --config configs/cifar_vit.py:model=kvit_s4,dataset=cifar10 \
        --workdir runs/cifar10_kvit_s4 --config.input.data_dir ~/tensorflow_datasets

Every row, with seeds and the table beside the paper's: `python -m krause.reproduce cifar10`
(`cifar100`, `cifar_ablation`).
Data: `python -m krause.data.prepare --dataset cifar10 --archive_dir DIR` (cifar-10-python.tar.gz).

Arguments (after the colon, comma separated):
  model=vit_t4|vit_s4|vit_b4|kvit_t4|kvit_s4|kvit_b4   (default kvit_s4)
  dataset=cifar10|cifar100                             (default cifar10)
  layout, rope, top_k, locality, decay_all, smoke      the ViT variants (krause.train.vit_variants)

The paper's numbers are listed at the end of this docstring (from `krause.paper`); we report the
final epoch's test accuracy, no checkpoint selection.

Recipe (experiments.md): AdamW (0.9, 0.999), lr 3e-4, wd 0.05, batch 256, 300 epochs (58,593
steps), 10 linear warm-up epochs then cosine to 0, clipping at global norm 1.0; RandomCrop 32 pad 4,
flip, CutMix(1.0) p 0.8 else MixUp(0.8) on every batch, label smoothing 0.1; seed 3407; Krause
sigma0 2.5, k0 2, the 4-neighbour window on the 8x8 grid plus CLS.
Runtime: not measured here (no accelerator); a CPU cannot run this recipe in reasonable time.
"""

from krause import paper
from krause.data import get_dataset_info
from krause.train import config as tc
from krause.train import vit_variants as vv

# The paper's numbers (krause.paper, the one source), appended to this docstring.
__doc__ += "\nPaper, CIFAR-10:\n" + paper.describe("cifar10")
__doc__ += "\nPaper, CIFAR-100:\n" + paper.describe("cifar100")

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

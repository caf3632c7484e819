r"""ImageNet-1K with ViT-{S,B}/{16,32} and KViT-{S,B}/{16,32}: the paper's ImageNet table.

One table row (the paper's recipe is the default):

    python -m krause.main --config configs/imagenet_vit.py:model=kvit_s16 \
        --workdir runs/in1k_kvit_s16 --config.input.data_dir ~/tensorflow_datasets

Every row, with seeds and the table beside the paper's: `python -m krause.reproduce imagenet`.
Data: `python -m krause.data.prepare --dataset imagenet2012 --archive_dir DIR` (the official
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar); the test metric is on the 50,000 validation
images, the usual ImageNet "test" set.

Arguments (after the colon, comma separated):
  model=vit_s16|vit_s32|vit_b16|vit_b32|kvit_s16|kvit_s32|kvit_b16|kvit_b32   (default kvit_s16)
  layout, rope, top_k, locality, decay_all, smoke   the ViT variants (krause.train.vit_variants);
                  smoke runs on 64x64 crops

The paper's numbers are listed at the end of this docstring (from `krause.paper`).

Recipe (experiments.md): AdamW (0.9, 0.999), wd 0.05, global batch 1024, 300 epochs (375,300
steps), 10 warm-up epochs then cosine, lr 1e-3 (ViT) / 5e-4 (KViT), RandomResizedCrop(224, 0.08-1),
flip, RandAugment(2, 9), RandomErasing 0.25, CutMix/MixUp as on CIFAR, label smoothing 0.1 on the
mixed targets, bf16 compute; B models add ColorJitter 0.4. Krause: sigma0 4.5 (S) / 9.0 (B), k0 8,
drop-path 0.1, the clipped 5x5 window plus CLS. Clipping at global norm 1.0 as in the CIFAR recipe
(the paper does not state it for ImageNet). Runtime: not measured here (no accelerator).
"""

from krause import paper
from krause.train import config as tc
from krause.train import vit_variants as vv

# The paper's numbers (krause.paper, the one source), appended to this docstring.
__doc__ += "\nPaper, ImageNet-1K:\n" + paper.describe("imagenet2012")

MODELS = (
    "vit_s16",
    "vit_s32",
    "vit_b16",
    "vit_b32",
    "kvit_s16",
    "kvit_s32",
    "kvit_b16",
    "kvit_b32",
)


def get_config(arg=None):
    arg, model = vv.parse_vit_arg(arg, models=MODELS, default_model="kvit_s16")
    model["num_classes"] = 1000
    if arg.smoke:
        model["image_size"] = 64
    base = get_model_size(arg.model) == "b"
    config_input = tc.input_config(
        "imagenet2012",
        "imagenet_b" if base else "imagenet",
        global_batch_size=1024,
        eval_batch_size=1000,
        worker_count=8,  # grain worker processes for JPEG decoding and augmentation
    )
    config = vv.vit_config(arg, model, config_input)
    config.dtype = "bfloat16"
    config.total_epochs = 300.0
    config.warmup_epochs = 10.0
    config.lr = 5e-4 if config.model.attention == "krause" else 1e-3
    config.wd = 0.05
    config.grad_clip_norm = 1.0
    config.log_every_steps = 100
    config.eval_every_epochs = 5.0
    config.checkpoint_every_steps = 2000

    if arg.smoke:
        config.input.image_size = 64
        config.input.worker_count = 0
        config.dtype = "float32"
    return vv.finish(config, arg)


def get_model_size(name: str) -> str:
    """ "s" or "b" of an ImageNet ViT name such as "kvit_b16"."""
    return name.removeprefix("k").removeprefix("vit_")[0]


def get_sweep(arg=None):
    """Every row of the ImageNet table; `arg` (e.g. "smoke") is added to each."""
    rows = [f"model={m}" for m in MODELS]
    rows += ["model=vit_b16,rope", "model=kvit_b16,rope"]
    return [{"arg": ",".join(filter(None, (row, arg)))} for row in rows]

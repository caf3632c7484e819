"""Every config file and variant loads, resolves its durations and builds its model.

Models are built with `jax.eval_shape` (shapes only, nothing allocated). The table rows' parameter
counts must equal the paper's (experiments.md), which pins the config -> model wiring.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from krause.data import get_dataset_info
from krause.models import get_model
from krause.paper import PAPER, row_name
from krause.train import config as tc

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# The Krause system's config files (the Goldstone system's configs/goldstone_*.py have their own
# tests in tests/test_goldstone*.py).
FILES = sorted(p.name for p in CONFIGS.glob("*.py") if not p.name.startswith("goldstone"))

# The configs of table rows whose parameter count the paper gives (krause.paper).
ROW_CONFIGS = [
    ("cifar_vit.py", "model=vit_t4,dataset=cifar10"),
    ("cifar_vit.py", "model=kvit_t4,dataset=cifar10"),
    ("cifar_vit.py", "model=vit_s4,dataset=cifar10"),
    ("cifar_vit.py", "model=kvit_s4,dataset=cifar10"),
    ("cifar_vit.py", "model=vit_b4,dataset=cifar10"),
    ("cifar_vit.py", "model=kvit_b4,dataset=cifar10"),
    ("cifar_vit.py", "model=vit_t4,dataset=cifar100"),
    ("cifar_vit.py", "model=kvit_t4,dataset=cifar100"),
    ("cifar_vit.py", "model=vit_s4,dataset=cifar100"),
    ("cifar_vit.py", "model=kvit_s4,dataset=cifar100"),
    ("cifar_vit.py", "model=vit_b4,dataset=cifar100"),
    ("cifar_vit.py", "model=kvit_b4,dataset=cifar100"),
    ("cifar_vit.py", "model=vit_b4,dataset=cifar10,rope"),
    ("cifar_vit.py", "model=kvit_b4,dataset=cifar10,rope"),
    ("cifar_vit.py", "model=vit_b4,dataset=cifar100,rope"),
    ("cifar_vit.py", "model=kvit_b4,dataset=cifar100,rope"),
    ("cifar_vit.py", "model=kvit_s4,dataset=cifar10,top_k=none"),
    ("cifar_vit.py", "model=kvit_s4,dataset=cifar10,top_k=none,locality=false"),
    ("imagenet_vit.py", "model=vit_s16"),
    ("imagenet_vit.py", "model=kvit_s16"),
    ("imagenet_vit.py", "model=vit_s32"),
    ("imagenet_vit.py", "model=kvit_s32"),
    ("imagenet_vit.py", "model=vit_b16"),
    ("imagenet_vit.py", "model=kvit_b16"),
    ("imagenet_vit.py", "model=vit_b32"),
    ("imagenet_vit.py", "model=kvit_b32"),
    ("imagenet_vit.py", "model=vit_b16,rope"),
    ("imagenet_vit.py", "model=kvit_b16,rope"),
    ("cifar_swin.py", "model=swin_t"),
    ("cifar_swin.py", "model=kswin_t"),
    ("pixel_ar.py", "dataset=mnist,attention=krause"),
    ("pixel_ar.py", "dataset=mnist,attention=linear"),
    ("pixel_ar.py", "dataset=mnist,attention=softmax"),
    ("pixel_ar.py", "dataset=mnist,attention=krause,window=none,top_k=none"),
    ("pixel_ar.py", "dataset=cifar10,attention=krause"),
    ("pixel_ar.py", "dataset=cifar10,attention=linear"),
    ("pixel_ar.py", "dataset=cifar10,attention=softmax"),
]

# Variants beyond the sweeps: smoke runs, the quick start, layouts and flags.
EXTRA = {
    "cifar_vit.py": [
        None,
        "smoke",
        "model=vit_t4,smoke",
        "model=kvit_t4,layout=pre_ln",
        "model=vit_t4,layout=post_ln",
        "model=kvit_s4,locality=false",
        "model=kvit_s4,top_k=3,decay_all",
    ],
    "imagenet_vit.py": [None, "smoke", "model=vit_b32,smoke", "model=kvit_s16,layout=pre_ln"],
    "cifar_swin.py": [None, "smoke", "model=swin_t,smoke,dataset=cifar100"],
    "pixel_ar.py": [
        None,
        "smoke",
        "dataset=cifar10,attention=linear,smoke",
        "dataset=fashion_mnist,attention=softmax",
        "dataset=mnist,window=64,top_k=32",
    ],
    "fashion_mnist_vit.py": [
        None,
        "smoke",
        "model=vit_t4,quickstart",
        "model=kvit_t4,quickstart",
        "model=vit_t4,layout=pre_ln",
    ],
}


def _variants() -> list[tuple[str, str | None]]:
    variants = []
    for file in FILES:
        module = tc.load_config_module(CONFIGS / file)
        variants += [(file, run.get("arg")) for run in module.get_sweep(None)]
        variants += [(file, arg) for arg in EXTRA.get(file, [None])]
    return variants


VARIANTS = _variants()


def test_every_config_file_is_covered():
    assert set(EXTRA) == set(FILES)
    assert set(ROW_CONFIGS) <= set(VARIANTS)


@pytest.mark.parametrize(("file", "arg"), VARIANTS, ids=[f"{f}:{a}" for f, a in VARIANTS])
def test_config_loads_and_builds_its_model(file, arg):
    config = tc.load_config(f"{CONFIGS / file}:{arg}" if arg else str(CONFIGS / file))
    info = get_dataset_info(config.input.dataset)
    # Durations resolve to positive step counts; smoke runs are a few steps.
    batch = config.input.global_batch_size
    total = tc.resolve_steps(config, "total", steps_per_epoch=info.num_train / batch)
    assert total and total > 0
    steps = {  # periods longer than the run mean: only at the last step
        prefix: tc.resolve_steps(
            config, prefix, steps_per_epoch=info.num_train / batch, total_steps=total
        )
        for prefix in ("warmup", "eval_every", "checkpoint_every")
    }
    assert 0 <= steps["warmup"] < total
    assert steps["eval_every"] > 0 and steps["checkpoint_every"] > 0
    if arg and "smoke" in arg:
        assert total <= 5 and batch <= 8
    assert config.seed == 3407
    assert config.to_json_best_effort()  # what the trainer saves

    model = get_model(config.model_name, **config.model.to_dict())
    size = config.input.image_size or info.image_shape[0]
    channels = info.image_shape[2]
    if config.input.output == "tokens":
        x = jax.ShapeDtypeStruct((1, size * size * channels), jnp.int32)
    else:
        x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
        assert model.num_classes == info.num_classes
    shapes = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x, train=False), x)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
    if (file, arg) in ROW_CONFIGS:
        row = row_name(config.model_name, config.model.to_dict())
        assert count == PAPER[(config.input.dataset, row)][2]


def test_paper_recipes_are_the_defaults():
    cifar = tc.load_config(f"{CONFIGS / 'cifar_vit.py'}:model=kvit_s4")
    assert (cifar.lr, cifar.wd, cifar.input.global_batch_size) == (3e-4, 0.05, 256)
    assert (cifar.total_epochs, cifar.warmup_epochs, cifar.grad_clip_norm) == (300, 10, 1.0)
    assert cifar.input.cutmix_prob == 0.8 and cifar.input.label_smoothing == 0.1
    assert cifar.model.sigma0 == 2.5 and cifar.model.k0 == 2 and not cifar.decay_all
    imagenet = {
        m: tc.load_config(f"{CONFIGS / 'imagenet_vit.py'}:model={m}")
        for m in ("vit_b16", "kvit_b16")
    }
    assert imagenet["vit_b16"].lr == 1e-3 and imagenet["kvit_b16"].lr == 5e-4
    assert imagenet["kvit_b16"].model.sigma0 == 9.0 and imagenet["kvit_b16"].dtype == "bfloat16"
    assert imagenet["kvit_b16"].input.color_jitter == 0.4
    swin = tc.load_config(str(CONFIGS / "cifar_swin.py"))
    assert (swin.lr, swin.wd, swin.warmup_epochs, swin.input.random_erasing) == (
        2e-3,
        0.01,
        20,
        0.25,
    )
    pixels = tc.load_config(f"{CONFIGS / 'pixel_ar.py'}:dataset=cifar10")
    assert (pixels.input.global_batch_size, pixels.warmup_fraction, pixels.wd) == (8, 0.05, 0.01)
    assert pixels.model.window == 256 and pixels.model.top_k == 192


def test_config_argument_parsing():
    arg = tc.parse_arg(
        "model=kvit_b4,rope,top_k=none,lr=0.5", model="x", rope=False, top_k=2, lr=1.0
    )
    assert (arg.model, arg.rope, arg.top_k, arg.lr) == ("kvit_b4", True, None, 0.5)
    with pytest.raises(ValueError, match="Unknown config argument 'ropee'"):
        tc.parse_arg("ropee", rope=False)
    with pytest.raises(ValueError, match="is not a boolean"):
        tc.parse_arg("rope=maybe", rope=False)


@pytest.mark.parametrize(("file", "arg"), ROW_CONFIGS, ids=[f"{f}:{a}" for f, a in ROW_CONFIGS])
def test_table_row_configs_map_to_the_papers_row(file, arg):
    """krause.reproduce finds each table row's paper number from its config."""
    config = tc.load_config(f"{CONFIGS / file}:{arg}")
    row = row_name(config.model_name, config.model.to_dict())
    assert (config.input.dataset, row) in PAPER, row
    assert PAPER[(config.input.dataset, row)][2] is not None

"""ViT/KViT and Swin/KSwin: parameter counts, layouts, equivalences, neighbourhoods, gradients."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from krause import paper
from krause.attention import dense_mask, densify_weights
from krause.models import get_model, model_names
from krause.models.attention import MultiHeadAttention
from krause.models.layers import DropPath, Mlp, apply_rope, axial_rope_angles
from krause.models.swin import relative_position_bias, window_mask
from krause.models.vit import EncoderBlock, top_k_schedule

TINY_VIT = dict(depth=2, width=32, heads=2, mlp_dim=64)
# blocks on the 8x8 map (the second one shifted) and on the 2x2 map (padded to one 4x4 window)
TINY_SWIN = dict(embed_dim=16, depths=(2, 0, 1, 0), heads=(1, 1, 2, 2))
# XLA's CPU compiler dominates this file's runtime; tests check values, not speed.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def run_jit(fn, *args):
    """jit-compile `fn` for `args` with cheap compiler options and call it."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def key(seed: int = 0) -> jax.Array:
    return jax.random.key(seed, impl="rbg")  # much cheaper to compile than threefry


def param_shapes(model, x):
    return jax.eval_shape(lambda x: model.init({"params": key()}, x, train=False), x)["params"]


def num_params(model, image_size: int) -> int:
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(param_shapes(model, images)))


def random_params(model, x, seed: int = 0):
    """Random parameters of the right structure, drawn with NumPy (no initialiser compiles).

    Kernels ~ N(0, 1 / fan_in), LayerNorm scales ~ 1 + N(0, 0.1^2), log_sigma ~ log(sigma0) +
    N(0, 0.1^2) (distinct per layer/head), everything else ~ N(0, 0.1^2).
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        noise = rng.standard_normal(shape)
        if name == "kernel":
            value = noise / np.sqrt(np.prod(shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.1 * noise
        elif name == "log_sigma":
            value = np.log(model.sigma0) + 0.1 * noise
        else:
            value = 0.1 * noise
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(model, x))


def forward(model, variables, x, **kwargs):
    """Eval-mode `model.apply`, compiled (kwargs such as `mutable` are static)."""
    return run_jit(lambda v, x: model.apply(v, x, train=False, **kwargs), variables, x)


def images(batch: int = 2, size: int = 32, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, size, size, 3)), "f4")


# ---------------------------------------------------------------------------------------------
# Parameter counts: every vision row of the paper that gives one (krause.paper), RoPE rows included.

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
VIT_ROWS = [r for r in paper.RESULTS if r.params and r.dataset in NUM_CLASSES and "vit_" in r.row]
SWIN_ROWS = [r for r in paper.RESULTS if r.params and "swin_" in r.row]


@pytest.mark.parametrize("result", VIT_ROWS, ids=[f"{r.dataset}-{r.row}" for r in VIT_ROWS])
def test_vit_parameter_counts_match_paper(result):
    name, overrides = paper.model_of(result.row)
    model = get_model(name, num_classes=NUM_CLASSES[result.dataset], **overrides)
    assert num_params(model, model.image_size) == result.params


@pytest.mark.parametrize("result", SWIN_ROWS, ids=[r.row for r in SWIN_ROWS])
def test_swin_parameter_counts_match_paper(result):
    assert num_params(get_model(result.row, num_classes=10), 32) == result.params


def test_initialisation():
    """Real `init`: documented initial values, float32 parameters under bf16 computation."""
    vit = get_model(
        "kvit_t4", sigma0=2.5, init_scheme="default", dtype=jnp.bfloat16, **{**TINY_VIT, "depth": 1}
    )
    params = run_jit(lambda x: vit.init({"params": key()}, x, train=False), images())["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    for i in range(vit.depth):
        attention = params[f"block_{i:02d}"]["attention"]
        assert attention["log_sigma"].shape == ()
        np.testing.assert_allclose(attention["log_sigma"], np.log(2.5), rtol=1e-6)
        assert not np.any(attention["query"]["bias"])
        assert np.all(params[f"block_{i:02d}"]["norm1"]["scale"] == 1)
    assert 0.01 < float(jnp.std(params["pos_embedding"])) < 0.03
    kernel_std = float(jnp.std(params["block_00"]["mlp"]["fc1"]["kernel"]))
    assert 0.01 < kernel_std < 0.03 and not np.any(params["cls"])

    swin = get_model("kswin_t", embed_dim=16, depths=(1, 0), heads=(2, 2))
    params = run_jit(lambda x: swin.init({"params": key()}, x, train=False), images())["params"]
    attention = params["stage0_block0"]["attention"]
    np.testing.assert_allclose(attention["log_sigma"], [np.log(4.0)] * 2, rtol=1e-6)
    assert params["stage0_block0"]["relative_position_bias_table"].shape == (49, 2)
    assert "bias" not in params["stage0_merge"]["reduction"]


def _init_params(name, **overrides):
    model = get_model(name, **overrides)
    x = images(size=model.image_size)
    return model, run_jit(lambda x: model.init({"params": key(5)}, x, train=False), x)["params"]


def _assert_uniform(a, bound):
    """Samples of U(-bound, bound): inside the bounds, reaching near them, std bound / sqrt 3."""
    a = np.asarray(a).ravel()
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert abs(a.std() - bound / np.sqrt(3)) < 0.1 * bound / np.sqrt(3)


def test_reference_initialisation_draws_from_the_releases_distributions():
    """init_scheme="reference" (the default of layout "paper"): PyTorch defaults for the Krause ViT,
    torchvision's VisionTransformer for the softmax baseline (experiments.md)."""
    size = dict(depth=1, width=64, heads=2, mlp_dim=256)
    d, m = 64, 256
    model, p = _init_params("kvit_t4", **size)
    assert model.resolved_init() == "reference"
    a = p["block_00"]["attention"]
    for name in ("query", "key", "value", "out"):
        _assert_uniform(a[name]["kernel"], d**-0.5)
        _assert_uniform(a[name]["bias"], d**-0.5)
    _assert_uniform(p["block_00"]["mlp"]["fc1"]["kernel"], d**-0.5)
    _assert_uniform(p["block_00"]["mlp"]["fc2"]["kernel"], m**-0.5)
    _assert_uniform(p["block_00"]["mlp"]["fc2"]["bias"], m**-0.5)
    _assert_uniform(p["patch_embed"]["proj"]["kernel"], (4 * 4 * 3) ** -0.5)
    _assert_uniform(p["head"]["kernel"], d**-0.5)
    assert abs(float(jnp.std(p["pos_embedding"])) - 0.02) < 0.002
    assert abs(float(jnp.std(p["cls"])) - 0.02) < 0.01

    model, p = _init_params("vit_t4", **size)  # the CIFAR baseline
    a = p["block_00"]["attention"]
    for name in ("query", "key", "value"):
        _assert_uniform(a[name]["kernel"], np.sqrt(6 / (d + 3 * d)))
        assert not np.any(a[name]["bias"])
    _assert_uniform(a["out"]["kernel"], d**-0.5)
    assert not np.any(a["out"]["bias"])
    _assert_uniform(p["block_00"]["mlp"]["fc1"]["kernel"], np.sqrt(6 / (d + m)))
    assert 0 < float(jnp.std(p["block_00"]["mlp"]["fc1"]["bias"])) < 2e-6
    assert abs(float(jnp.std(p["pos_embedding"])) - 1.0) < 0.05
    assert (
        not np.any(p["cls"]) and not np.any(p["head"]["kernel"]) and not np.any(p["head"]["bias"])
    )
    _assert_uniform(p["patch_embed"]["proj"]["kernel"], (4 * 4 * 3) ** -0.5)

    _, p = _init_params("vit_s16", image_size=64, **size)  # torchvision's ImageNet stem
    stem = np.asarray(p["patch_embed"]["proj"]["kernel"])
    assert abs(stem.std() - (16 * 16 * 3) ** -0.5) < 0.05 * (16 * 16 * 3) ** -0.5
    assert not np.any(p["patch_embed"]["proj"]["bias"])
    assert abs(float(jnp.std(p["pos_embedding"])) - 0.02) < 0.002

    model, p = _init_params("kvit_t4", layout="pre_ln", **size)  # controlled: our default
    assert model.resolved_init() == "default" and not np.any(
        p["block_00"]["attention"]["query"]["bias"]
    )
    with pytest.raises(ValueError, match="init_scheme must be"):
        _init_params("kvit_t4", init_scheme="torch", **size)


# ---------------------------------------------------------------------------------------------
# Configuration: top-k schedule, layouts, registry.


def test_top_k_schedule_matches_spec():
    assert top_k_schedule(2, 12) == (2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4)
    assert top_k_schedule(8, 12) == (8, 9, 9, 10, 11, 12, 12, 13, 14, 15, 15, 16)
    assert top_k_schedule(None, 12) is None
    assert get_model("kvit_s4").top_k_per_layer() == top_k_schedule(2, 12)
    assert get_model("kvit_b16").top_k_per_layer() == top_k_schedule(8, 12)
    assert get_model("vit_s4").top_k_per_layer() == (None,) * 12
    with pytest.raises(ValueError, match="k0"):
        top_k_schedule(0, 12)


def test_paper_layout_defaults():
    krause, softmax = get_model("kvit_s4"), get_model("vit_s4")
    assert krause.post_ln and not softmax.post_ln
    assert (krause.resolved_layer_norm_eps(), softmax.resolved_layer_norm_eps()) == (1e-5, 1e-6)
    assert (krause.resolved_drop_path_rate(), softmax.resolved_drop_path_rate()) == (0.1, 0.0)
    for layout, post in (
        ("pre_ln", False),
        ("post_ln", True),
    ):  # controlled: only attention differs
        a, b = get_model("kvit_s4", layout=layout), get_model("vit_s4", layout=layout)
        assert a.post_ln == b.post_ln == post
        assert a.resolved_layer_norm_eps() == b.resolved_layer_norm_eps()
        assert a.resolved_drop_path_rate() == b.resolved_drop_path_rate()


def test_neighbourhoods_follow_spec():
    cifar, imagenet = get_model("kvit_t4").neighborhood(), get_model("kvit_s16").neighborhood()
    assert (cifar.height, cifar.radius, cifar.metric, cifar.num_global) == (8, 1, "manhattan", 1)
    assert (imagenet.height, imagenet.radius, imagenet.metric) == (14, 2, "chebyshev")
    assert get_model("kvit_b32").neighborhood().height == 7
    assert get_model("kvit_t4", locality=False).neighborhood().describe().startswith("full")
    mask = dense_mask(cifar)
    assert mask[0].all() and mask[:, 0].all()  # CLS sees all, all see CLS
    assert mask[1 + 9].sum() == 1 + 5  # interior patch (1, 1): CLS + itself + 4 neighbours
    assert mask[1].sum() == 1 + 3  # corner patch (0, 0)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="known models") as err:
        get_model("vit_huge")
    for name in ("vit_t4", "kvit_s16", "swin_t", "kswin_t"):
        assert name in str(err.value)
        assert name in model_names()


# ---------------------------------------------------------------------------------------------
# An independent NumPy-style forward pass of the ViT from its parameters (no Flax, no
# krause.attention), for RBF (Krause without locality/top-k) and softmax attention.


def _layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    """x [..., in] @ W + b for Dense and DenseGeneral parameters (kernel [in..., out...])."""
    return x @ p["kernel"].reshape(x.shape[-1], -1) + p["bias"].reshape(-1)


def _attention(x, p, heads, kind):
    b, n, dim = x.shape
    d = dim // heads
    q, k, v = (_dense(x, p[name]).reshape(b, n, heads, d) for name in ("query", "key", "value"))
    if kind == "rbf":
        sigma = jnp.exp(p["log_sigma"])
        diff = q[:, :, None] - k[:, None, :]  # [b, i, j, h, d]
        scores = -(diff**2).sum(-1) / (2 * sigma**2)  # [b, i, j, h]
    else:
        scores = jnp.einsum("bihd,bjhd->bijh", q, k) / np.sqrt(d)
    scores = scores - scores.max(axis=2, keepdims=True)
    probs = jnp.exp(scores) / jnp.exp(scores).sum(axis=2, keepdims=True)
    out = jnp.einsum("bijh,bjhd->bihd", probs, v).reshape(b, n, dim)
    return _dense(out, p["out"])


def reference_vit(params, x, model, kind):
    patch, dim = model.patch_size, model.width
    b, side = x.shape[0], x.shape[1] // patch
    patches = x.reshape(b, side, patch, side, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    kernel = params["patch_embed"]["proj"]["kernel"].reshape(-1, dim)  # (kh, kw, c) order
    tokens = patches.reshape(b, side * side, -1) @ kernel + params["patch_embed"]["proj"]["bias"]
    cls = jnp.broadcast_to(params["cls"], (b, 1, dim))
    h = jnp.concatenate([cls, tokens], axis=1) + params["pos_embedding"]
    eps = model.resolved_layer_norm_eps()
    gelu = functools.partial(jax.nn.gelu, approximate=False)
    for i in range(model.depth):
        p = params[f"block_{i:02d}"]
        mlp = lambda y, p=p: _dense(gelu(_dense(y, p["mlp"]["fc1"])), p["mlp"]["fc2"])
        if model.post_ln:
            h = _layer_norm(h + _attention(h, p["attention"], model.heads, kind), p["norm1"], eps)
            h = _layer_norm(h + mlp(h), p["norm2"], eps)
        else:
            h = h + _attention(_layer_norm(h, p["norm1"], eps), p["attention"], model.heads, kind)
            h = h + mlp(_layer_norm(h, p["norm2"], eps))
    h = _layer_norm(h, params["final_norm"], eps)
    return _dense(h[:, 0], params["head"])


@pytest.mark.parametrize(
    "overrides",
    [
        dict(locality=False, k0=None),  # RBF over all tokens
        dict(locality=False, k0=65, attention_impl="dense"),  # top-k >= N keeps everything
        dict(radius=7, metric="chebyshev", k0=None, attention_impl="stencil"),  # window >= grid
        dict(radius=14, metric="manhattan", k0=70, layout="pre_ln"),
    ],
    ids=["full", "full_topk_ge_n", "radius_covers_grid", "radius_covers_grid_pre_ln"],
)
def test_krause_vit_with_covering_window_equals_rbf_vit(overrides):
    model = get_model("kvit_t4", sigma0=3.0, **TINY_VIT, **overrides)
    x = images()
    params = random_params(model, x, seed=1)
    ours = forward(model, {"params": params}, x)
    ref = run_jit(lambda p, x: reference_vit(p, x, model, "rbf"), params, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,post_ln", [("vit_t4", False), ("kvit_t4", True)])
def test_paper_layout_forward_matches_reference(name, post_ln):
    """layout="paper": softmax ViT runs pre-LN, Krause ViT post-LN (checked numerically)."""
    overrides = dict(locality=False, k0=None) if name.startswith("k") else {}
    model = get_model(name, **TINY_VIT, **overrides)
    assert model.post_ln == post_ln
    x = images(seed=3)
    params = random_params(model, x, seed=2)
    kind = "rbf" if name.startswith("k") else "softmax"
    ref = run_jit(lambda p, x: reference_vit(p, x, model, kind), params, x)
    np.testing.assert_allclose(forward(model, {"params": params}, x), ref, atol=1e-4)
    # the other layout gives a different function of the same parameters
    other = get_model(name, layout="post_ln" if not post_ln else "pre_ln", **TINY_VIT, **overrides)
    assert not np.allclose(forward(other, {"params": params}, x), ref, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Captured attention weights respect the neighbourhood and the top-k.


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attention_impl="dense"),
        dict(attention_impl="banded"),
        dict(attention_impl="stencil", k0=None),
        dict(attention_impl="stencil", radius=2, metric="chebyshev", k0=3, rope=True),
    ],
    ids=["dense", "banded", "stencil_no_topk", "stencil_chebyshev_rope"],
)
def test_captured_krause_weights_stay_in_neighbourhood(overrides):
    model = get_model("kvit_t4", capture=True, **TINY_VIT, **overrides)
    x = images()
    _, state = forward(model, {"params": random_params(model, x)}, x, mutable=["intermediates"])
    inter = state["intermediates"]
    outside = ~dense_mask(model.neighborhood())
    assert inter["embedding"][0].shape == (2, 65, 32)
    for i, top_k in enumerate(model.top_k_per_layer()):
        block = inter[f"block_{i:02d}"]
        assert block["hidden"][0].shape == (2, 65, 32)
        weights = block["attention"]["attention_weights"][0]
        dense = np.asarray(densify_weights(weights))  # [B, H, N, N]
        assert np.all(dense[:, :, outside] == 0)
        np.testing.assert_allclose(dense.sum(-1), 1.0, atol=1e-5)
        if top_k is not None:
            assert (dense > 0).sum(-1).max() <= top_k


def test_captured_softmax_weights_are_dense_rows():
    model = get_model("vit_t4", capture=True, **TINY_VIT)
    x = images()
    _, state = forward(model, {"params": random_params(model, x)}, x, mutable=["intermediates"])
    weights = state["intermediates"]["block_01"]["attention"]["attention_weights"][0]
    assert weights.shape == (2, 2, 65, 65)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# RoPE: no parameters, relative (translation-invariant on the grid), CLS unrotated.


def test_axial_rope_scores_depend_on_relative_position_only():
    head_dim, side = 16, 8
    angles = axial_rope_angles(side, side, head_dim, 100.0, 1)
    q, k = jnp.asarray(np.random.default_rng(0).standard_normal((2, head_dim)), jnp.float32)
    rot = lambda x: apply_rope(jnp.broadcast_to(x, (1, 1 + side * side, 1, head_dim)), angles)
    rq, rk = rot(q)[0, :, 0], rot(k)[0, :, 0]
    token = lambda r, c: 1 + r * side + c
    score = lambda a, b: float(rq[token(*a)] @ rk[token(*b)])
    assert score((1, 2), (3, 5)) == pytest.approx(score((4, 1), (6, 4)), rel=1e-4)
    assert score((1, 2), (3, 5)) != pytest.approx(score((1, 2), (5, 3)), rel=1e-3)
    np.testing.assert_allclose(rq[0], q, rtol=1e-6)  # CLS is not rotated
    np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(q), rtol=1e-5)


def test_drop_path_drops_whole_examples():
    x = jnp.ones((2000, 3, 4))
    layer = DropPath(0.25)
    assert layer.apply({}, x, train=False) is x
    y = np.asarray(
        run_jit(lambda x, k: layer.apply({}, x, train=True, rngs={"dropout": k}), x, key())
    )
    per_example = y.reshape(2000, -1)
    assert np.all(per_example == per_example[:, :1])  # all or nothing per example
    assert np.allclose(np.unique(y), [0.0, 1 / 0.75])
    assert abs(y.mean() - 1) < 0.05


@pytest.mark.parametrize("post_ln", [False, True])
def test_encoder_block_drop_path_drops_each_branch_per_example(post_ln):
    """Each example's train output is one of the four blocks whose attention and MLP branches are
    scaled by 0 or 1 / keep, built here from the sub-layers without drop-path."""
    batch, width, mlp_dim, rate = 48, 8, 16, 0.5
    block = EncoderBlock(MultiHeadAttention(2), Mlp(mlp_dim), post_ln=post_ln, drop_path_rate=rate)
    x = jax.random.normal(key(1), (batch, 5, width))
    params = block.init({"params": key(2)}, x, train=False)["params"]
    leaves, tree = jax.tree.flatten(params)  # biases start at zero: perturb every parameter
    noisy = [a + 0.3 * jax.random.normal(key(3 + i), a.shape) for i, a in enumerate(leaves)]
    params = jax.tree.unflatten(tree, noisy)
    out = block.apply({"params": params}, x, train=True, rngs={"dropout": key(9)})

    attn = lambda h: MultiHeadAttention(2).apply({"params": params["attention"]}, h)
    mlp = lambda h: Mlp(mlp_dim).apply({"params": params["mlp"]}, h, train=False)
    ln = lambda name, h: nn.LayerNorm(block.layer_norm_eps).apply({"params": params[name]}, h)

    def reference(scale_attn, scale_mlp):
        if post_ln:
            h = ln("norm1", x + scale_attn * attn(x))
            return ln("norm2", h + scale_mlp * mlp(h))
        h = x + scale_attn * attn(ln("norm1", x))
        return h + scale_mlp * mlp(ln("norm2", h))

    scales = (0.0, 1 / (1 - rate))
    candidates = {(a, m): reference(a, m) for a in scales for m in scales}
    seen = set()
    for i in range(batch):
        errors = {c: float(jnp.max(jnp.abs(out[i] - ref[i]))) for c, ref in candidates.items()}
        best = min(errors, key=errors.get)
        assert errors[best] < 1e-4, errors
        seen.add(best)
    assert len(seen) == 4  # every combination occurs (p of missing one ~ 4 * 0.75^48)


# ---------------------------------------------------------------------------------------------
# Every variant jits and has finite gradients (tiny sizes).

VARIANTS = [
    ("vit_t4", dict(layout="paper")),
    ("vit_t4", dict(layout="post_ln", rope=True)),
    ("kvit_t4", dict(layout="paper", rope=True)),
    ("kvit_t4", dict(layout="pre_ln", dropout_rate=0.1)),
    ("kvit_t4", dict(k0=None)),
    ("kvit_t4", dict(locality=False)),
    ("kvit_t4", dict(locality=False, k0=None, attention_impl="reference")),
    ("kvit_t4", dict(attention_impl="stencil", dtype=jnp.bfloat16)),
    ("kvit_s16", dict(image_size=48, num_classes=7, attention_impl="banded")),  # 3x3 grid
    ("swin_t", TINY_SWIN),
    ("kswin_t", TINY_SWIN),
]


@pytest.mark.parametrize(
    "name,overrides", VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS]
)
def test_variant_jits_with_finite_gradients(name, overrides):
    swin = "swin" in name
    if not swin:
        overrides = {**TINY_VIT, "depth": 1, **overrides}
    model = get_model(name, **overrides)
    x = images(size=model.image_size)
    labels = jnp.array([0, 1])
    params = random_params(model, x)

    def loss_and_grads(params, rng):
        def loss_fn(params):
            logits = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
            logp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean(), logits

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, logits), grads = run_jit(loss_and_grads, params, key(1))
    assert np.isfinite(float(loss))
    assert logits.shape == (2, model.num_classes) and logits.dtype == jnp.float32
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for path, g in leaves:
        assert np.all(np.isfinite(np.asarray(g, np.float32))), jax.tree_util.keystr(path)
    sigma_grads = [np.any(np.asarray(g) != 0) for p, g in leaves if "log_sigma" in str(p)]
    if model.attention == "softmax":
        assert not sigma_grads
    else:
        assert len(sigma_grads) == (sum(model.depths) if swin else model.depth)
        assert all(sigma_grads)


# ---------------------------------------------------------------------------------------------
# Swin windows: masks and the (K)Swin window attention formula.


def test_shifted_window_mask_allows_only_unwrapped_pairs():
    side, window, shift = 8, 4, 2
    mask = window_mask(side, side, window, (shift, shift))
    # original (unrolled) coordinates of every token of every window
    rolled = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1)
    original = (rolled + shift) % side
    tiles = original.reshape(2, window, 2, window, 2).transpose(0, 2, 1, 3, 4).reshape(4, -1, 2)
    near = np.all(np.abs(tiles[:, :, None] - tiles[:, None, :]) < window, axis=-1)
    np.testing.assert_array_equal(mask, near)
    assert window_mask(side, side, window, (0, 0)) is None
    padded = window_mask(2, 2, window, (0, 0))  # 2x2 map padded to one 4x4 window
    assert padded.shape == (1, 16, 16)
    assert padded[0, :, [0, 1, 4, 5]].all() and padded[0, 0].sum() == 4


@pytest.mark.parametrize("attention", ["softmax", "krause"])
def test_window_attention_matches_formula(attention):
    heads, window, dim = 2, 4, 16
    n, d = window * window, dim // heads
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, n, dim)), jnp.float32)
    mask = jnp.asarray(window_mask(8, 8, window, (2, 2)))[:, None]  # [4 windows, 1, N, N]
    krause = attention == "krause"
    module = MultiHeadAttention(
        heads, attention=attention, sigma0=4.0, sigma_per_head=True, scale_qk=krause
    )
    table = jax.random.normal(key(2), ((2 * window - 1) ** 2, heads))
    bias_hij = relative_position_bias(table, window)
    params = run_jit(lambda x: module.init(key(1), x, mask=mask, bias=bias_hij), x)["params"]
    out = run_jit(lambda p, x: module.apply({"params": p}, x, mask=mask, bias=bias_hij), params, x)

    q, k, v = (_dense(x, params[m]).reshape(4, n, heads, d) for m in ("query", "key", "value"))
    coords = np.stack(np.divmod(np.arange(n), window), -1)
    rel = coords[:, None] - coords[None, :] + window - 1
    bias = table[rel[..., 0] * (2 * window - 1) + rel[..., 1]]  # [i, j, h]
    if attention == "krause":
        sigma = jnp.exp(params["log_sigma"])
        dist = (((q[:, :, None] - k[:, None, :]) / np.sqrt(d)) ** 2).sum(-1)  # [w, i, j, h]
        scores = -dist / (2 * sigma**2) + bias
    else:
        scores = jnp.einsum("wihd,wjhd->wijh", q, k) / np.sqrt(d) + bias
    scores = jnp.where(jnp.moveaxis(mask, 1, -1), scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=2)
    ref = _dense(jnp.einsum("wijh,wjhd->wihd", probs, v).reshape(4, n, dim), params["out"])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    if attention == "krause":
        assert params["log_sigma"].shape == (heads,)
        np.testing.assert_allclose(jnp.exp(params["log_sigma"]), 4.0, rtol=1e-6)


def test_swin_capture():
    model = get_model("kswin_t", capture=True, **TINY_SWIN)
    x = images()
    _, state = forward(model, {"params": random_params(model, x)}, x, mutable=["intermediates"])
    block = state["intermediates"]["stage0_block1"]
    assert block["hidden"][0].shape == (2, 8, 8, 16)
    weights = block["attention"]["attention_weights"][0]  # [B * 4 windows, heads, 16, 16]
    assert weights.shape == (8, 1, 16, 16)
    mask = np.tile(window_mask(8, 8, 4, (2, 2))[:, None], (2, 1, 1, 1))
    assert np.all(np.asarray(weights)[~np.broadcast_to(mask, weights.shape)] == 0)

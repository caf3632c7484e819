"""Every model family learns: the loss on a fixed small batch falls well below its start.

Tiny models, AdamW, a few dozen steps on one batch (memorising random labels for the classifiers;
sequences whose next pixel follows from the previous one for the pixel models).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from krause.models import get_model

TINY_VIT = dict(depth=2, width=32, heads=2, mlp_dim=64, image_size=16, patch_size=4)
TINY_SWIN = dict(embed_dim=16, depths=(1, 1), heads=(1, 2), window=2)
TINY_PIXEL = dict(image_shape=(4, 4, 1), width=32, depth=2, heads=2, dropout_rate=0.0)


def fit(model, inputs, loss_of_logits, steps: int, lr: float) -> tuple[float, float]:
    """(first loss, last loss) of `steps` AdamW steps on one batch."""
    init = jax.jit(lambda x: model.init({"params": jax.random.key(0)}, x, train=False))
    params = init(inputs)["params"]
    tx = optax.adamw(lr, weight_decay=0.0)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, inputs, train=True, rngs={"dropout": key})
            return loss_of_logits(logits)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for key in jax.random.split(jax.random.key(1), steps):
        params, opt_state, loss = step(params, opt_state, key)
        losses.append(float(loss))
    return losses[0], losses[-1]


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("vit_t4", dict(TINY_VIT, layout="pre_ln")),
        ("kvit_t4", dict(TINY_VIT, layout="paper", k0=2)),
        ("swin_t", dict(TINY_SWIN, drop_path_rate=0.0)),
        ("kswin_t", dict(TINY_SWIN, drop_path_rate=0.0)),
    ],
)
def test_classifiers_memorise_a_batch(name, overrides):
    rng = np.random.default_rng(0)
    model = get_model(name, num_classes=4, **overrides)
    size = overrides.get("image_size", 16)
    images = jnp.asarray(rng.standard_normal((8, size, size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, 8))
    loss = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    first, last = fit(model, images, loss, steps=40, lr=3e-3)
    assert first > 1.0 and last < 0.3 * first, (first, last)


@pytest.mark.parametrize("attention", ["softmax", "linear", "krause"])
def test_pixel_models_learn_a_predictable_sequence(attention):
    """Pixel t = pixel t-1 + 17 (mod 256) from a random start: after the first pixel every
    token is determined by the previous one, so the loss falls far below ln 256 = 5.5."""
    model = get_model("pixel_ar_mnist", attention=attention, window=8, top_k=4, **TINY_PIXEL)
    start = np.random.default_rng(0).integers(0, 256, (8, 1))
    tokens = jnp.asarray((start + 17 * np.arange(16)) % 256, jnp.int32)
    loss = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()
    first, last = fit(model, tokens, loss, steps=60, lr=1e-2)
    assert first > 5.0 and last < 0.3 * first, (first, last)

"""Losses and test metrics of the two task families, chosen by the input's `output`.

classification (`output="image"`): the training loss is the softmax cross-entropy with the
batch's soft targets (one-hot, mixed and smoothed by the input pipeline); the test metrics are
top-1 accuracy and the cross-entropy with the true labels, over the whole test split.

pixels (`output="tokens"`): the loss is the mean cross-entropy (nats) of every sub-pixel given
the previous ones. The test metric is bits per dimension over the whole test split:

    bpd = (total NLL in nats) / (num_test_images * H * W * C) / ln 2,

every sub-pixel counted, including the first one (predicted from nothing): the denominator is
784 per MNIST image and 3072 per CIFAR-10 image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

TASKS = ("classification", "pixels")


def task_of(input_config) -> str:
    return "pixels" if input_config.output == "tokens" else "classification"


def model_input(task: str, batch):
    return batch["tokens"] if task == "pixels" else batch["image"]


def train_loss(task: str, logits: jax.Array, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, metrics) of one training batch."""
    if task == "pixels":
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"]).mean()
        return nll, {"loss": nll, "bpd": nll / math.log(2)}
    loss = optax.softmax_cross_entropy(logits, batch["soft_label"]).mean()
    # Against the un-mixed labels: a rough signal when the batch is mixed.
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, {"loss": loss, "accuracy": accuracy}


def eval_sums(task: str, logits: jax.Array, batch) -> dict[str, jax.Array]:
    """Mask-weighted sums over one test batch (padding examples have mask False)."""
    mask = batch["mask"].astype(jnp.float32)
    if task == "pixels":
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"])
        return {"nll": jnp.sum(nll.sum(-1) * mask), "images": jnp.sum(mask)}
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"nll": jnp.sum(nll * mask), "correct": jnp.sum(correct * mask), "images": jnp.sum(mask)}


def eval_metrics(task: str, sums: dict[str, float], dims_per_image: int) -> dict[str, float]:
    """Test metrics from the sums over the whole test split (float64 on the host)."""
    images = sums["images"]
    if task == "pixels":
        nats_per_dim = sums["nll"] / (images * dims_per_image)
        return {
            "test/bpd": nats_per_dim / math.log(2),
            "test/nll": nats_per_dim,
            "test/images": images,
        }
    return {
        "test/accuracy": sums["correct"] / images,
        "test/loss": sums["nll"] / images,
        "test/images": images,
    }


def add_sums(total: dict[str, float] | None, sums: dict[str, np.ndarray]) -> dict[str, float]:
    sums = {k: float(np.asarray(v, np.float64)) for k, v in sums.items()}
    return sums if total is None else {k: total[k] + v for k, v in sums.items()}

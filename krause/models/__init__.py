"""Flax models, found by name through `get_model(name, **overrides)`.

Each model module exposes `MODELS: dict[str, Callable[..., nn.Module]]`, a factory per registered
name taking keyword overrides of the module's fields.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn


def _registry() -> dict[str, Callable[..., nn.Module]]:
    from krause.models import pixel_ar, swin, vit

    registry: dict[str, Callable[..., nn.Module]] = {}
    for module in (vit, swin, pixel_ar):
        registry.update(module.MODELS)
    return registry


def model_names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_registry())


def get_model(name: str, **overrides) -> nn.Module:
    """Build the registered model `name` with keyword `overrides` of its fields.

    Raises:
      ValueError: unknown name (the message lists the known names).
    """
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(registry))}.")
    return registry[name](**overrides)

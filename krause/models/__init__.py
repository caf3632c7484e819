"""Flax models, found by name through `get_model(name, **overrides)`.

Families: `vit` (ViT / KViT, `krause.models.vit`), `swin` (Swin / KSwin) and `pixel_ar`
(ARM / LARM / KARM). A name of the paper fixes the attention (`vit_t4` softmax, `kvit_t4`
Krause, `swin_t` / `kswin_t`); the pixel models' names do not, so they take `attention=` as a
field. Attention modules of every family: `krause.models.attention.MultiHeadAttention`.
"""

from __future__ import annotations

import functools

import flax.linen as nn


@functools.cache
def _registry() -> dict[str, tuple[str, functools.partial]]:
    """{name: (family, factory)}; each factory is a `functools.partial` of the model class."""
    from krause.models import pixel_ar, swin, vit

    return {
        name: (family, factory)
        for family, module in (("vit", vit), ("swin", swin), ("pixel_ar", pixel_ar))
        for name, factory in module.MODELS.items()
    }


def model_names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_registry())


def model_family(name: str) -> str:
    """ "vit", "swin" or "pixel_ar" (an unknown name raises, listing the known ones)."""
    return _lookup(name)[0]


def _lookup(name: str) -> tuple[str, functools.partial]:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(registry))}.")
    return registry[name]


def get_model(name: str, **overrides) -> nn.Module:
    """Build the registered model `name` with keyword `overrides` of its fields.

    Raises:
      ValueError: unknown name (the message lists the known names), or an `attention` that
        contradicts the name (e.g. `get_model("vit_t4", attention="krause")`: use "kvit_t4").
    """
    _, factory = _lookup(name)
    fixed = factory.keywords.get("attention")
    wanted = overrides.get("attention", fixed)
    if fixed is not None and wanted != fixed:
        siblings = [n for n, (_, f) in _registry().items() if f.keywords.get("attention") == wanted]
        raise ValueError(
            f"model {name!r} has attention={fixed!r}, but attention={wanted!r} was asked for; "
            f"the name fixes the attention. Models with attention={wanted!r}: "
            f"{', '.join(sorted(siblings)) or 'none'}."
        )
    return factory(**overrides)

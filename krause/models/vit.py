"""Vision Transformer with softmax or Krause attention (ViT / KViT).

Architecture (pins the paper's parameter counts exactly): strided-convolution patch embedding with
bias; a learned CLS token (token 0) and a learned position embedding over the N + 1 tokens; `depth`
blocks of multi-head self-attention (q, k, v, o Dense layers with biases) and a GELU MLP; a final
LayerNorm; a Dense classifier on the CLS token. Krause attention adds one `log_sigma` per layer
(sigma = exp(log_sigma), shared by the heads).

Block layouts (`layout=`):
  "paper":   as in the paper: Krause blocks are post-LN, `x = LN(x + DropPath(Attn(x)))`,
             `x = LN(x + DropPath(MLP(x)))`, drop-path linspace(0, 0.1, depth), LayerNorm eps 1e-5;
             the softmax baseline is pre-LN, `x = x + Attn(LN(x))`, `x = x + MLP(LN(x))`, eps 1e-6,
             no drop-path. So the paper's comparison changes more than the attention.
  "pre_ln" / "post_ln": the same block for both attentions (controlled comparison); defaults
             drop-path 0.1 and eps 1e-6 for both.
`drop_path_rate` and `layer_norm_eps` override the layout's defaults. Every layout ends with a final
LayerNorm before the head.

Krause attention (see `krause.attention`): per head, scores -||q_i - k_j||^2 / (2 sigma^2) over the
neighbourhood N(i), top-k, softmax. Neighbourhoods: CIFAR (8x8 grid) a patch sees itself, its 4
von-Neumann neighbours (`radius=1, metric="manhattan"`) and CLS; ImageNet (14x14 or 7x7) the clipped
5x5 window (`radius=2, metric="chebyshev"`) and CLS; CLS sees every token. `locality=False` uses
all tokens (`full(N)`). Top-k of layer l is `top_k_schedule(k0, depth)[l]`; `k0=None` disables
top-k. `rope=True` rotates q and k with 2-D axial RoPE (`layers.axial_rope_angles`; CLS is not
rotated); it adds no parameters and is used together with the learned position embedding.

Initialisation (`init_scheme=`, see `vit_initializers`): "reference" reproduces the authors' release
(PyTorch defaults for the Krause ViT, torchvision's for the softmax baseline) and is the default
under layout "paper"; "default" (trunc-normal 0.02 Dense kernels, zero biases, LeCun-normal patch
convolution, the default of the controlled layouts) is the same for both attentions.

Parameter names the trainer relies on: `.../attention/log_sigma` (Krause width, scalar per block
`block_XX`); embeddings `cls` and `pos_embedding`; LayerNorm `scale`/`bias`; Dense `kernel`/`bias`.

Analysis: with `capture=True` the model sows into the "intermediates" collection (retrieve with
`mutable=["intermediates"]`): `embedding` (tokens entering block 0, [B, N+1, D]) and, per block,
`hidden` (the block's output) and `attention/attention_weights` (Krause: `KrauseWeights`;
softmax: [B, H, N, N]).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from krause.attention import Neighborhood, full, grid_neighborhood
from krause.models.attention import MultiHeadAttention
from krause.models.layers import (
    DropPath,
    Dtype,
    Mlp,
    PatchEmbed,
    dense_init,
    torch_bias_init,
    torch_kernel_init,
    zeros,
)

ATTENTIONS = ("softmax", "krause")
LAYOUTS = ("paper", "pre_ln", "post_ln")
INITS = ("default", "reference")
Initializer = nn.initializers.Initializer


def top_k_schedule(k0: int | None, depth: int) -> tuple[int, ...] | None:
    """Top-k per layer: `round(linspace(k0, 2 * k0, depth))`, round-half-even; None if k0 is None.

    CIFAR k0=2, depth 12: (2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4);
    ImageNet k0=8: (8, 9, 9, 10, 11, 12, 12, 13, 14, 15, 15, 16).
    """
    if k0 is None:
        return None
    if isinstance(k0, bool) or not isinstance(k0, int | np.integer) or k0 < 1:
        raise ValueError(f"k0 must be None (no top-k) or an int >= 1, got {k0!r}.")
    return tuple(int(k) for k in np.round(np.linspace(k0, 2 * k0, depth)))


class ViTInit(NamedTuple):
    """The initialisers of every ViT parameter group (see `vit_initializers`)."""

    patch_kernel: Initializer
    patch_bias: Initializer
    cls: Initializer
    pos_embedding: Initializer
    qkv_kernel: Initializer
    qkv_bias: Initializer
    out_kernel: Initializer
    out_bias: Initializer
    mlp_kernel: Initializer
    mlp_bias: Initializer
    mlp_fc2_bias: Initializer
    head_kernel: Initializer
    head_bias: Initializer


def vit_initializers(
    scheme: str, attention: str, patch_size: int, channels: int, width: int, mlp_dim: int
) -> ViTInit:
    """Initialisers of a ViT under `scheme` ("default" or "reference").

    default (both attentions, timm / big_vision): Dense kernels trunc-normal(0.02), biases 0,
      LeCun-normal patch convolution, CLS 0, position embedding N(0, 0.02), head as the Dense.
    reference (the authors' release; part of the paper's setting):
      Krause ViT: patch convolution and every Linear at PyTorch's default (weights and biases
        U(-1/sqrt(fan_in), 1/sqrt(fan_in))); CLS and position embedding N(0, 0.02) (timm's
        trunc_normal_ cuts at +-2 absolute, i.e. nowhere at std 0.02).
      softmax ViT (torchvision's VisionTransformer): q/k/v xavier-uniform over the fused [3D, D]
        in-projection (U(+-sqrt(6 / 4D))), zero biases; out-projection PyTorch default, zero
        bias; MLP xavier-uniform with N(0, 1e-6) biases; CLS 0; head 0. Patch 4 (the CIFAR
        baseline): a new patch convolution at PyTorch's default and a position embedding
        N(0, 1); otherwise torchvision's stem, N(0, 1 / fan_in) with zero bias, and N(0, 0.02).
    LayerNorm is scale 1, offset 0 everywhere; log_sigma = log(sigma0).
    """
    if scheme not in INITS:
        raise ValueError(f"init_scheme must be one of {INITS}, got {scheme!r}.")
    normal = nn.initializers.normal
    patch_fan_in = patch_size * patch_size * channels
    if scheme == "default":
        return ViTInit(
            nn.initializers.lecun_normal(), zeros, zeros, normal(0.02), dense_init, zeros,
            dense_init, zeros, dense_init, zeros, zeros, dense_init, zeros,
        )  # fmt: skip
    if attention == "krause":
        bias = torch_bias_init(width)
        return ViTInit(
            torch_kernel_init, torch_bias_init(patch_fan_in), normal(0.02), normal(0.02),
            torch_kernel_init, bias, torch_kernel_init, bias, torch_kernel_init, bias,
            torch_bias_init(mlp_dim), torch_kernel_init, bias,
        )  # fmt: skip
    cifar = patch_size == 4
    return ViTInit(
        torch_kernel_init if cifar else nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
        torch_bias_init(patch_fan_in) if cifar else zeros,
        zeros,
        normal(1.0 if cifar else 0.02),
        # xavier-uniform over [3D, D]: bound sqrt(6 / (D + 3D)) = sqrt(3 * 0.5 / D)
        nn.initializers.variance_scaling(0.5, "fan_in", "uniform"),
        zeros,
        torch_kernel_init,
        zeros,
        nn.initializers.xavier_uniform(),
        normal(1e-6),
        normal(1e-6),
        zeros,
        zeros,
    )


class EncoderBlock(nn.Module):
    """Attention + MLP with residuals and drop-path, pre-LN (`post_ln=False`) or post-LN."""

    attention: MultiHeadAttention
    mlp: Mlp
    post_ln: bool = False
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0
    capture: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        norm = functools.partial(
            nn.LayerNorm,
            epsilon=self.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        mlp = self.mlp
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        drop_path = functools.partial(DropPath(self.drop_path_rate), train=train)
        attend = lambda y: drop(self.attention(y, sow_weights=self.capture))
        if self.post_ln:
            x = norm(name="norm1")(x + drop_path(attend(x)))
            x = norm(name="norm2")(x + drop_path(mlp(x, train=train)))
        else:
            x = x + drop_path(attend(norm(name="norm1")(x)))
            x = x + drop_path(mlp(norm(name="norm2")(x), train=train))
        if self.capture:
            self.sow("intermediates", "hidden", x)
        return x


class ViT(nn.Module):
    """ViT / KViT classifier: images [B, H, W, C] float32 (NHWC) -> logits [B, num_classes] float32.

    `model.init({"params": key}, images, train=False)`;
    `model.apply(variables, images, train=True, rngs={"dropout": key})`.
    """

    num_classes: int = 10
    image_size: int = 32
    patch_size: int = 4
    width: int = 192
    depth: int = 12
    heads: int = 3
    mlp_dim: int = 768
    attention: str = "softmax"  # "softmax" | "krause"
    layout: str = "paper"  # "paper" | "pre_ln" | "post_ln"
    drop_path_rate: float | None = None  # None: the layout's default
    layer_norm_eps: float | None = None  # None: the layout's default
    dropout_rate: float = 0.0
    rope: bool = False
    rope_base: float = 100.0
    # Krause attention
    sigma0: float = 2.5
    k0: int | None = 2  # top-k schedule round(linspace(k0, 2 k0, depth)); None: no top-k
    locality: bool = True  # False: every token sees every token (RBF over all tokens)
    radius: int = 1
    metric: str = "manhattan"
    attention_impl: str = "auto"
    init_scheme: str | None = None  # "default" | "reference"; None: "reference" if layout "paper"
    # analysis and precision
    capture: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 1

    @property
    def post_ln(self) -> bool:
        """Whether the blocks are post-LN under this layout and attention."""
        return self.layout == "post_ln" or (self.layout == "paper" and self.attention == "krause")

    def resolved_drop_path_rate(self) -> float:
        if self.drop_path_rate is not None:
            return self.drop_path_rate
        return 0.0 if (self.layout == "paper" and self.attention == "softmax") else 0.1

    def resolved_layer_norm_eps(self) -> float:
        if self.layer_norm_eps is not None:
            return self.layer_norm_eps
        return 1e-5 if (self.layout == "paper" and self.attention == "krause") else 1e-6

    def resolved_init(self) -> str:
        if self.init_scheme is not None:
            return self.init_scheme
        return "reference" if self.layout == "paper" else "default"

    def top_k_per_layer(self) -> tuple[int | None, ...]:
        """Top-k of each block (None: keep the whole neighbourhood); softmax: all None."""
        schedule = top_k_schedule(self.k0, self.depth) if self.attention == "krause" else None
        return schedule if schedule is not None else (None,) * self.depth

    def neighborhood(self) -> Neighborhood | None:
        """The Krause neighbourhood over the N + 1 tokens (None for softmax attention)."""
        if self.attention != "krause":
            return None
        if not self.locality:
            return full(self.num_tokens)
        return grid_neighborhood(*self.grid, self.radius, self.metric, num_global=1)

    def _check(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}.")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}."
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}.")
        if self.init_scheme not in (None, *INITS):
            raise ValueError(
                f"init_scheme must be None or one of {INITS}, got {self.init_scheme!r}."
            )

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        self._check()
        expected = (self.image_size, self.image_size)
        if images.ndim != 4 or images.shape[1:3] != expected:
            raise ValueError(
                f"images must be [B, {expected[0]}, {expected[1]}, C], got {images.shape}."
            )
        init = vit_initializers(
            self.resolved_init(), self.attention, self.patch_size, images.shape[-1], self.width,
            self.mlp_dim,
        )  # fmt: skip
        x = PatchEmbed(
            self.patch_size,
            self.width,
            self.dtype,
            self.param_dtype,
            init.patch_kernel,
            init.patch_bias,
            name="patch_embed",
        )(images)
        batch = x.shape[0]
        x = x.reshape(batch, -1, self.width)
        cls = self.param("cls", init.cls, (1, 1, self.width), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)).astype(x.dtype), x], 1)
        pos = self.param(
            "pos_embedding", init.pos_embedding, (1, self.num_tokens, self.width), self.param_dtype
        )
        x = x + pos.astype(x.dtype)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.capture:
            self.sow("intermediates", "embedding", x)

        nb = self.neighborhood()
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        drop_path = np.linspace(0.0, self.resolved_drop_path_rate(), self.depth)
        for i, top_k in enumerate(self.top_k_per_layer()):
            attention = MultiHeadAttention(
                self.heads,
                attention=self.attention,
                neighborhood=nb,
                top_k=top_k,
                sigma0=self.sigma0,
                rope_grid=self.grid if self.rope else None,
                rope_base=self.rope_base,
                impl=self.attention_impl,
                kernel_init=init.qkv_kernel,
                bias_init=init.qkv_bias,
                out_kernel_init=init.out_kernel,
                out_bias_init=init.out_bias,
                **dtypes,
                parent=None,  # adopted by the block as its `attention`
            )
            mlp = Mlp(
                self.mlp_dim,
                dropout_rate=self.dropout_rate,
                **dtypes,
                kernel_init=init.mlp_kernel,
                bias_init=init.mlp_bias,
                fc2_bias_init=init.mlp_fc2_bias,
                parent=None,
            )
            x = EncoderBlock(
                attention,
                mlp,
                post_ln=self.post_ln,
                layer_norm_eps=self.resolved_layer_norm_eps(),
                drop_path_rate=float(drop_path[i]),
                dropout_rate=self.dropout_rate,
                capture=self.capture,
                **dtypes,
                name=f"block_{i:02d}",
            )(x, train=train)
        x = nn.LayerNorm(
            epsilon=self.resolved_layer_norm_eps(),
            **dtypes,
            name="final_norm",
        )(x)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=init.head_kernel,
            bias_init=init.head_bias,
            **dtypes,
            name="head",
        )(x[:, 0])
        return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Registry: vit_* are softmax ViTs, kvit_* Krause ViTs (the name fixes the attention); any other
# field can be overridden, e.g. get_model("kvit_t4", depth=2, width=32, heads=2, mlp_dim=64).

_SIZES = {
    "t": dict(width=192, depth=12, heads=3, mlp_dim=768),
    "s": dict(width=384, depth=12, heads=6, mlp_dim=1536),
    "b": dict(width=768, depth=12, heads=12, mlp_dim=3072),
}
# CIFAR: 32x32, patch 4 (8x8 grid), 4-neighbour window, k0 2, sigma0 2.5.
_CIFAR = dict(image_size=32, patch_size=4, num_classes=10, radius=1, metric="manhattan", k0=2)
_CIFAR_SIGMA0 = {"t": 2.5, "s": 2.5, "b": 2.5}
# ImageNet: 224x224, patch 16 or 32 (14x14 or 7x7 grid), 5x5 window, k0 8, sigma0 4.5 (S) / 9 (B).
_IMAGENET = dict(image_size=224, num_classes=1000, radius=2, metric="chebyshev", k0=8)
_IMAGENET_SIGMA0 = {"s": 4.5, "b": 9.0}


def _factory(attention: str, size: str, patch: int) -> Callable[..., ViT]:
    if patch == 4:
        defaults = dict(_CIFAR, sigma0=_CIFAR_SIGMA0[size])
    else:
        defaults = dict(_IMAGENET, patch_size=patch, sigma0=_IMAGENET_SIGMA0[size])
    defaults.update(_SIZES[size], attention=attention)
    return functools.partial(ViT, **defaults)


_VARIANTS = (("t", 4), ("s", 4), ("b", 4), ("s", 16), ("s", 32), ("b", 16), ("b", 32))
MODELS: dict[str, Callable[..., nn.Module]] = {
    f"{prefix}_{size}{patch}": _factory(attention, size, patch)
    for prefix, attention in (("vit", "softmax"), ("kvit", "krause"))
    for size, patch in _VARIANTS
}

"""Swin Transformer for small images with softmax or Krause window attention (Swin / KSwin).

Architecture (torchvision's Swin v1 layout; pins the paper's parameter counts, `krause.paper`):
patch embedding = strided convolution with bias + LayerNorm; four
stages of `depths[i]` blocks with `heads[i]` heads, width embed_dim * 2^i; a patch merging between
stages (2x2 neighbourhood concatenated -> LayerNorm(4C) -> Dense(2C) without bias); final LayerNorm,
mean over the tokens, Dense head. Blocks are pre-LN: `x = x + DropPath(WindowAttn(LN(x)))`,
`x = x + DropPath(MLP(LN(x)))`, drop-path linspace(0, rate, number of blocks).

Window attention: the feature map is zero-padded to a multiple of the window (after the
LayerNorm), odd blocks roll it by -shift (cyclic shift); a learned relative-position bias table
[(2 window - 1)^2, heads] per block (its index is a constant, not a parameter) is added to the
scores; shifted windows mask keys from other regions. When the window covers the padded map along
an axis there is no shift along it (torchvision's rule). The window size is never reduced (so the
bias table keeps (2 window - 1)^2 rows at the 2x2 and 1x1 stages of a 32x32 input), and padded
keys are masked (`mask_padding=True`; torchvision lets queries attend to padded zeros,
`mask_padding=False`).

Krause (KSwin): scores `-||q~ - k~||^2 / (2 sigma_h^2) + relative_position_bias (+ shift mask)` with
q~ = q / sqrt(d), k~ = k / sqrt(d), one `log_sigma` per head per block (init log sigma0), no top-k;
the window is the neighbourhood (`krause.attention.rbf_attention` on each window).

Initialisation: Dense trunc-normal 0.02, zero biases, bias table trunc-normal 0.02, LeCun-normal
patch convolution. Analysis: `capture=True` sows per block `hidden` [B, H, W, C] and
`attention/attention_weights` ([B * windows, heads, N, N] window weights) into "intermediates".
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from krause.models.attention import MultiHeadAttention
from krause.models.layers import DropPath, Dtype, Mlp, PatchEmbed, dense_init

ATTENTIONS = ("softmax", "krause")


@functools.lru_cache(maxsize=16)
def relative_position_index(window: int) -> np.ndarray:
    """int32 [N, N], N = window^2: row of the bias table for query token i and key token j."""
    coords = np.stack(np.divmod(np.arange(window * window), window), axis=-1)  # [N, 2]
    rel = coords[:, None, :] - coords[None, :, :] + (window - 1)  # in [0, 2 window - 2]
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int32)


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """[B, H, W, C] (H, W multiples of window) -> [B * H/w * W/w, window^2, C], window-major."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """Inverse of `window_partition`: [B * nW, window^2, C] -> [B, height, width, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def _padded(size: int, window: int) -> int:
    return -(-size // window) * window


def block_shift(height: int, width: int, window: int, shift: int) -> tuple[int, int]:
    """Shift per axis: none where the window covers the padded map (torchvision's rule)."""
    return tuple(0 if window >= _padded(s, window) else shift for s in (height, width))


@functools.lru_cache(maxsize=64)
def window_mask(
    height: int, width: int, window: int, shift: tuple[int, int], mask_padding: bool = True
) -> np.ndarray | None:
    """bool [num_windows, N, N] (True = attend) for one image, or None if nothing is masked.

    A key is allowed if it lies in the query's shift region (regions of the rolled map, as in
    Swin) and, with `mask_padding`, is not padding. Every query keeps at least itself.
    """
    hp, wp = _padded(height, window), _padded(width, window)

    def regions(size: int, s: int) -> np.ndarray:
        ids = np.zeros(size, np.int32)
        if s > 0:
            ids[size - window : size - s] = 1
            ids[size - s :] = 2
        return ids

    region = regions(hp, shift[0])[:, None] * 3 + regions(wp, shift[1])[None, :]
    valid = np.zeros((hp, wp), bool)
    valid[:height, :width] = True
    valid = np.roll(valid, (-shift[0], -shift[1]), axis=(0, 1))
    if not mask_padding:
        valid[:] = True
    part = lambda a: np.asarray(window_partition(a[None, :, :, None], window))[..., 0]
    region_w, valid_w = part(region), part(valid)  # [nW, N]
    mask = (region_w[:, :, None] == region_w[:, None, :]) & valid_w[:, None, :]
    mask |= np.eye(window * window, dtype=bool)[None]
    return None if mask.all() else mask


def relative_position_bias(table: jax.Array, window: int) -> jax.Array:
    """Bias [1, heads, N, N] (N = window^2) from the table [(2 window - 1)^2, heads].

    The lookup is a one-hot product: its gradient is a matmul, not a scatter (cheaper to compile
    and run on CPUs).
    """
    one_hot = np.eye(table.shape[0], dtype=np.float32)[relative_position_index(window)]
    return jnp.einsum("ijt,th->hij", one_hot, table)[None]


class SwinBlock(nn.Module):
    """Pre-LN (shifted) window attention + MLP on [B, H, W, C]."""

    heads: int
    window: int
    shift: int
    mlp_ratio: float = 4.0
    attention: str = "softmax"
    sigma0: float = 4.0
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    mask_padding: bool = True
    capture: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        batch, height, width, c = x.shape
        w = self.window
        norm = functools.partial(
            nn.LayerNorm,
            epsilon=self.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        drop_path = DropPath(self.drop_path_rate)
        shift = block_shift(height, width, w, self.shift)
        hp, wp = _padded(height, w), _padded(width, w)

        y = norm(name="norm1")(x)
        y = jnp.pad(y, ((0, 0), (0, hp - height), (0, wp - width), (0, 0)))
        y = jnp.roll(y, (-shift[0], -shift[1]), axis=(1, 2))
        mask = window_mask(height, width, w, shift, self.mask_padding)
        if mask is not None:  # [nW, N, N] -> [B * nW, 1, N, N] (windows are batch-major)
            mask = jnp.tile(jnp.asarray(mask)[:, None], (batch, 1, 1, 1))
        table = self.param(
            "relative_position_bias_table", dense_init, ((2 * w - 1) ** 2, self.heads),
            self.param_dtype,
        )  # fmt: skip
        krause = self.attention == "krause"
        y = MultiHeadAttention(
            self.heads,
            attention=self.attention,
            sigma0=self.sigma0,
            sigma_per_head=True,
            scale_qk=krause,  # KSwin: distances of q / sqrt(d) and k / sqrt(d)
            kernel_init=dense_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attention",
        )(
            window_partition(y, w),
            mask=mask,
            bias=relative_position_bias(table, w),
            sow_weights=self.capture,
        )
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = jnp.roll(window_merge(y, w, hp, wp), shift, axis=(1, 2))[:, :height, :width]
        x = x + drop_path(y, train=train)
        mlp = Mlp(
            int(c * self.mlp_ratio),
            None,
            self.dropout_rate,
            self.dtype,
            self.param_dtype,
            name="mlp",
        )
        x = x + drop_path(mlp(norm(name="norm2")(x), train=train), train=train)
        if self.capture:
            self.sow("intermediates", "hidden", x)
        return x


class PatchMerging(nn.Module):
    """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]: 2x2 concat -> LayerNorm -> Dense (no bias)."""

    layer_norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        x = nn.LayerNorm(
            epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="norm"
        )(x)
        return nn.Dense(
            2 * c,
            use_bias=False,
            kernel_init=dense_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="reduction",
        )(x)


class Swin(nn.Module):
    """Swin / KSwin classifier: images [B, H, W, C] float32 NHWC -> logits [B, num_classes] float32.

    Same conventions as `krause.models.vit.ViT` (init/apply, "dropout" rng, dtype/param_dtype,
    `capture`). Windows use the dense `rbf_attention` (16 tokens per window).
    """

    num_classes: int = 10
    image_size: int = 32
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    heads: tuple[int, ...] = (3, 6, 12, 24)
    window: int = 4
    shift: int = 2
    mlp_ratio: float = 4.0
    attention: str = "softmax"  # "softmax" | "krause"
    sigma0: float = 4.0
    drop_path_rate: float = 0.1
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    mask_padding: bool = True
    capture: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}.")
        if len(self.depths) != len(self.heads):
            raise ValueError(f"depths {self.depths} and heads {self.heads} differ in length.")
        norm = functools.partial(
            nn.LayerNorm,
            epsilon=self.layer_norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = PatchEmbed(
            self.patch_size, self.embed_dim, self.dtype, self.param_dtype, name="patch_embed"
        )(images)
        x = norm(name="patch_norm")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        drop_path = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
        block_id = 0
        for stage, (depth, heads) in enumerate(zip(self.depths, self.heads, strict=True)):
            for j in range(depth):
                x = SwinBlock(
                    heads,
                    self.window,
                    0 if j % 2 == 0 else self.shift,
                    self.mlp_ratio,
                    self.attention,
                    self.sigma0,
                    float(drop_path[block_id]),
                    self.dropout_rate,
                    self.layer_norm_eps,
                    self.mask_padding,
                    self.capture,
                    self.dtype,
                    self.param_dtype,
                    name=f"stage{stage}_block{j}",
                )(x, train=train)
                block_id += 1
            if stage < len(self.depths) - 1:
                x = PatchMerging(
                    self.layer_norm_eps, self.dtype, self.param_dtype, name=f"stage{stage}_merge"
                )(x)
        x = norm(name="final_norm")(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
        logits = nn.Dense(
            self.num_classes,
            kernel_init=dense_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(x)
        return logits.astype(jnp.float32)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "swin_t": functools.partial(Swin, attention="softmax"),
    "kswin_t": functools.partial(Swin, attention="krause"),
}

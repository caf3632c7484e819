"""One attention module for every model: softmax, linear or Krause, in Flax's call convention.

`MultiHeadAttention` has the fields and the call of `flax.linen.MultiHeadDotProductAttention`
(`num_heads`, `qkv_features`, `out_features`, `kernel_init`, `out_kernel_init`, `bias_init`,
`out_bias_init`, `use_bias`, `dtype`, `param_dtype`; `__call__(inputs_q, inputs_k=None,
inputs_v=None, *, mask=None, deterministic=None, sow_weights=False)`) and the same parameters
(`query`, `key`, `value`, `out` DenseGeneral layers), so switching a Flax transformer to Krause
attention is one line (attention-weight dropout is not offered: apply dropout to the output):

    attn = nn.MultiHeadDotProductAttention(num_heads=4)                            # before
    attn = MultiHeadAttention(num_heads=4, attention="krause",
                              neighborhood=grid_neighborhood(8, 8, 1, num_global=1), top_k=4)

Krause attention adds one parameter, `log_sigma` (sigma = exp(log_sigma), initialised to
`sigma0`): a scalar shared by the heads, or one per head with `sigma_per_head`. The ViTs, Swin
and the pixel models all build their attention from this module.

Which keys a query sees:
  softmax: every key, or the causal ones (`causal=True`); `mask` and `bias` ([B, H, Nq, Nk],
           broadcastable) as in Flax.
  linear:  causal elu + 1 linear attention (`causal=True` required; no mask or bias).
  krause:  the static `neighborhood` (`krause.attention.grid_neighborhood`, `causal_window`, ...)
           through `krause_attention` at O(N w) cost; without one, every key (or the causal ones)
           through the dense `rbf_attention`, which also takes `mask` and `bias` (Swin windows).
`top_k` keeps each query's top_k most affine keys (Krause only). `scale_qk` divides q and k by
sqrt(head_dim) before the distances (KSwin). `rope_grid=(height, width)` rotates q and k with 2-D
axial RoPE over one global token followed by the grid (no parameters).

Decoding: with `cache=` (from `init_decoding_cache`) and `position=`, a call takes one position
[B, 1, features] and returns (out [B, 1, out_features], the updated cache): softmax keeps every
previous key, Krause a ring buffer of the last `window` keys, linear attention its running sums
(`krause.attention.decoding`).

`sow_weights=True` sows the attention probabilities into the "intermediates" collection as
`attention_weights` (Krause with a neighbourhood: `KrauseWeights`; otherwise [B, H, Nq, Nk]).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from krause.attention import (
    CausalWindow,
    Neighborhood,
    init_linear_attention_state,
    krause_attention,
    linear_attention,
    linear_attention_step,
    rbf_attention,
    softmax_attention,
)
from krause.attention.common import compute_dtype
from krause.attention.decoding import (
    KrauseCache,
    KVCache,
    cached_krause_attention,
    cached_softmax_attention,
)
from krause.models.layers import apply_rope, axial_rope_angles

ATTENTIONS = ("softmax", "linear", "krause")
Dtype = Any


class MultiHeadAttention(nn.Module):
    """Softmax, linear or Krause multi-head attention: [B, Nq, D] -> [B, Nq, out_features]."""

    num_heads: int
    attention: str = "softmax"
    causal: bool = False
    neighborhood: Neighborhood | None = None
    top_k: int | None = None
    sigma0: float = 2.5
    sigma_per_head: bool = False
    scale_qk: bool = False
    rope_grid: tuple[int, int] | None = None
    rope_base: float = 100.0
    impl: str = "auto"
    qkv_features: int | None = None
    out_features: int | None = None
    kernel_init: Any = nn.initializers.lecun_normal()
    out_kernel_init: Any = None  # None: kernel_init (as in Flax)
    bias_init: Any = nn.initializers.zeros_init()
    out_bias_init: Any = None  # None: bias_init
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def _check(self, mask, bias, decoding: bool) -> None:
        kind = self.attention
        if kind not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {kind!r}.")
        if kind == "linear" and not self.causal:
            raise ValueError("attention='linear' is causal linear attention: set causal=True.")
        if kind != "krause" and (self.neighborhood is not None or self.top_k is not None):
            raise ValueError(
                f"neighborhood and top_k are Krause settings; attention={kind!r} takes neither."
            )
        if kind == "krause" and self.neighborhood is not None:
            if mask is not None or bias is not None:
                raise ValueError(
                    "Krause attention over a neighborhood takes no mask or bias; pass "
                    "neighborhood=None to use a dense mask and bias instead."
                )
            if self.causal:
                raise ValueError(
                    "causal=True with a neighborhood: the neighborhood decides which keys a "
                    "query sees (use causal_window(length, window))."
                )
        if kind == "linear" and (mask is not None or bias is not None):
            raise ValueError("linear attention takes no mask or bias.")
        if decoding and kind != "linear" and not self.causal:
            nb = self.neighborhood
            if not (kind == "krause" and isinstance(nb, CausalWindow)):
                raise ValueError(
                    "cached decoding needs causal attention: causal=True, or for Krause a "
                    f"causal_window neighborhood (got {nb.describe() if nb else None})."
                )

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        bias: jax.Array | None = None,
        deterministic: bool | None = None,
        sow_weights: bool = False,
        cache: Any = None,
        position: jax.Array | None = None,
    ):
        """Attention of inputs_q over inputs_k / inputs_v (default: inputs_q).

        `deterministic` is accepted for Flax compatibility (this module has no dropout).
        With `cache` and `position`: one decoding step, returns (out, cache).
        """
        del deterministic
        decoding = cache is not None
        self._check(mask, bias, decoding)
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        features = self.qkv_features or inputs_q.shape[-1]
        if features % self.num_heads:
            raise ValueError(
                f"qkv_features {features} is not divisible by num_heads {self.num_heads}."
            )
        head_dim = features // self.num_heads
        dense = functools.partial(
            nn.DenseGeneral,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        heads = (self.num_heads, head_dim)
        q = dense(heads, name="query")(inputs_q)  # [B, Nq, H, Dh]
        k = dense(heads, name="key")(inputs_k)
        v = dense(heads, name="value")(inputs_v)
        out_proj = dense(
            self.out_features or inputs_q.shape[-1],
            axis=(-2, -1),
            kernel_init=self.out_kernel_init or self.kernel_init,
            bias_init=self.out_bias_init or self.bias_init,
            name="out",
        )
        if self.rope_grid is not None:
            angles = axial_rope_angles(*self.rope_grid, head_dim, self.rope_base, 1)
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        if self.scale_qk:
            q, k = (x * jnp.asarray(head_dim**-0.5, x.dtype) for x in (q, k))
        sigma = None
        if self.attention == "krause":
            shape = (self.num_heads,) if self.sigma_per_head else ()
            init = nn.initializers.constant(np.log(self.sigma0))
            log_sigma = self.param("log_sigma", init, shape, self.param_dtype)
            sigma = jnp.exp(log_sigma.astype(jnp.float32))

        if decoding:
            out, cache = self._decode_step(q[:, 0], k[:, 0], v[:, 0], cache, position, sigma)
            return out_proj(out[:, None].astype(q.dtype)), cache

        weights = None
        if self.attention == "softmax":
            out = softmax_attention(
                q, k, v, causal=self.causal, mask=mask, bias=bias, return_weights=sow_weights
            )
        elif self.attention == "linear":
            out = linear_attention(q, k, v)
            weights = linear_attention_weights(q, k) if sow_weights else None
        elif self.neighborhood is not None:
            out = krause_attention(
                q,
                k,
                v,
                sigma=sigma,
                neighborhood=self.neighborhood,
                top_k=self.top_k,
                impl=self.impl,
                return_weights=sow_weights,
            )
        else:
            if self.causal:
                nq, nk = q.shape[1], k.shape[1]
                allowed = jnp.arange(nk)[None, :] <= jnp.arange(nq)[:, None] + (nk - nq)
                mask = allowed if mask is None else mask & allowed
            out = rbf_attention(
                q, k, v, sigma=sigma, mask=mask, bias=bias, top_k=self.top_k,
                return_weights=sow_weights,
            )  # fmt: skip
        if isinstance(out, tuple):
            out, weights = out
        if sow_weights:
            self.sow("intermediates", "attention_weights", weights)
        return out_proj(out)

    def _decode_step(self, q, k, v, cache, position, sigma):
        """One position: q, k, v [B, H, Dh] -> (out [B, H, Dh], updated cache)."""
        if self.attention == "linear":
            cache, out = linear_attention_step(cache, q, k, v)
            return out, cache
        slots = cache.key.shape[2]
        slot = position % slots
        # Slot `slot` stands for the current position: it is empty (position < slots) or holds
        # position - slots, which has just left the ring buffer's window.
        current = jnp.arange(slots) == slot
        valid = (jnp.arange(slots) < position) | current
        write = lambda buffer, y: lax.dynamic_update_slice_in_dim(
            buffer, y[:, :, None].astype(buffer.dtype), slot, axis=2
        )
        # The writes depend on the attention output, so that XLA orders them after the reads of
        # the old cache and updates it in place (without this dependency it copies the whole
        # cache twice per step; `optimization_barrier` does not survive on CPU).
        if self.attention == "softmax":
            out = cached_softmax_attention(q, k, v, cache.key, cache.value, valid, current)
            after_reads = 0 * out[..., :1].astype(k.dtype)
            return out, KVCache(
                write(cache.key, k + after_reads), write(cache.value, v + after_reads)
            )
        dtype = compute_dtype(k.dtype)
        centre = jnp.where(position == 0, jnp.round(k.astype(dtype)), cache.centre)
        q = q.astype(dtype) - centre
        k = (k.astype(dtype) - centre).astype(cache.key.dtype)  # as stored in the cache
        sigma = jnp.broadcast_to(sigma, (self.num_heads,))
        out = cached_krause_attention(
            q, k, v, cache.key, cache.key_sq_norm, cache.value, valid, current,
            sigma=sigma, top_k=self.top_k,
        )  # fmt: skip
        after_reads = 0 * out[..., :1]
        k_sq_norm = jnp.sum(jnp.square(k.astype(dtype)), axis=-1, keepdims=True) + after_reads
        return out, KrauseCache(
            write(cache.key, k + after_reads.astype(k.dtype)),
            write(cache.value, v + after_reads.astype(v.dtype)),
            write(cache.key_sq_norm, k_sq_norm[..., 0]),
            centre + after_reads,
        )


def init_decoding_cache(
    attention: str,
    batch: int,
    heads: int,
    head_dim: int,
    length: int,
    window: int | None = None,
    dtype: Dtype = jnp.float32,
):
    """Empty decoding cache of one `MultiHeadAttention` layer for `batch` sequences.

    softmax: `KVCache` of `length` slots; krause: `KrauseCache` ring buffer of
    min(window, length) slots; linear: `LinearAttentionState` (float32 running sums).
    Every buffer is distinct, so the cache can be donated.
    """
    if attention == "linear":
        return init_linear_attention_state(batch, heads, head_dim, head_dim, jnp.float32)
    buffer = lambda slots: jnp.zeros((batch, heads, slots, head_dim), dtype)
    if attention == "softmax":
        return KVCache(buffer(length), buffer(length))
    if attention != "krause":
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}.")
    slots = min(window or length, length)
    acc = compute_dtype(dtype)
    return KrauseCache(
        buffer(slots),
        buffer(slots),
        jnp.zeros((batch, heads, slots), acc),
        jnp.zeros((batch, heads, head_dim), acc),
    )


def linear_attention_weights(q: jax.Array, k: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Dense causal weights of elu + 1 linear attention, [B, H, N, N] (for analysis only)."""
    phi_q, phi_k = (jax.nn.elu(x.astype(jnp.float32)) + 1.0 for x in (q, k))
    a = jnp.einsum("bihd,bjhd->bhij", phi_q, phi_k)
    a = jnp.where(jnp.tril(jnp.ones(a.shape[-2:], bool)), a, 0.0)
    return a / (jnp.sum(a, axis=-1, keepdims=True) + eps)


def krause_attention_fn(
    *,
    sigma: float,
    neighborhood: Neighborhood | None = None,
    top_k: int | None = None,
    impl: str = "auto",
):
    """Krause attention with a fixed width, as the `attention_fn` of Flax's attention modules.

        nn.MultiHeadDotProductAttention(num_heads=4, attention_fn=krause_attention_fn(sigma=2.5))

    Flax's seam gives the function no parameters of its own, so sigma is a constant here; a
    learned sigma needs `MultiHeadAttention(attention="krause")`. Flax's attention-weight dropout
    is not applied (the function takes no dropout arguments). With a `neighborhood`, `mask` and
    `bias` must be None; without one, every key (masked by `mask`) is a candidate.
    """

    def attention_fn(query, key, value, bias=None, mask=None):
        if neighborhood is None:
            return rbf_attention(query, key, value, sigma=sigma, mask=mask, bias=bias, top_k=top_k)
        if mask is not None or bias is not None:
            raise ValueError("krause_attention_fn with a neighborhood takes no mask or bias.")
        return krause_attention(
            query, key, value, sigma=sigma, neighborhood=neighborhood, top_k=top_k, impl=impl
        )

    return attention_fn

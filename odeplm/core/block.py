"""The transformer layer map Phi(h): one block that a depth-plan segment shares.

Post-LN reproduces ALBERT's layer (LayerNorm after attention and after the
feed-forward); Pre-LN is the GPT layer. With `time_features`, the block also
reads the solver time: a zero-initialised map of t scales and shifts every
LayerNorm (as adaptive LayerNorm does for diffusion time), so the field
f(t, h) may vary with depth while its parameters stay shared, and equals the
time-blind block at initialisation; with `stride_features` the same map also
reads the solver's step, in training steps, so one model can learn a coarse
step that is not the fine step scaled. Parameters carry logical axis names
("embed", "heads", "mlp", "vocab") that the training mesh maps onto devices;
activations are pinned with `constrain` (batch over data and fsdp, features
over tensor), and each block evaluation is rematerialised by `config.remat`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from odeplm.core.config import ModelConfig
from odeplm.core.sharding import constrain

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

# What the backward pass of one block evaluation keeps (None: everything).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

HIDDEN = ("batch", None, "act_embed")


def logical(initializer, axes: tuple[str | None, ...]):
    """Tags an initializer with logical axis names; sharding is applied later by the mesh rules."""
    return nnx.with_partitioning(initializer, axes, eager_sharding=False)


def dense(
    config: ModelConfig, features_in: int, features_out: int, axes: tuple[str | None, str | None], rngs: nnx.Rngs
) -> nnx.Linear:
    """A biased linear layer initialised as in BERT/ALBERT (normal, std 0.02)."""
    return nnx.Linear(
        features_in,
        features_out,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=logical(nnx.initializers.normal(config.initializer_range), axes),
        bias_init=logical(nnx.initializers.zeros_init(), axes[1:]),
        rngs=rngs,
    )


def layer_norm(config: ModelConfig, features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features,
        epsilon=config.layer_norm_eps,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        scale_init=logical(nnx.initializers.ones_init(), ("embed",)),
        bias_init=logical(nnx.initializers.zeros_init(), ("embed",)),
        rngs=rngs,
    )


def dropout(x: Array, rate: float, key: PRNGKeyArray | None) -> Array:
    """Inverted dropout driven by an explicit key (None: deterministic).

    Keys are explicit because the block runs inside a diffrax loop, where NNX
    RNG state must not be mutated; the key is derived from the solver time.
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Attention(nnx.Module):
    """Multi-head self-attention; the mask says which keys each query may see."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        width = config.width
        self.config = config
        self.query = dense(config, width, width, ("embed", "heads"), rngs)
        self.key = dense(config, width, width, ("embed", "heads"), rngs)
        self.value = dense(config, width, width, ("embed", "heads"), rngs)
        self.output = dense(config, width, width, ("heads", "embed"), rngs)

    def __call__(
        self,
        h: Float[Array, "batch seq width"],
        mask: Bool[Array, "batch seq seq"],
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch seq width"]:
        return self._attend(*self._project(h), mask, key)

    def cached(self, h, mask: Bool[Array, "batch seq slots"], cache: tuple[Array, Array], index):
        """Attention of `h` (written at cache slots index..) over every cached slot the
        mask allows; returns the output and the updated (keys, values) cache."""
        q, k, v = self._project(h)
        keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), index, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), index, axis=1)
        return self._attend(q, keys, values, mask, None), (keys, values)

    def _project(self, h):
        batch, length, _ = h.shape
        shape = (batch, length, self.config.heads, self.config.head_dim)
        return tuple(constrain(layer(h).reshape(shape), ("batch", None, "act_heads", None))
                     for layer in (self.query, self.key, self.value))

    def _attend(self, q, k, v, mask, key):
        config = self.config
        if (key is not None and config.attention_dropout > 0) or q.dtype == jnp.float64:
            context = _attend_explicitly(q, k, v, mask, config.attention_dropout, key)
        else:
            context = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=config.attention)
        context = constrain(context, ("batch", None, "act_heads", None))
        return self.output(context.reshape(q.shape[0], q.shape[1], config.width))


def _attend_explicitly(q, k, v, mask, rate: float, key: PRNGKeyArray | None):
    """Attention with the softmax written out, for what `jax.nn.dot_product_attention`
    cannot do: dropout on the probabilities, and a float64 softmax (it computes
    softmax in float32, too coarse for the float64 convergence and gradient checks)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    softmax_dtype = jnp.promote_types(logits.dtype, jnp.float32)
    logits = jnp.where(mask[:, None], logits.astype(softmax_dtype), jnp.finfo(softmax_dtype).min)
    weights = dropout(jax.nn.softmax(logits, axis=-1).astype(v.dtype), rate, key)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.activation = ACTIVATIONS[config.activation]
        self.up = dense(config, config.width, config.mlp_width, ("embed", "mlp"), rngs)
        self.down = dense(config, config.mlp_width, config.width, ("mlp", "embed"), rngs)

    def __call__(self, h: Float[Array, "batch seq width"]) -> Float[Array, "batch seq width"]:
        return self.down(constrain(self.activation(self.up(h)), ("batch", None, "act_mlp")))


class TimeModulation(nnx.Module):
    """Scale and shift of each LayerNorm of the block as a function of the time
    t in [0, 1] through the segment and, with `stride_features`, of the solver's
    stride s, read as 1 / s (in (0, 1] for steps no finer than training): sines
    and cosines of each, then a linear map initialised to zero, so the block
    starts as the time-blind one."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.frequencies = (config.time_features // 2, config.stride_features // 2)
        self.shape = (config.inner_layers, 2, 2, config.width)  # layer, norm, (scale, shift), feature
        self.project = nnx.Linear(
            config.time_features + config.stride_features, math.prod(self.shape), dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype), kernel_init=logical(nnx.initializers.zeros_init(), (None, None)),
            bias_init=logical(nnx.initializers.zeros_init(), (None,)), rngs=rngs)

    def __call__(self, time: Float[Array, ""], stride: Float[Array, ""]) -> Float[Array, "layers 2 2 width"]:
        inputs = (jnp.asarray(time, jnp.float32), 1 / jnp.asarray(stride, jnp.float32))
        angles = [x * jnp.pi * jnp.arange(1, n + 1, dtype=jnp.float32) for x, n in zip(inputs, self.frequencies)]
        return self.project(jnp.concatenate([f(a) for a in angles for f in (jnp.sin, jnp.cos)])).reshape(self.shape)


def modulated(norm: nnx.LayerNorm, x: Array, modulation: Array | None) -> Array:
    """LayerNorm(x) * (1 + scale) + shift; without a modulation, the plain LayerNorm."""
    y = norm(x)
    if modulation is None:
        return y
    scale, shift = (m.astype(y.dtype)[None, None] for m in modulation)
    return y * (1 + scale) + shift


class Layer(nnx.Module):
    """One transformer layer, Pre-LN or Post-LN.

    `tau` scales each sub-layer's update inside the residual: Post-LN then takes
    h <- LN(h + tau * F(h)) per sub-layer (the `ln_euler` discretisation), which
    is the layer itself at tau = 1.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.norm = config.norm
        self.rate = config.dropout
        self.attention = Attention(config, rngs=rngs)
        self.attention_norm = layer_norm(config, config.width, rngs)
        self.mlp = MLP(config, rngs=rngs)
        self.mlp_norm = layer_norm(config, config.width, rngs)
        self.gates = nnx.Param(logical(nnx.initializers.zeros_init(), (None,))(
            rngs.params(), (2,), jnp.dtype(config.param_dtype))) if config.residual_gate == "rezero" else None

    def __call__(
        self,
        h: Float[Array, "batch seq width"],
        mask: Bool[Array, "batch seq seq"],
        key: PRNGKeyArray | None = None,
        modulation: Array | None = None,
        tau: float | Array = 1.0,
    ) -> Float[Array, "batch seq width"]:
        keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
        return self._residual(h, lambda x: self.attention(x, mask, keys[0]), keys[1:], modulation, tau)

    def cached(self, h, mask, cache, index, modulation=None):
        """The layer with attention over a key/value cache (see `Attention.cached`)."""
        updated = []

        def attend(x):
            out, new_cache = self.attention.cached(x, mask, cache, index)
            updated.append(new_cache)
            return out

        return self._residual(h, attend, (None, None), modulation, 1.0), updated[0]

    def _residual(self, h, attend, keys, modulation, tau):
        attention_mod, mlp_mod = (None, None) if modulation is None else modulation
        attention_gate, mlp_gate = (1.0, 1.0) if self.gates is None else self.gates[...].astype(h.dtype)
        if self.norm == "post":
            update = attention_gate * dropout(attend(h), self.rate, keys[0])
            h = constrain(modulated(self.attention_norm, h + tau * update, attention_mod), HIDDEN)
            update = mlp_gate * dropout(self.mlp(h), self.rate, keys[1])
            return constrain(modulated(self.mlp_norm, h + tau * update, mlp_mod), HIDDEN)
        h = constrain(h + attention_gate * dropout(attend(modulated(self.attention_norm, h, attention_mod)), self.rate,
                                                   keys[0]), HIDDEN)
        return constrain(h + mlp_gate * dropout(self.mlp(modulated(self.mlp_norm, h, mlp_mod)), self.rate, keys[1]),
                         HIDDEN)


class Block(nnx.Module):
    """The layer map Phi: `config.inner_layers` distinct layers applied in turn
    (one, except for ALBERT's inner groups). Its vector field is Phi(h) - h
    (see `odeplm.core.ode`), so one Euler step of size 1 is the whole stack."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.remat = config.remat
        self.norm = config.norm
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.inner_layers)])
        self.time = TimeModulation(config, rngs=rngs) if config.time_features or config.stride_features else None

    def __call__(
        self,
        h: Float[Array, "batch seq width"],
        mask: Bool[Array, "batch seq seq"],
        key: PRNGKeyArray | None = None,
        time: Float[Array, ""] | float = 0.0,
        tau: Float[Array, ""] | float = 1.0,
        stride: Float[Array, ""] | float = 1.0,
    ) -> Float[Array, "batch seq width"]:
        """Phi(h) at `time` (t / span, read only with `time_features`) for a solver step of
        `stride` training steps (read only with `stride_features`); `tau` < 1 shrinks each
        Post-LN sub-layer's step inside its LayerNorm (see `Layer`)."""
        if self.remat == "none":
            return self._apply(h, mask, key, time, tau, stride)
        return jax.checkpoint(Block._apply, policy=REMAT_POLICIES[self.remat])(self, h, mask, key, time, tau, stride)

    def _modulations(self, time, stride):
        return [None] * len(self.layers) if self.time is None else list(self.time(time, stride))

    def _apply(self, h, mask, key, time, tau, stride):
        keys = [None] * len(self.layers) if key is None else list(jax.random.split(key, len(self.layers)))
        for layer, layer_key, modulation in zip(self.layers, keys, self._modulations(time, stride)):
            h = layer(h, mask, layer_key, modulation, tau)
        return h

    def cached(self, h, mask, cache: tuple[Array, Array], index, time: Float[Array, ""] | float = 0.0,
               stride: Float[Array, ""] | float = 1.0):
        """Phi with attention over a cache holding [inner_layers, batch, slots, heads, head_dim]
        keys and values; returns Phi(h) and the updated cache."""
        keys, values = [], []
        for i, (layer, modulation) in enumerate(zip(self.layers, self._modulations(time, stride))):
            h, (k, v) = layer.cached(h, mask, (cache[0][i], cache[1][i]), index, modulation)
            keys.append(k)
            values.append(v)
        return h, (jnp.stack(keys), jnp.stack(values))


def attention_mask(padding_mask: Bool[Array, "batch seq"], causal: bool) -> Bool[Array, "batch seq seq"]:
    """Which keys each query attends to: real tokens only, and no later ones if causal."""
    mask = jnp.broadcast_to(padding_mask[:, None, :], padding_mask.shape + padding_mask.shape[-1:])
    if causal:
        length = padding_mask.shape[-1]
        mask = mask & jnp.tril(jnp.ones((1, length, length), bool))
    return mask

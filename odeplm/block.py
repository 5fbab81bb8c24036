"""The transformer layer map Phi(h): one block that a depth-plan segment shares.

Post-LN reproduces ALBERT's layer (LayerNorm after attention and after the
feed-forward); Pre-LN is the GPT layer. Parameters carry logical axis names
("embed", "heads", "mlp", "vocab") that the training mesh maps onto devices;
activations are pinned with `constrain` (batch over data and fsdp, features
over tensor), and each block evaluation is rematerialised by `config.remat`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from odeplm.config import ModelConfig
from odeplm.sharding import constrain

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
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


class Layer(nnx.Module):
    """One transformer layer, Pre-LN or Post-LN."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.norm = config.norm
        self.rate = config.dropout
        self.attention = Attention(config, rngs=rngs)
        self.attention_norm = layer_norm(config, config.width, rngs)
        self.mlp = MLP(config, rngs=rngs)
        self.mlp_norm = layer_norm(config, config.width, rngs)

    def __call__(
        self,
        h: Float[Array, "batch seq width"],
        mask: Bool[Array, "batch seq seq"],
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch seq width"]:
        keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
        return self._residual(h, lambda x: self.attention(x, mask, keys[0]), keys[1:])

    def cached(self, h, mask, cache, index):
        """The layer with attention over a key/value cache (see `Attention.cached`)."""
        updated = []

        def attend(x):
            out, new_cache = self.attention.cached(x, mask, cache, index)
            updated.append(new_cache)
            return out

        return self._residual(h, attend, (None, None)), updated[0]

    def _residual(self, h, attend, keys):
        if self.norm == "post":
            h = constrain(self.attention_norm(h + dropout(attend(h), self.rate, keys[0])), HIDDEN)
            return constrain(self.mlp_norm(h + dropout(self.mlp(h), self.rate, keys[1])), HIDDEN)
        h = constrain(h + dropout(attend(self.attention_norm(h)), self.rate, keys[0]), HIDDEN)
        return constrain(h + dropout(self.mlp(self.mlp_norm(h)), self.rate, keys[1]), HIDDEN)


class Block(nnx.Module):
    """The layer map Phi: `config.inner_layers` distinct layers applied in turn
    (one, except for ALBERT's inner groups). Its vector field is Phi(h) - h
    (see `odeplm.ode`), so one Euler step of size 1 is the whole stack."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.remat = config.remat
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.inner_layers)])

    def __call__(
        self,
        h: Float[Array, "batch seq width"],
        mask: Bool[Array, "batch seq seq"],
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch seq width"]:
        if self.remat == "none":
            return self._apply(h, mask, key)
        return jax.checkpoint(Block._apply, policy=REMAT_POLICIES[self.remat])(self, h, mask, key)

    def _apply(self, h, mask, key):
        keys = [None] * len(self.layers) if key is None else list(jax.random.split(key, len(self.layers)))
        for layer, layer_key in zip(self.layers, keys):
            h = layer(h, mask, layer_key)
        return h

    def cached(self, h, mask, cache: tuple[Array, Array], index):
        """Phi with attention over a cache holding [inner_layers, batch, slots, heads, head_dim]
        keys and values; returns Phi(h) and the updated cache."""
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            h, (k, v) = layer.cached(h, mask, (cache[0][i], cache[1][i]), index)
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

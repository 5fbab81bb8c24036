"""The transformer layer map Phi(h): one block that a depth-plan segment shares.

Post-LN reproduces ALBERT's layer (LayerNorm after attention and after the
feed-forward); Pre-LN is the GPT layer. Parameters carry logical axis names
("embed", "heads", "mlp", "vocab") that the training mesh maps onto devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from odeplm.config import ModelConfig

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


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
        config = self.config
        batch, length, _ = h.shape

        def split_heads(x):
            return x.reshape(batch, length, config.heads, config.head_dim)

        q, k, v = (split_heads(layer(h)) for layer in (self.query, self.key, self.value))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(config.head_dim).astype(q.dtype)
        softmax_dtype = jnp.promote_types(logits.dtype, jnp.float32)
        logits = jnp.where(mask[:, None], logits.astype(softmax_dtype), jnp.finfo(softmax_dtype).min)
        weights = dropout(jax.nn.softmax(logits, axis=-1).astype(v.dtype), config.attention_dropout, key)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, config.width)
        return self.output(context)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.activation = ACTIVATIONS[config.activation]
        self.up = dense(config, config.width, config.mlp_width, ("embed", "mlp"), rngs)
        self.down = dense(config, config.mlp_width, config.width, ("mlp", "embed"), rngs)

    def __call__(self, h: Float[Array, "batch seq width"]) -> Float[Array, "batch seq width"]:
        return self.down(self.activation(self.up(h)))


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
        if self.norm == "post":
            h = self.attention_norm(h + dropout(self.attention(h, mask, keys[0]), self.rate, keys[1]))
            return self.mlp_norm(h + dropout(self.mlp(h), self.rate, keys[2]))
        h = h + dropout(self.attention(self.attention_norm(h), mask, keys[0]), self.rate, keys[1])
        return h + dropout(self.mlp(self.mlp_norm(h)), self.rate, keys[2])


class Block(nnx.Module):
    """The layer map Phi: `config.inner_layers` distinct layers applied in turn
    (one, except for ALBERT's inner groups). Its vector field is Phi(h) - h
    (see `odeplm.ode`), so one Euler step of size 1 is the whole stack."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.inner_layers)])

    def __call__(
        self,
        h: Float[Array, "batch seq width"],
        mask: Bool[Array, "batch seq seq"],
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "batch seq width"]:
        keys = [None] * len(self.layers) if key is None else list(jax.random.split(key, len(self.layers)))
        for layer, layer_key in zip(self.layers, keys):
            h = layer(h, mask, layer_key)
        return h


def attention_mask(padding_mask: Bool[Array, "batch seq"], causal: bool) -> Bool[Array, "batch seq seq"]:
    """Which keys each query attends to: real tokens only, and no later ones if causal."""
    mask = jnp.broadcast_to(padding_mask[:, None, :], padding_mask.shape + padding_mask.shape[-1:])
    if causal:
        length = padding_mask.shape[-1]
        mask = mask & jnp.tril(jnp.ones((1, length, length), bool))
    return mask

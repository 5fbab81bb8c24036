"""Output heads: masked LM (ALBERT-shaped), causal LM, and pooled classification.

Both LM heads decode with the transposed word-embedding table (tied weights),
so they are called with the embeddings module that owns it.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from odeplm.core.block import ACTIVATIONS, dense, dropout, layer_norm, logical
from odeplm.core.config import ConfigError, ModelConfig
from odeplm.core.embeddings import Embeddings
from odeplm.core.sharding import constrain


def tied_decode(x: Float[Array, "batch seq embed"], embeddings: Embeddings,
                config: ModelConfig) -> Float[Array, "batch seq vocab"]:
    """Logits against the word-embedding table, in `config.logits_dtype` (the matmul's output type)."""
    table = embeddings.word.embedding[...].astype(x.dtype)
    logits = jnp.einsum("bse,ve->bsv", x, table, preferred_element_type=jnp.dtype(config.logits_dtype or x.dtype))
    return constrain(logits, ("batch", None, "act_vocab"))


class MaskedLMHead(nnx.Module):
    """ALBERT's MLM head: dense to the embedding size, activation, LayerNorm, tied decoder plus bias."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.activation = ACTIVATIONS[config.activation]
        self.dense = dense(config, config.width, config.embedding_size, ("heads", "embed"), rngs)
        self.norm = layer_norm(config, config.embedding_size, rngs)
        self.bias = nnx.Param(
            logical(nnx.initializers.zeros_init(), ("vocab",))(
                rngs.params(), (config.vocab_size,), jnp.dtype(config.param_dtype)
            )
        )

    def __call__(self, h: Float[Array, "batch seq width"], embeddings: Embeddings) -> Float[Array, "batch seq vocab"]:
        x = self.norm(self.activation(self.dense(h)))
        logits = tied_decode(x, embeddings, self.config)
        return logits + self.bias[...].astype(logits.dtype)[None, None]


class CausalLMHead(nnx.Module):
    """GPT's head: the tied decoder, after a projection when embeddings are factorised."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.projection = (
            dense(config, config.width, config.embedding_size, ("heads", "embed"), rngs)
            if config.embedding_size != config.width
            else None
        )

    def __call__(self, h: Float[Array, "batch seq width"], embeddings: Embeddings) -> Float[Array, "batch seq vocab"]:
        return tied_decode(h if self.projection is None else self.projection(h), embeddings, self.config)


POOLINGS = ("first", "last", "mean")


class ClassifierHead(nnx.Module):
    """Pools the sequence, applies ALBERT's tanh pooler, then a linear classifier.

    Pooling: `first` token ([CLS] of a pre-trained ALBERT; the default for masked
    models), `last` real token (the default for causal ones, which see the whole
    text only there), or the `mean` over real tokens (for encoders pre-trained
    without a [CLS] token, whose first position has no learned summary role).
    """

    def __init__(self, config: ModelConfig, num_labels: int, *, pooling: str | None = None, rngs: nnx.Rngs):
        pooling = pooling or ("last" if config.objective == "causal" else "first")
        if pooling not in POOLINGS:
            raise ConfigError("pooling", f"must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.rate = config.dropout
        self.pooler = dense(config, config.width, config.width, ("embed", "heads"), rngs)
        self.classifier = dense(config, config.width, num_labels, ("heads", None), rngs)

    def __call__(self, h: Float[Array, "batch seq width"], padding_mask: Bool[Array, "batch seq"], key=None):
        if self.pooling == "last":
            last = jnp.sum(padding_mask, axis=-1) - 1
            pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        elif self.pooling == "mean":
            weights = padding_mask[..., None].astype(h.dtype)
            pooled = jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1)
        else:
            pooled = h[:, 0]
        return self.classifier(dropout(jnp.tanh(self.pooler(pooled)), self.rate, key))

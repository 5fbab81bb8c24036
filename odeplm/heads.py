"""Output heads: masked LM (ALBERT-shaped), causal LM, and pooled classification.

Both LM heads decode with the transposed word-embedding table (tied weights),
so they are called with the embeddings module that owns it.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from odeplm.block import ACTIVATIONS, dense, dropout, layer_norm, logical
from odeplm.config import ModelConfig
from odeplm.embeddings import Embeddings


def tied_decode(x: Float[Array, "... embed"], embeddings: Embeddings) -> Float[Array, "... vocab"]:
    return embeddings.word.attend(x)


class MaskedLMHead(nnx.Module):
    """ALBERT's MLM head: dense to the embedding size, activation, LayerNorm, tied decoder plus bias."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
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
        return tied_decode(x, embeddings) + self.bias[...].astype(x.dtype)[None, None]


class CausalLMHead(nnx.Module):
    """GPT's head: the tied decoder, after a projection when embeddings are factorised."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.projection = (
            dense(config, config.width, config.embedding_size, ("heads", "embed"), rngs)
            if config.embedding_size != config.width
            else None
        )

    def __call__(self, h: Float[Array, "batch seq width"], embeddings: Embeddings) -> Float[Array, "batch seq vocab"]:
        return tied_decode(h if self.projection is None else self.projection(h), embeddings)


class ClassifierHead(nnx.Module):
    """Pools one position (first token for masked models, last real token for causal
    ones), applies ALBERT's tanh pooler, then a linear classifier."""

    def __init__(self, config: ModelConfig, num_labels: int, *, rngs: nnx.Rngs):
        self.causal = config.objective == "causal"
        self.rate = config.dropout
        self.pooler = dense(config, config.width, config.width, ("embed", "heads"), rngs)
        self.classifier = dense(config, config.width, num_labels, ("heads", None), rngs)

    def __call__(self, h: Float[Array, "batch seq width"], padding_mask: Bool[Array, "batch seq"], key=None):
        if self.causal:
            last = jnp.sum(padding_mask, axis=-1) - 1
            pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        else:
            pooled = h[:, 0]
        return self.classifier(dropout(jnp.tanh(self.pooler(pooled)), self.rate, key))

"""Token, position and segment-type embeddings, factorised as in ALBERT.

With `embedding_size < width` the tables are narrow and a projection lifts
them to the model width (`embedding_hidden_mapping_in` in ALBERT). Post-LN
models normalise the summed embeddings (ALBERT, BERT); Pre-LN models do not
(GPT), since each block normalises its own input.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int, PRNGKeyArray

from odeplm.core.block import HIDDEN, dense, dropout, layer_norm, logical
from odeplm.core.config import ModelConfig
from odeplm.core.sharding import constrain


def embed(config: ModelConfig, rows: int, axes: tuple[str, str], rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        rows,
        config.embedding_size,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        embedding_init=logical(nnx.initializers.normal(config.initializer_range), axes),
        rngs=rngs,
    )


class Embeddings(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.rate = config.dropout
        self.word = embed(config, config.vocab_size, ("vocab", "embed"), rngs)
        self.position = embed(config, config.max_length, (None, "embed"), rngs)
        self.token_type = (
            embed(config, config.type_vocab_size, (None, "embed"), rngs) if config.type_vocab_size else None
        )
        self.norm = layer_norm(config, config.embedding_size, rngs) if config.norm == "post" else None
        self.projection = (
            dense(config, config.embedding_size, config.width, ("embed", "heads"), rngs)
            if config.project_embeddings
            else None
        )

    def __call__(
        self,
        tokens: Int[Array, "batch seq"],
        token_types: Int[Array, "batch seq"] | None = None,
        key: PRNGKeyArray | None = None,
        positions: Int[Array, "batch seq"] | None = None,
    ) -> Float[Array, "batch seq width"]:
        x = self.word(tokens) + (self.position(jnp.arange(tokens.shape[-1]))[None] if positions is None
                                 else self.position(positions))
        if self.token_type is not None:
            x = x + self.token_type(jnp.zeros_like(tokens) if token_types is None else token_types)
        if self.norm is not None:
            x = self.norm(x)
        x = dropout(x, self.rate, key)
        return constrain(x if self.projection is None else self.projection(x), HIDDEN)

"""Token-level cross-entropy shared by masked and causal pre-training and evaluation."""

from __future__ import annotations

import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int


def weighted_cross_entropy(
    logits: Float[Array, "batch seq vocab"],
    targets: Int[Array, "batch seq"],
    weights: Float[Array, "batch seq"],
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    """(summed loss, summed weight, correct predictions) over weighted positions, in float32."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(losses * weights), jnp.sum(weights), jnp.sum(correct * weights)


def batch_loss(model, batch: dict, *, solves, key=None):
    """(summed loss, summed weight, correct predictions, model output) on one batch
    of `odeplm.data.pipeline.Batches`; a key enables dropout."""
    out = model(batch["tokens"], batch["padding_mask"], solve=solves, key=key)
    return (*weighted_cross_entropy(out.logits, batch["targets"], batch["weights"]), out)

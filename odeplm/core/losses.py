"""Token cross-entropy: the loss every objective and evaluator sums, per row of a
batch (so evaluations can split it by group) and over the batch."""

from __future__ import annotations

import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int


def row_cross_entropy(
    logits: Float[Array, "batch seq vocab"],
    targets: Int[Array, "batch seq"],
    weights: Float[Array, "batch seq"],
) -> tuple[Float[Array, " batch"], Float[Array, " batch"], Float[Array, " batch"]]:
    """Per row: (summed loss, summed weight, correct predictions) over weighted positions, in float32."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(losses * weights, -1), jnp.sum(weights, -1), jnp.sum(correct * weights, -1)


def batch_rows(model, batch: dict, *, solves, key=None):
    """(per-row loss, weight and correct predictions, model output) on one batch of
    `odeplm.data.pipeline.Batches`; a key enables dropout."""
    out = model(batch["tokens"], batch["padding_mask"], solve=solves, key=key)
    return (*row_cross_entropy(out.logits, batch["targets"], batch["weights"]), out)


def batch_loss(model, batch: dict, *, solves, key=None):
    """(summed loss, summed weight, correct predictions, model output) on one batch."""
    loss, weight, correct, out = batch_rows(model, batch, solves=solves, key=key)
    return jnp.sum(loss), jnp.sum(weight), jnp.sum(correct), out

"""Token cross-entropy: the loss every objective and evaluator sums, per row of a
batch (so evaluations can split it by group) and over the batch.

The logits of a whole batch are never needed at once. A masked model decodes only
its target positions (`ModelConfig.masked_positions`), and `ModelConfig.loss_chunk`
positions are decoded and scored at a time, each chunk under `jax.checkpoint` so
that the backward pass recomputes its logits instead of keeping them: the largest
temporary of a large-vocabulary model shrinks from batch x sequence x vocabulary to
batch x chunk x vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int


class RowSums(NamedTuple):
    """Per row of a batch, over its weighted positions."""

    loss: Float[Array, " batch"]
    weight: Float[Array, " batch"]
    correct: Float[Array, " batch"]
    soft_loss: Float[Array, " batch"] | None  # cross-entropy against a teacher's predictions, when one is given


def row_cross_entropy(
    logits: Float[Array, "batch seq vocab"],
    targets: Int[Array, "batch seq"],
    weights: Float[Array, "batch seq"],
) -> tuple[Float[Array, " batch"], Float[Array, " batch"], Float[Array, " batch"]]:
    """Per row: (summed loss, summed weight, correct predictions) over weighted positions, in float32 or wider."""
    losses = optax.softmax_cross_entropy_with_integer_labels(_at_least_float32(logits), targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(losses * weights, -1), jnp.sum(weights, -1), jnp.sum(correct * weights, -1)


def _at_least_float32(x: Array) -> Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def decoded_rows(decode: Callable, hidden, targets, weights, *, chunk: int | None = None, teacher=None) -> RowSums:
    """`RowSums` of the logits `decode` gives for `hidden`, `chunk` positions at a time
    (None: all at once). `teacher` (hidden states of the same positions, detached) adds
    the cross-entropy against the predictions `decode` gives for them."""

    def sums(h, t, w, teacher_h) -> RowSums:
        logits = _at_least_float32(decode(h))
        soft = None
        if teacher_h is not None:
            probabilities = jax.nn.softmax(_at_least_float32(jax.lax.stop_gradient(decode(teacher_h))), axis=-1)
            soft = jnp.sum(optax.softmax_cross_entropy(logits, probabilities) * w, -1)
        return RowSums(*row_cross_entropy(logits, t, w), soft)

    length = hidden.shape[1]
    if chunk is None or chunk >= length:
        return sums(hidden, targets, weights, teacher)
    pad = -length % chunk  # padded positions carry weight 0

    def split(x):
        if x is None:
            return None
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(x.shape[0], -1, chunk, *x.shape[2:]), 1, 0)

    pieces = tuple(split(x) for x in (hidden, targets, weights, teacher))
    remat_sums = jax.checkpoint(sums)

    def add(total: RowSums, piece) -> tuple[RowSums, None]:
        return jax.tree.map(jnp.add, total, remat_sums(*piece)), None

    shapes = jax.eval_shape(sums, *(None if p is None else p[0] for p in pieces))
    total, _ = jax.lax.scan(add, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), pieces)
    return total


def target_positions(weights: Float[Array, "batch seq"], count: int) -> Int[Array, "batch count"]:
    """The positions of each row's targets (weight > 0), `count` per row: all of them when
    a row has at most `count`, padded with positions of weight 0."""
    return jax.lax.top_k((weights > 0).astype(jnp.float32), count)[1]


def batch_rows(model, batch: dict, *, solves, key=None, teacher=None, keep_states=False):
    """(`RowSums`, the encoder's output) of a model on one batch of
    `odeplm.data.pipeline.Batches`; a key enables dropout; `teacher`: detached hidden
    states of every position (a full-depth pass) for `RowSums.soft_loss`; `keep_states`:
    the encoder's output holds the state after every step."""
    config = model.config
    encoded = model.encode(batch["tokens"], batch["padding_mask"], solve=solves, key=key, keep_states=keep_states)
    hidden, targets, weights = encoded.hidden, batch["targets"], batch["weights"]
    if config.masked_positions is not None and config.masked_positions < hidden.shape[1]:
        positions = target_positions(weights, config.masked_positions)
        hidden, teacher = (None if x is None else jnp.take_along_axis(x, positions[..., None], axis=1)
                           for x in (hidden, teacher))
        targets, weights = (jnp.take_along_axis(x, positions, axis=1) for x in (targets, weights))
    return decoded_rows(model.decode, hidden, targets, weights, chunk=config.loss_chunk, teacher=teacher), encoded

"""Token-level cross-entropy shared by masked and causal pre-training and
evaluation, and the sandwich objective that trains coarse solves beside full depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from odeplm.recipe import Distillation
from odeplm.solvers import SolvePlan


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


def training_loss(model, batch: dict, *, solves: SolvePlan, coarse: tuple[SolvePlan, ...] = (),
                  distillation: Distillation = Distillation(), key=None) -> tuple[Array, dict]:
    """(summed objective, sums) on one batch: the loss at `solves` on the labels,
    plus each coarse solve on labels mixed with the detached full-depth
    predictions (see `Distillation`). The sums hold the full-depth loss, weight,
    correct predictions, the coarse solves' label losses and the NFE of all terms."""
    keys = [None] * (len(coarse) + 1) if key is None else list(jax.random.split(key, len(coarse) + 1))
    loss, weight, correct, full = batch_loss(model, batch, solves=solves, key=keys[0])
    objective, nfe, coarse_losses = loss, full.nfe, []
    if coarse:
        teacher = jax.lax.stop_gradient(jax.nn.softmax(full.logits.astype(jnp.float32), axis=-1))
        teacher_hidden = jax.lax.stop_gradient(full.hidden.astype(jnp.float32))
    for plan, (_, term_weight), term_key in zip(coarse, distillation.terms(), keys[1:]):
        label_loss, _, _, out = batch_loss(model, batch, solves=plan, key=term_key)
        soft = optax.softmax_cross_entropy(out.logits.astype(jnp.float32), teacher)
        mix = distillation.label_weight
        term = mix * label_loss + (1 - mix) * jnp.sum(soft * batch["weights"])
        if distillation.hidden_weight:
            squares = jnp.mean(jnp.square(out.hidden.astype(jnp.float32) - teacher_hidden), axis=-1)
            term += distillation.hidden_weight * jnp.sum(squares * batch["weights"])
        objective += term_weight * term
        nfe += out.nfe
        coarse_losses.append(label_loss)
    return objective, {"loss": loss, "weight": weight, "correct": correct, "nfe": nfe,
                       "coarse_losses": jnp.stack(coarse_losses) if coarse else jnp.zeros(0)}

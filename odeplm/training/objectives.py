"""The training objective: the loss at the drawn solve, plus the sandwich rule's
coarse solves trained beside full depth on labels mixed with its predictions,
and optionally on the states where full depth's steps land."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array

from odeplm.core.losses import batch_rows
from odeplm.core.solvers import SolvePlan
from odeplm.runs.recipe import Distillation, landings


def training_loss(model, batch: dict, *, solves: SolvePlan, coarse: tuple[SolvePlan, ...] = (),
                  distillation: Distillation = Distillation(), key=None) -> tuple[Array, dict]:
    """(summed objective, sums) on one batch: the loss at `solves` on the labels,
    plus each coarse solve on labels mixed with the detached full-depth
    predictions (see `Distillation`). The sums hold the full-depth loss, weight,
    correct predictions, the coarse solves' label losses and the NFE of all terms."""
    keys = [None] * (len(coarse) + 1) if key is None else list(jax.random.split(key, len(coarse) + 1))
    matching = bool(coarse) and distillation.state_weight > 0
    rows, full = batch_rows(model, batch, solves=solves, key=keys[0], keep_states=matching)
    loss = jnp.sum(rows.loss)
    objective, nfe, coarse_losses = loss, full.nfe, []
    teacher = jax.lax.stop_gradient(full.hidden) if coarse else None
    teacher_states = jax.lax.stop_gradient(full.states) if matching else None
    for plan, (_, term_weight), term_key in zip(coarse, distillation.terms(), keys[1:]):
        term_rows, out = batch_rows(model, batch, solves=plan, key=term_key, teacher=teacher, keep_states=matching)
        label_loss = jnp.sum(term_rows.loss)
        mix = distillation.label_weight
        term = mix * label_loss + (1 - mix) * jnp.sum(term_rows.soft_loss)
        if distillation.hidden_weight:
            squares = jnp.mean(jnp.square(out.hidden.astype(jnp.float32) - teacher.astype(jnp.float32)), axis=-1)
            term += distillation.hidden_weight * jnp.sum(squares * batch["weights"])
        if matching:
            term += distillation.state_weight * state_distance(
                out.states, teacher_states, landings(model.config.depth, plan, solves), batch["weights"])
        objective += term_weight * term
        nfe += out.nfe
        coarse_losses.append(label_loss)
    return objective, {"loss": loss, "weight": jnp.sum(rows.weight), "correct": jnp.sum(rows.correct), "nfe": nfe,
                       "coarse_losses": jnp.stack(coarse_losses) if coarse else jnp.zeros(0)}


def state_distance(states: tuple[Array, ...], teacher: tuple[Array, ...], landed: tuple[tuple[int, ...], ...],
                   weights: Array) -> Array:
    """Sum over weighted tokens of the coarse steps' mean squared distance to the fine states where they land
    (`landed`, per segment), each relative to the fine state's squared norm."""
    distances = []
    for coarse, fine, indices in zip(states, teacher, landed):
        target = fine[jnp.asarray(indices)].astype(jnp.float32)
        error = jnp.sum(jnp.square(coarse.astype(jnp.float32) - target), axis=-1)
        distances.append(error / (jnp.sum(jnp.square(target), axis=-1) + 1e-6))
    return jnp.sum(jnp.mean(jnp.concatenate(distances), axis=0) * weights)

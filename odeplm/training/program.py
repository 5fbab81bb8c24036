"""The sharded training step of one run: what the Trainer executes and what
`train.aot` compiles for a TPU topology, from this one code path.

A `TrainProgram` is (model config, training settings, mesh): the abstract state
with its shardings, the jitted initialiser, and the train step jitted per drawn
step count with in/out shardings and the state donated. It touches no data,
checkpoint or device memory until called, so it lowers as well onto a pod's
compile-only devices as onto this machine's.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from odeplm.core.config import ModelConfig
from odeplm.core.model import LanguageModel, abstract_model
from odeplm.core.sharding import MeshError, batch_sharding, param_shardings, replicated
from odeplm.runs.recipe import Distillation, landings
from odeplm.runs.settings import TrainSettings
from odeplm.training.objectives import training_loss
from odeplm.training.optim import learning_rate_schedule, make_optimizer


def loss_and_grads(graphdef, params, batch, key, *, solves, coarse, distillation, accum: int, dropout: bool):
    """Gradient of the mean token objective over the whole batch, accumulated over
    micro-batches, and the batch's sums from `training_loss` (NFE per micro-batch)."""
    micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)

    def summed_objective(params, micro_batch, key):
        model = nnx.merge(graphdef, params)
        return training_loss(model, micro_batch, solves=solves, coarse=coarse, distillation=distillation,
                             key=key if dropout else None)

    def accumulate(carry, inputs):
        grads, totals = carry
        micro_batch, index = inputs
        (objective, sums), g = jax.value_and_grad(summed_objective, has_aux=True)(
            params, micro_batch, jax.random.fold_in(key, index))
        sums = {**sums, "objective": objective}
        return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, totals, sums)), None

    sums_shape = jax.eval_shape(lambda: summed_objective(params, jax.tree.map(lambda x: x[0], micro), key))[1]
    zeros = jax.tree.map(jnp.zeros_like, params)
    totals = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), {**sums_shape, "objective": sums_shape["loss"]})
    (grads, totals), _ = jax.lax.scan(accumulate, (zeros, totals), (micro, jnp.arange(accum)))
    weight = jnp.maximum(totals["weight"], 1.0)
    return jax.tree.map(lambda g: g / weight, grads), totals, weight


def train_step(state, batch, key, *, graphdef, optimizer, schedule, solves, coarse, distillation, accum, dropout):
    grads, totals, weight = loss_and_grads(graphdef, state["params"], batch, key, solves=solves, coarse=coarse,
                                           distillation=distillation, accum=accum, dropout=dropout)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}
    metrics = {"loss": totals["loss"] / weight, "accuracy": totals["correct"] / weight,
               "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state["step"]),
               "nfe": totals["nfe"] // accum}
    if coarse:  # the sandwich: its objective and each coarse solve's loss on the labels
        metrics["objective"] = totals["objective"] / weight
        for label, loss in zip(distillation.term_labels(), totals["coarse_losses"]):
            metrics[f"loss_at_{label}"] = loss / weight
    return new_state, metrics


BATCH_FIELDS = {"tokens": jnp.int32, "padding_mask": jnp.bool_, "targets": jnp.int32, "weights": jnp.float32}


class TrainProgram:
    """Shardings, initialiser and jitted train steps for a model on a mesh."""

    def __init__(self, model_config: ModelConfig, settings: TrainSettings, mesh: jax.sharding.Mesh):
        self.model_config, self.settings, self.mesh = model_config, settings, mesh
        data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
        if (settings.batch_size // settings.grad_accum) % data_parallel:
            raise MeshError(f"micro-batch {settings.batch_size // settings.grad_accum} does not split over "
                            f"data x fsdp = {data_parallel} devices")
        self.schedule = learning_rate_schedule(settings.learning_rate, settings.warmup_steps, settings.steps)
        self.optimizer = make_optimizer(self.schedule, weight_decay=settings.weight_decay,
                                        clip_norm=settings.clip_norm)
        distillation, discretisation = settings.distillation, settings.discretisation
        if distillation.state_weight:  # refused now, not at the step where the coarse terms join
            for steps in discretisation.counts_from(min(distillation.starts(), default=0)):
                for coarse in distillation.coarse_solves(model_config.depth, discretisation):
                    landings(model_config.depth, coarse, discretisation.solves(model_config.depth, steps))
        self.graphdef, abstract_params = abstract_model(model_config)
        params_sharding = param_shardings(abstract_params, mesh)
        params_shape = nnx.to_pure_dict(abstract_params)
        opt_shape = jax.eval_shape(self.optimizer.init, params_shape)
        opt_sharding = optax.tree_map_params(
            self.optimizer, lambda _, s: s, opt_shape, params_sharding,
            transform_non_params=lambda _: replicated(mesh), is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
        self.state_shardings = {"step": replicated(mesh), "params": params_sharding, "opt_state": opt_sharding}
        shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params_shape, "opt_state": opt_shape}
        self.abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                           shapes, self.state_shardings)
        self._step_functions: dict[tuple[int | None, Distillation], Any] = {}

    def init_state(self) -> dict:
        """Fresh parameters and optimizer state from `settings.seed`, created already sharded."""
        def init():
            _, params = nnx.split(LanguageModel(self.model_config, rngs=nnx.Rngs(self.settings.seed)))
            params = nnx.to_pure_dict(params)
            return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.optimizer.init(params)}

        return jax.jit(init, out_shardings=self.state_shardings)()

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes, dtypes and shardings of one global batch, for ahead-of-time lowering."""
        shape = (self.settings.batch_size, self.model_config.max_length)
        sharding = batch_sharding(self.mesh)
        return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for name, dtype in BATCH_FIELDS.items()}

    def abstract_key(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated(self.mesh))

    def step_counts(self) -> tuple[int | None, ...]:
        """Every step count the recipe can draw (None: the depth plan's own)."""
        return self.settings.discretisation.steps or (None,)

    def step_function(self, steps: int | None, distillation: Distillation | None = None):
        """The jitted training step for one drawn step count and the sandwich's coarse
        terms that train then (None: all of them; `Distillation.active`); its activations
        are constrained under this program's mesh, so it lowers the same anywhere."""
        distillation = self.settings.distillation if distillation is None else distillation
        if (steps, distillation) not in self._step_functions:
            step = functools.partial(
                train_step, graphdef=self.graphdef, optimizer=self.optimizer, schedule=self.schedule,
                solves=self.settings.discretisation.solves(self.model_config.depth, steps),
                coarse=distillation.coarse_solves(self.model_config.depth, self.settings.discretisation),
                distillation=distillation,
                accum=self.settings.grad_accum,
                dropout=self.model_config.dropout > 0 or self.model_config.attention_dropout > 0,
            )

            def under_mesh(state, batch, key):
                with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                    return step(state, batch, key)

            self._step_functions[steps, distillation] = jax.jit(
                under_mesh,
                in_shardings=(self.state_shardings, batch_sharding(self.mesh), replicated(self.mesh)),
                out_shardings=(self.state_shardings, replicated(self.mesh)), donate_argnums=0,
            )
        return self._step_functions[steps, distillation]

    def lower(self, steps: int | None):
        """The train step for `steps`, lowered on abstract arguments (nothing allocated)."""
        return self.step_function(steps).lower(self.abstract_state, self.abstract_batch(), self.abstract_key())

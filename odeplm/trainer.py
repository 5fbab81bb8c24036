"""Pre-training: config -> data -> sharded state -> jitted steps -> checkpoints.

The step function is compiled once per drawn step count, under `jax.jit` with
in/out shardings over the (data, fsdp, tensor) mesh and the state donated. The
loop knows nothing of which solver runs: the `Discretisation` hands it a solve
plan per step. Everything a step consumes (batch, dropout key, step count)
derives from (seed, step), so a resumed run replays the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict
from tqdm import tqdm

from odeplm.checkpoint import Checkpointer
from odeplm.config import ConfigError, ModelConfig
from odeplm.data.corpus import text_source
from odeplm.data.pipeline import Batches, split_batches
from odeplm.data.tokenizer import Tokenizer
from odeplm.metrics import MetricWriter, forward_flops_per_token, measure_matmul_peak
from odeplm.model import LanguageModel
from odeplm.objectives import batch_loss
from odeplm.optim import learning_rate_schedule, make_optimizer
from odeplm.recipe import Discretisation
from odeplm.sharding import MeshError, batch_sharding, global_batch, make_mesh, param_shardings, replicated

log = logging.getLogger("odeplm")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The `train`, `data`, `checkpoint` and `mesh` sections of a config, validated."""

    seed: int
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    clip_norm: float
    grad_accum: int
    log_every: int
    eval_batches: int
    dataset: str
    data_dir: str
    checkpoint_every: int
    keep: int
    async_save: bool
    mesh: tuple[int, int, int]
    discretisation: Discretisation

    @classmethod
    def from_config(cls, config: ConfigDict) -> "TrainSettings":
        train, data, ckpt, mesh = config.train, config.data, config.checkpoint, config.mesh
        values = {
            "seed": (config.seed, 0), "train.steps": (train.steps, 1), "train.batch_size": (train.batch_size, 1),
            "train.warmup_steps": (train.warmup_steps, 0), "train.grad_accum": (train.grad_accum, 1),
            "train.log_every": (train.log_every, 1), "train.eval_batches": (train.eval_batches, 1),
            "checkpoint.every": (ckpt.every, 1), "checkpoint.keep": (ckpt.keep, 1),
        }
        for name, (value, minimum) in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
        for name, value in (("train.learning_rate", train.learning_rate), ("train.clip_norm", train.clip_norm)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(name, f"must be positive, got {value!r}")
        if not isinstance(train.weight_decay, (int, float)) or train.weight_decay < 0:
            raise ConfigError("train.weight_decay", f"must be non-negative, got {train.weight_decay!r}")
        if train.batch_size % train.grad_accum:
            raise ConfigError("train.grad_accum", f"batch size {train.batch_size} is not divisible into "
                                                  f"{train.grad_accum} micro-batches")
        if not data.dataset:
            raise ConfigError("data.dataset", "is empty")
        return cls(
            seed=config.seed, steps=train.steps, batch_size=train.batch_size, learning_rate=float(train.learning_rate),
            warmup_steps=train.warmup_steps, weight_decay=float(train.weight_decay), clip_norm=float(train.clip_norm),
            grad_accum=train.grad_accum, log_every=train.log_every, eval_batches=train.eval_batches,
            dataset=data.dataset, data_dir=os.path.expanduser(data.data_dir or "~/tensorflow_datasets"),
            checkpoint_every=ckpt.every, keep=ckpt.keep, async_save=bool(ckpt.async_save),
            mesh=(mesh.data, mesh.fsdp, mesh.tensor),
            discretisation=Discretisation.parse(train.solver, str(train.step_counts), str(train.step_weights)),
        )


def loss_and_grads(graphdef, params, batch, key, *, solves, accum: int, dropout: bool):
    """Gradient of the mean token loss over the whole batch, accumulated over micro-batches."""
    micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)

    def summed_loss(params, micro_batch, key):
        model = nnx.merge(graphdef, params)
        total, weight, correct, out = batch_loss(model, micro_batch, solves=solves, key=key if dropout else None)
        return total, (weight, correct, out.nfe)

    def accumulate(carry, inputs):
        grads, totals = carry
        micro_batch, index = inputs
        (total, (weight, correct, nfe)), g = jax.value_and_grad(summed_loss, has_aux=True)(
            params, micro_batch, jax.random.fold_in(key, index))
        return (jax.tree.map(jnp.add, grads, g), totals + jnp.stack([total, weight, correct])), nfe

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, totals), nfe = jax.lax.scan(accumulate, (zeros, jnp.zeros(3)), (micro, jnp.arange(accum)))
    weight = jnp.maximum(totals[1], 1.0)
    return jax.tree.map(lambda g: g / weight, grads), totals[0] / weight, totals[2] / weight, nfe[0]


def train_step(state, batch, key, *, graphdef, optimizer, schedule, solves, accum, dropout):
    grads, loss, accuracy, nfe = loss_and_grads(
        graphdef, state["params"], batch, key, solves=solves, accum=accum, dropout=dropout)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state["step"]), "nfe": nfe}
    return new_state, metrics


class Trainer:
    """Owns one run: its mesh, data, state and checkpoints, under `workdir`."""

    def __init__(self, config: ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.settings = settings = TrainSettings.from_config(config)
        self.model_config = ModelConfig.from_dict(config.model)
        self.mesh = make_mesh(*settings.mesh)
        data_parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if (settings.batch_size // settings.grad_accum) % data_parallel:
            raise MeshError(f"micro-batch {settings.batch_size // settings.grad_accum} does not split over "
                            f"data x fsdp = {data_parallel} devices")
        self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=settings.checkpoint_every,
                                         keep=settings.keep, async_save=settings.async_save)
        self.schedule = learning_rate_schedule(settings.learning_rate, settings.warmup_steps, settings.steps)
        self.optimizer = make_optimizer(self.schedule, weight_decay=settings.weight_decay,
                                        clip_norm=settings.clip_norm)
        self.graphdef, self.state_shardings, abstract = self._abstract_state()
        self.state, self.tokenizer, self.start_step = self._restore_or_init(abstract)
        self.train_batches = self._batches("train", shuffle=True)
        self.validation_batches = self._batches("validation", shuffle=False)
        self._step_functions: dict[int | None, Any] = {}

    def _abstract_state(self):
        config = self.model_config
        abstract_model = nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0)))
        graphdef, abstract_params = nnx.split(abstract_model)
        params_sharding = param_shardings(abstract_params, self.mesh)
        params_shape = nnx.to_pure_dict(abstract_params)
        opt_shape = jax.eval_shape(self.optimizer.init, params_shape)
        opt_sharding = optax.tree_map_params(
            self.optimizer, lambda _, s: s, opt_shape, params_sharding,
            transform_non_params=lambda _: replicated(self.mesh), is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
        shardings = {"step": replicated(self.mesh), "params": params_sharding, "opt_state": opt_sharding}
        shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params_shape, "opt_state": opt_shape}
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
        return graphdef, shardings, abstract

    def _restore_or_init(self, abstract):
        if self.checkpointer.steps():
            restored = self.checkpointer.restore(
                abstract["params"], abstract_optimizer={k: abstract[k] for k in ("step", "opt_state")},
                model_config=self.model_config.to_dict())
            log.warning("resumed from step %d", restored["step"])
            state = {"params": restored["params"], **restored["optimizer"]}
            return state, restored["tokenizer"], restored["step"]
        texts = text_source(self.settings.dataset, "train", self.settings.data_dir)
        try:
            tokenizer = Tokenizer.train((texts[i] for i in range(len(texts))), self.model_config.vocab_size)
        except RuntimeError as error:  # SentencePiece reports an impossible vocabulary this way
            raise ConfigError("model.vocab_size", f"cannot train a tokenizer of this size: {error}") from None
        if tokenizer.vocab_size != self.model_config.vocab_size:
            raise ConfigError("model.vocab_size", f"the corpus supports a tokenizer of {tokenizer.vocab_size} "
                                                  f"pieces, not {self.model_config.vocab_size}")

        def init():
            _, params = nnx.split(LanguageModel(self.model_config, rngs=nnx.Rngs(self.settings.seed)))
            params = nnx.to_pure_dict(params)
            return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.optimizer.init(params)}

        return jax.jit(init, out_shardings=self.state_shardings)(), tokenizer, 0

    def _batches(self, split: str, *, shuffle: bool) -> Batches:
        return split_batches(self.settings.dataset, split, self.settings.data_dir, self.tokenizer,
                             length=self.model_config.max_length, batch_size=self.settings.batch_size,
                             objective=self.model_config.objective, seed=self.settings.seed, shuffle=shuffle)

    def step_function(self, steps: int | None):
        """The jitted training step for one drawn step count, compiled on first use."""
        if steps not in self._step_functions:
            step = functools.partial(
                train_step, graphdef=self.graphdef, optimizer=self.optimizer, schedule=self.schedule,
                solves=self.settings.discretisation.solves(self.model_config.depth, steps),
                accum=self.settings.grad_accum,
                dropout=self.model_config.dropout > 0 or self.model_config.attention_dropout > 0,
            )
            self._step_functions[steps] = jax.jit(
                step, in_shardings=(self.state_shardings, batch_sharding(self.mesh), replicated(self.mesh)),
                out_shardings=(self.state_shardings, replicated(self.mesh)), donate_argnums=0,
            )
        return self._step_functions[steps]

    def save_config(self) -> dict:
        return {"model": self.model_config.to_dict(), "run": self.config.to_dict()}

    def run(self) -> dict:
        """Trains from the current step to `train.steps`; returns a summary."""
        settings = self.settings
        writer = MetricWriter(self.workdir)
        peak = measure_matmul_peak() * jax.device_count()  # per-device peak times devices
        length = self.model_config.max_length
        tokens_per_step = settings.batch_size * length
        stop = {"requested": False}
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
        pending: list[tuple[int, int | None, dict]] = []
        last_good = self.start_step if self.checkpointer.steps() else None
        window_start, window_steps = time.perf_counter(), 0
        progress = tqdm(total=settings.steps, initial=self.start_step, disable=jax.process_index() != 0,
                        desc="pre-training", unit="step")
        step = self.start_step
        try:
            while step < settings.steps:
                drawn = settings.discretisation.draw(settings.seed, step)
                local = self.train_batches.batch(step, jax.process_index(), jax.process_count())
                key = jax.random.fold_in(jax.random.key(settings.seed), step)
                self.state, metrics = self.step_function(drawn)(self.state, global_batch(local, self.mesh), key)
                pending.append((step, drawn, metrics))
                step += 1
                window_steps += 1
                stop_now = self._stop_requested(stop["requested"])
                save_now = step % settings.checkpoint_every == 0 or step == settings.steps or stop_now
                if step % settings.log_every == 0 or save_now:
                    elapsed = time.perf_counter() - window_start
                    self._flush(pending, writer, tokens_per_step * window_steps / elapsed, peak, length, last_good)
                    progress.update(window_steps)
                    progress.set_postfix(loss=f"{float(pending[-1][2]['loss']):.3f}" if pending else "")
                    pending.clear()
                    window_start, window_steps = time.perf_counter(), 0
                if save_now:
                    self.checkpointer.save(
                        step, params=self.state["params"], config=self.save_config(), tokenizer=self.tokenizer,
                        optimizer={k: self.state[k] for k in ("step", "opt_state")}, force=True)
                    last_good = step
                if stop_now:
                    log.warning("SIGTERM: saved step %d and stopping", step)
                    break
        finally:
            progress.close()
            signal.signal(signal.SIGTERM, previous)
            self.checkpointer.wait()
            writer.close()
        return {"step": step, "preempted": step < settings.steps}

    def _stop_requested(self, local: bool) -> bool:
        """A SIGTERM on any process stops all of them at the same step."""
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(local))))

    def _flush(self, pending, writer: MetricWriter, tokens_per_second: float, peak: float, length: int,
               last_good: int | None):
        for step, drawn, metrics in pending:
            values = {k: float(v) for k, v in metrics.items()}
            if not np.isfinite(values["loss"]):
                where = f"step {last_good}" if last_good is not None else "none yet"
                raise TrainingError(f"non-finite loss {values['loss']} at step {step + 1}; training stopped, last good "
                                    f"checkpoint: {where} under {self.checkpointer.directory}")
            flops = 3 * forward_flops_per_token(self.model_config, int(values["nfe"]), length)
            values.update(tokens_per_second=tokens_per_second, mfu=tokens_per_second * flops / peak,
                          steps_drawn=drawn or self.model_config.layers)
            writer.write(step + 1, values)

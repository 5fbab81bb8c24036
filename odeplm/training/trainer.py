"""Pre-training: config -> data -> sharded state -> jitted steps -> checkpoints.

The step function (`odeplm.training.program`) is compiled once per drawn step count,
under `jax.jit` with in/out shardings over the (data, fsdp, tensor) mesh and
the state donated. The loop knows nothing of which solver runs: the
`Discretisation` hands it a solve plan per step. Everything a step consumes (batch, dropout key, step count)
derives from (seed, step), so a resumed run replays the uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from odeplm.core.config import ConfigError, ModelConfig
from odeplm.core.errors import TrainingError
from odeplm.core.flops import training_flops_per_token
from odeplm.core.sharding import global_batch, make_mesh
from odeplm.core.solvers import plan_label, plan_solves
from odeplm.data.pipeline import Batches, split_batches
from odeplm.data.prepared import dataset_tokenizer, prepare
from odeplm.data.sources import builds_locally
from odeplm.data.tokenizer import Symbols, Tokenizer, tokenizer_from_json
from odeplm.evaluation.point import PointProgram, token_metrics, validation_batches
from odeplm.runs.checkpoint import Checkpointer
from odeplm.runs.lock import WorkdirLock
from odeplm.runs.paths import run_path
from odeplm.runs.settings import TrainSettings
from odeplm.training.metrics import MetricWriter, measure_matmul_peak
from odeplm.training.program import BATCH_FIELDS, TrainProgram

log = logging.getLogger("odeplm")


class Trainer:
    """Owns one run: its mesh, data, state and checkpoints, under `workdir`."""

    def __init__(self, config: ConfigDict, workdir: str):
        path = run_path(workdir)
        if path.exists() and not path.is_dir():
            raise ConfigError("workdir", f"{workdir} is a file, not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # read-only, or under a file
            raise ConfigError("workdir", f"cannot create {workdir}: {error.strerror or error}") from None
        if "://" not in workdir and not os.access(workdir, os.W_OK):
            raise ConfigError("workdir", f"{workdir} is not writable")
        self.config = config
        self.workdir = workdir
        self.settings = settings = TrainSettings.from_config(config)
        self.model_config = ModelConfig.from_dict(config.model)
        self.program = TrainProgram(self.model_config, settings, make_mesh(*settings.mesh))
        self.mesh, self.graphdef = self.program.mesh, self.program.graphdef
        self.checkpointer = Checkpointer(run_path(workdir) / "checkpoints", keep=settings.keep,
                                         async_save=settings.async_save)
        self.state, restored, self.start_step = self._restore_or_init(self.program.abstract_state)
        self.tokenizer = self._prepared_tokenizer(restored)
        self.train_batches = self._batches("train", shuffle=True)
        self.validation_batches = self._batches("validation", shuffle=False)
        self._validation_programs: dict = {}

    def _restore_or_init(self, abstract):
        if self.checkpointer.steps():
            restored = self.checkpointer.restore(
                abstract["params"], abstract_optimizer={k: abstract[k] for k in ("step", "opt_state")},
                model_config=self.model_config.architecture())
            log.warning("resumed from step %d", restored["step"])
            state = {"params": restored["params"], **restored["optimizer"]}
            saved = restored["tokenizer"]
            return state, None if saved is None else tokenizer_from_json(saved), restored["step"]
        return self.program.init_state(), None, 0

    def _prepared_tokenizer(self, restored: Tokenizer | Symbols | None) -> Tokenizer | Symbols:
        """The run's tokenizer, with both splits tokenized by it. Our own local
        datasets are prepared here, by process 0 while the others wait; any
        other dataset must have been prepared once with `train.prepare`."""
        settings = self.settings
        if builds_locally(settings.dataset) and jax.process_index() == 0:
            prepare(settings.dataset, settings.data_dir, restored or self.model_config.vocab_size,
                    shards=settings.shards, workers=settings.workers,
                    sample_characters=settings.tokenizer_characters, kind=settings.tokenizer)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("odeplm: data prepared")
        return restored or dataset_tokenizer(settings.dataset, settings.data_dir, self.model_config.vocab_size,
                                             kind=settings.tokenizer, train=False)

    def _batches(self, split: str, *, shuffle: bool) -> Batches:
        return split_batches(self.settings.dataset, split, self.settings.data_dir, self.tokenizer,
                             length=self.model_config.max_length, batch_size=self.settings.batch_size,
                             objective=self.model_config.objective, seed=self.settings.seed, shuffle=shuffle,
                             index=self.settings.record_index)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Finishes any save in flight and closes the checkpointer."""
        self.checkpointer.close()

    def save_config(self) -> dict:
        return {"model": self.model_config.to_dict(), "run": self.config.to_dict()}

    def run(self) -> dict:
        """Trains from the current step to `train.steps`; returns a summary."""
        settings = self.settings
        lock = WorkdirLock(self.workdir) if jax.process_index() == 0 else None
        if lock is not None:
            lock.acquire()  # before anything is written: a second run on this workdir stops here
        writer = MetricWriter(self.workdir)
        peak = measure_matmul_peak() * jax.device_count()  # per-device peak times devices
        stop = {"requested": False}
        def request_stop(signum, frame):
            stop.update(requested=True)
            if signum == signal.SIGINT:  # a second Ctrl-C aborts at once
                signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        pending: list[tuple[int, int | None, dict]] = []
        last_good = self.start_step if self.checkpointer.steps() else None
        window_start, window_steps = time.perf_counter(), 0
        progress = tqdm(total=settings.steps, initial=self.start_step, disable=jax.process_index() != 0,
                        desc="pre-training", unit="step")
        step = self.start_step
        reader = self.train_batches.iterate(step, jax.process_index(), jax.process_count(),
                                            threads=settings.read_threads)
        try:
            while step < settings.steps:
                drawn = settings.discretisation.draw(settings.seed, step)
                local = {field: value for field, value in next(reader).items() if field in BATCH_FIELDS}
                key = jax.random.fold_in(jax.random.key(settings.seed), step)
                self.state, metrics = self.program.step_function(drawn)(self.state, global_batch(local, self.mesh), key)
                pending.append((step, drawn, metrics))
                step += 1
                if settings.eval_every and step % settings.eval_every == 0:
                    metrics.update(self.validate())
                window_steps += 1
                boundary = step % settings.log_every == 0 or step % settings.checkpoint_every == 0
                stop_now = self._stop_requested(stop["requested"], boundary)
                save_now = step % settings.checkpoint_every == 0 or step == settings.steps or stop_now
                if step % settings.log_every == 0 or save_now:
                    window = self._flush(pending, writer, time.perf_counter() - window_start, peak, last_good)
                    if lock is not None:
                        lock.refresh()
                    progress.update(window_steps)
                    progress.set_postfix(loss=f"{window['loss']:.3f}", mfu=f"{window['mfu']:.2f}",
                                         tokens_per_s=f"{window['tokens_per_second']:,.0f}")
                    pending.clear()
                    window_start, window_steps = time.perf_counter(), 0
                if save_now:
                    self.checkpointer.save(
                        step, params=self.state["params"], config=self.save_config(),
                        tokenizer=self.tokenizer.to_json(),
                        optimizer={k: self.state[k] for k in ("step", "opt_state")})
                    last_good = step
                if stop_now:
                    log.warning("stop requested (SIGTERM or Ctrl-C): saved step %d and stopping", step)
                    break
        finally:
            progress.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.checkpointer.wait()
            writer.close()
            if lock is not None:
                lock.release()
        return {"step": step, "preempted": step < settings.steps}

    @functools.cached_property
    def validation_set(self) -> list[dict]:
        """The first `train.eval_batches` validation batches, read once: what validation scores during
        training and the table after it."""
        return validation_batches(self.validation_batches, self.settings.eval_batches)

    def validate(self) -> dict[str, float]:
        """Validation loss and accuracy at the training discretisation and at each
        of `train.eval_solves`, keyed `validation/loss@SOLVE` (and accuracy per group
        of a task's examples); each plan compiles once per run."""
        depth = self.model_config.depth
        plans = [self.settings.discretisation.solves(depth, None)]
        plans += [plan_solves(depth, solve) for solve in self.settings.eval_solves]
        batches = self.validation_set
        values = {}
        for plan in dict.fromkeys(plans):
            if plan not in self._validation_programs:
                self._validation_programs[plan] = PointProgram.compile(token_metrics, self.graphdef,
                                                                       self.state["params"], plan, batches[0])
            result = self._validation_programs[plan].score(self.state["params"], batches)
            label = plan_label(plan)
            values[f"validation/loss@{label}"] = result["loss"]
            values[f"validation/accuracy@{label}"] = result["accuracy"]
            for group, scores in result.get("groups", {}).items():  # a task's difficulties, e.g. hops=3
                values[f"validation/accuracy@{label}/{self.validation_batches.group_name}={group}"] = scores["accuracy"]
        return values

    def _stop_requested(self, local: bool, boundary: bool) -> bool:
        """A SIGTERM or Ctrl-C on any process stops all of them at the same step: the
        next logging or saving boundary, where the processes agree on it (one
        all-gather per window, not per step); a single process stops at once."""
        if jax.process_count() == 1:
            return local
        if not boundary:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(local))))

    def _flush(self, pending, writer: MetricWriter, elapsed: float, peak: float, last_good: int | None) -> dict:
        """Writes a logging window's steps. Throughput and MFU are the window's:
        its tokens and the FLOPs its steps actually ran (each at its own NFE), over
        its wall time. Returns the last step's values."""
        length = self.model_config.max_length
        tokens = self.settings.batch_size * length
        rows = [(step, drawn, {k: float(v) for k, v in metrics.items()}) for step, drawn, metrics in pending]
        flops = sum(training_flops_per_token(self.model_config, int(values["nfe"]), length) * tokens
                    for _, _, values in rows)
        window = {"tokens_per_second": tokens * len(rows) / elapsed, "mfu": flops / elapsed / peak}
        for step, drawn, values in rows:
            if not np.isfinite(values["loss"]):
                where = f"step {last_good}" if last_good is not None else "none yet"
                raise TrainingError(f"non-finite loss {values['loss']} at step {step + 1}; training stopped, last good "
                                    f"checkpoint: {where} under {self.checkpointer.directory}")
            values.update(window, steps_drawn=drawn or self.model_config.layers)
            writer.write(step + 1, values)
        return values

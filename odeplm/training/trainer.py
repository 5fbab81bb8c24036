"""Pre-training: config -> data -> sharded state -> jitted steps -> checkpoints.

The step function (`odeplm.training.program`) is compiled once per drawn step
count, under `jax.jit` with in/out shardings over the (data, fsdp, tensor) mesh
and the state donated. The loop knows nothing of which solver runs: the
`Discretisation` hands it a solve plan per step. Everything a step consumes
(batch, dropout key, step count) derives from (seed, step), so a resumed run
replays the uninterrupted one.

The run takes its workdir's lock before it reads anything there, so a second
run on a busy workdir touches nothing; a run that fails to start gives back
the lock and leaves nothing it created. The loop is a loop plus hooks
(`odeplm.training.hooks`): validation, logging (each window checked finite
first), saving, each on its own cadence, and stop signals agreed at boundaries.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from odeplm.core.config import ConfigError, ModelConfig
from odeplm.core.errors import TrainingError
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
from odeplm.training.hooks import Hook, ProfileWindow, StopSignals, run_hooks
from odeplm.training.metrics import MetricWindow, MetricWriter, measure_matmul_peak
from odeplm.training.program import BATCH_FIELDS, TrainProgram

log = logging.getLogger("odeplm")


class Trainer:
    """Owns one run: its workdir (locked while the Trainer is open), mesh, data, state and checkpoints."""

    def __init__(self, config: ConfigDict, workdir: str):
        self.config = config
        self.settings = settings = TrainSettings.from_config(config)
        self.model_config = ModelConfig.from_dict(config.model)
        self.workdir = workdir
        self._claim_workdir()
        try:
            self.program = TrainProgram(self.model_config, settings, make_mesh(*settings.mesh))
            self.mesh, self.graphdef = self.program.mesh, self.program.graphdef
            self.checkpointer = Checkpointer(self.path / "checkpoints", keep=settings.keep,
                                             async_save=settings.async_save)
            self.state, restored, self.start_step = self._restore_or_init(self.program.abstract_state)
            self.tokenizer = self._prepared_tokenizer(restored)
            self.train_batches = self._batches("train", shuffle=True)
            self.validation_batches = self._batches("validation", shuffle=False)
        except BaseException:
            self._abandon_workdir()
            raise
        self._validation_programs: dict = {}

    def _claim_workdir(self):
        """Creates the workdir if need be and takes its lock (process 0), before anything reads it."""
        self.path = path = run_path(self.workdir)
        if path.exists() and not path.is_dir():
            raise ConfigError("workdir", f"{self.workdir} is a file, not a directory")
        self._created = [p for p in (path / "checkpoints", path) if not p.exists()]  # what to remove on a failed start
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # read-only, or under a file
            raise ConfigError("workdir", f"cannot create {self.workdir}: {error.strerror or error}") from None
        if "://" not in self.workdir and not os.access(path, os.W_OK):
            raise ConfigError("workdir", f"{self.workdir} is not writable")
        self.lock = WorkdirLock(self.workdir) if jax.process_index() == 0 else None
        if self.lock is not None:
            self.lock.acquire()  # a busy workdir stops the run here, with nothing read or written

    def _abandon_workdir(self):
        """After a failed start: the lock given back, and the folders this run made removed if still empty."""
        if getattr(self, "checkpointer", None) is not None:
            self.checkpointer.close()
        if self.lock is not None:
            self.lock.release()
        for folder in self._created:
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()

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
                                             sample_characters=settings.tokenizer_characters, kind=settings.tokenizer,
                                             train=False)

    def _batches(self, split: str, *, shuffle: bool) -> Batches:
        return split_batches(self.settings.dataset, split, self.settings.data_dir, self.tokenizer,
                             length=self.model_config.max_length, batch_size=self.settings.batch_size,
                             objective=self.model_config.objective, seed=self.settings.seed, shuffle=shuffle,
                             index=self.settings.record_index, shuffle_blocks=self.settings.shuffle_blocks,
                             max_targets=self.model_config.masked_positions)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        """Finishes any save in flight, closes the checkpointer and gives the workdir back."""
        self.checkpointer.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def save_config(self) -> dict:
        return {"model": self.model_config.to_dict(), "run": self.config.to_dict()}

    def run(self) -> dict:
        """Trains from the current step to `train.steps`; returns a summary."""
        settings = self.settings
        window = MetricWindow(self.model_config, settings.batch_size, measure_matmul_peak() * jax.device_count())
        last_good = [self.start_step if self.checkpointer.steps() else None]
        progress = tqdm(total=settings.steps, initial=self.start_step, disable=jax.process_index() != 0,
                        desc="pre-training", unit="step")
        writer = MetricWriter(self.workdir, resumed_at=self.start_step)

        def log_window(done: int):
            rows = window.close()
            check_finite(rows, last_good[0], self.checkpointer.directory)
            for step, values in rows:
                writer.write(step, values)
            if self.lock is not None:
                self.lock.refresh()
            progress.update(len(rows))
            last = rows[-1][1]
            progress.set_postfix(loss=f"{last['loss']:.3f}", mfu=f"{last['mfu']:.2f}",
                                 tokens_per_s=f"{last['tokens_per_second']:,.0f}")

        def save(done: int):
            if window.pending:  # a step is saved only once its window's losses are checked finite
                log_window(done)
            self.checkpointer.save(done, params=self.state["params"], config=self.save_config(),
                                   tokenizer=self.tokenizer.to_json(),
                                   optimizer={k: self.state[k] for k in ("step", "opt_state")})
            last_good[0] = done

        hooks = [
            Hook("validate", settings.eval_every, lambda done: window.annotate(self.validate())),
            Hook("log", settings.log_every, log_window, at_end=True),
            Hook("save", settings.checkpoint_every, save, at_end=True),
        ]
        done = self.start_step
        profile = ProfileWindow(settings.profile_start, settings.profile_steps, os.fspath(self.path / "tensorboard"))
        reader = self.train_batches.iterate(done, jax.process_index(), jax.process_count(),
                                            threads=settings.read_threads)
        try:
            with StopSignals((settings.log_every, settings.checkpoint_every)) as stop:
                while done < settings.steps:
                    profile.before(done)
                    drawn = settings.discretisation.draw(settings.seed, done)
                    local = {field: value for field, value in next(reader).items() if field in BATCH_FIELDS}
                    key = jax.random.fold_in(jax.random.key(settings.seed), done)
                    coarse = settings.distillation.active(done, settings.seed)
                    with jax.profiler.StepTraceAnnotation("train", step_num=done):  # a profile's step marker
                        self.state, metrics = self.program.step_function(drawn, coarse)(
                            self.state, global_batch(local, self.mesh), key)
                    window.add(done, drawn, metrics)
                    done += 1
                    profile.after(done, self.state)
                    stopping = stop.agreed(done)
                    run_hooks(hooks, done, end=stopping or done == settings.steps)
                    if stopping:
                        log.warning("stop requested (SIGTERM or Ctrl-C): saved step %d and stopping", done)
                        break
        finally:
            profile.stop(self.state)
            progress.close()
            self.checkpointer.wait()
            writer.close()
        return {"step": done, "preempted": done < settings.steps}

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


def check_finite(rows: list[tuple[int, dict]], last_good: int | None, directory) -> None:
    """Stops training at the first non-finite loss of a window, naming the step and the checkpoint kept."""
    for step, values in rows:
        if not np.isfinite(values["loss"]):
            where = f"step {last_good}" if last_good is not None else "none yet"
            raise TrainingError(f"non-finite loss {values['loss']} at step {step}; training stopped, last good "
                                f"checkpoint: {where} under {directory}")

"""The `train`, `data`, `checkpoint` and `mesh` sections of a run config, validated once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict

from odeplm.config import ConfigError
from odeplm.data.prepared import INDEX_OPTIONS
from odeplm.data.tokenizer import KINDS
from odeplm.recipe import Discretisation, Distillation
from odeplm.run_config import default_config
from odeplm.solvers import Solve, SolverError


def _solves(field: str, text: str) -> tuple[str, ...]:
    """Comma-separated solves, each checked (one solve for every segment)."""
    solves = tuple(part.strip() for part in str(text).split(",") if part.strip())
    for solve in solves:
        try:
            Solve.parse(solve)
        except SolverError as error:
            raise ConfigError(field, str(error)) from None
    return solves


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
    eval_every: int
    eval_solves: tuple[str, ...]
    dataset: str
    data_dir: str
    shards: int
    workers: int
    read_threads: int
    record_index: str
    tokenizer: str
    tokenizer_characters: int
    checkpoint_every: int
    keep: int
    async_save: bool
    mesh: tuple[int, int, int]
    discretisation: Discretisation
    distillation: Distillation

    @classmethod
    def from_saved(cls, run: Mapping[str, Any]) -> "TrainSettings":
        """The settings of a saved run (`Checkpointer` keeps `config.to_dict()`), over
        today's defaults for the fields it predates; fields since removed are ignored."""
        config = default_config()
        for name, value in run.items():
            if isinstance(value, Mapping) and name in config:
                config[name].update({k: v for k, v in value.items() if k in config[name]})
            elif name in config:
                config[name] = value
        return cls.from_config(config)

    @classmethod
    def from_config(cls, config: ConfigDict) -> "TrainSettings":
        train, data, ckpt, mesh = config.train, config.data, config.checkpoint, config.mesh
        values = {
            "seed": (config.seed, 0), "train.steps": (train.steps, 1), "train.batch_size": (train.batch_size, 1),
            "train.warmup_steps": (train.warmup_steps, 0), "train.grad_accum": (train.grad_accum, 1),
            "train.log_every": (train.log_every, 1), "train.eval_batches": (train.eval_batches, 1),
            "train.eval_every": (train.eval_every, 0),
            "data.shards": (data.shards, 1), "data.workers": (data.workers, 0),
            "data.read_threads": (data.read_threads, 1), "data.tokenizer_characters": (data.tokenizer_characters, 1),
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
        if data.record_index not in INDEX_OPTIONS:
            raise ConfigError("data.record_index", f"must be one of {sorted(INDEX_OPTIONS)}, got {data.record_index!r}")
        if data.tokenizer not in KINDS:
            raise ConfigError("data.tokenizer", f"must be one of {KINDS}, got {data.tokenizer!r}")
        if not data.dataset:
            raise ConfigError("data.dataset", "is empty")
        return cls(
            seed=config.seed, steps=train.steps, batch_size=train.batch_size, learning_rate=float(train.learning_rate),
            warmup_steps=train.warmup_steps, weight_decay=float(train.weight_decay), clip_norm=float(train.clip_norm),
            grad_accum=train.grad_accum, log_every=train.log_every, eval_batches=train.eval_batches,
            eval_every=train.eval_every, eval_solves=_solves("train.eval_solves", train.eval_solves),
            dataset=data.dataset, data_dir=os.path.expanduser(data.data_dir or "~/tensorflow_datasets"),
            shards=data.shards, workers=data.workers or os.cpu_count() or 1, read_threads=data.read_threads,
            record_index=data.record_index,
            tokenizer=data.tokenizer, tokenizer_characters=data.tokenizer_characters,
            checkpoint_every=ckpt.every, keep=ckpt.keep, async_save=bool(ckpt.async_save),
            mesh=(mesh.data, mesh.fsdp, mesh.tensor),
            discretisation=Discretisation.parse(train.solver, str(train.step_counts), str(train.step_weights),
                                                train.step_mode, train.curriculum_steps),
            distillation=Distillation.parse(str(train.distill_steps), str(train.distill_weights),
                                            train.distill_label_weight, train.distill_hidden_weight,
                                            str(train.distill_solver)),
        )

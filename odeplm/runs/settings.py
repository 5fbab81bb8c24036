"""A run's configuration, in one place: the defaults every config file starts
from (`default_config`), and its `train`, `data`, `checkpoint` and `mesh`
sections validated once (`TrainSettings`). A saved run is read back over
today's defaults (`TrainSettings.from_saved`), so a field added later still
has its value when an older checkpoint is loaded. The `model` section is a
`ModelConfig` (`odeplm.core.config`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict

from odeplm.core.config import ConfigError, ModelConfig, is_count
from odeplm.core.solvers import Solve, SolverError
from odeplm.data.prepared import INDEX_OPTIONS
from odeplm.data.tokenizer import KINDS, TOKENIZER_CHARACTERS
from odeplm.runs.recipe import Discretisation, Distillation


def default_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    # ModelConfig's own defaults; unset optional fields stay placeholders typed from their
    # annotations, so that --config.model.embedding_size=128 still parses (None: equal to the width).
    optional = {"int | None": int, "bool | None": bool, "str | None": str}
    config.model = ConfigDict({
        field.name: config_dict.placeholder(optional[field.type]) if field.default is None else field.default
        for field in dataclasses.fields(ModelConfig)
    })
    config.model.update(vocab_size=2048, width=256, heads=4, mlp_width=1024)
    # data_dir "" -> ~/tensorflow_datasets; workers 0 -> every core (tokenizing, in `train.prepare`);
    # tokenizer "bpe" or "char" (one piece per character; model.vocab_size must then be the
    # number the corpus holds, which the error names), trained on at most tokenizer_characters
    # of the training split; read_threads read each process's next batches in the background
    # during training; record_index
    # "offloaded" keeps memory flat whatever the corpus, "in_memory" reads faster; shuffle_blocks 0 draws
    # training windows uniformly through that index, K > 0 draws them K blocks of 1 Mi tokens at a time,
    # each read in sequence (odeplm.data.blocks: fast at flat memory, a batch mixes K stretches of the corpus).
    config.data = ConfigDict(dict(dataset="shakespeare", data_dir="", shards=16, workers=0, tokenizer="bpe",
                                  tokenizer_characters=TOKENIZER_CHARACTERS, read_threads=2, record_index="offloaded",
                                  shuffle_blocks=0))
    config.train = ConfigDict(dict(
        steps=1000, batch_size=32, learning_rate=1e-3, warmup_steps=100, weight_decay=0.01, clip_norm=1.0,
        grad_accum=1, log_every=10, eval_batches=8,
        # validation every eval_every steps (0: at the end only), at the training discretisation
        # and at each of eval_solves ("euler:2,rk4:1"), into metrics.jsonl and TensorBoard
        eval_every=0, eval_solves="",
        solver="euler", step_counts="", step_weights="",  # "" -> the depth plan's own steps (tau = 1)
        # a drawn N runs N steps over each segment's span ("span") or N steps of its own size ("depth");
        # curriculum_steps > 0 climbs through the step counts, smallest first, over those steps, then draws
        step_mode="span", curriculum_steps=0,
        # the sandwich rule (odeplm.runs.recipe.Distillation): coarse step counts trained beside full depth
        # (solver and mode "" -> the training solver and step mode); distill_state_weight matches each coarse
        # step's state with the full-depth state where it lands
        distill_steps="", distill_weights="", distill_label_weight=0.5, distill_hidden_weight=0.0, distill_solver="",
        distill_mode="", distill_state_weight=0.0,
        distill_start="0",  # the coarse terms join after this many steps: one for all, or one per term
        # one more coarse term per batch, a solve drawn from these ("euler:1,euler:3,midpoint:1"; weights "" ->
        # uniform), from the last distill_start on
        distill_draw="", distill_draw_weights="",
        # trace steps [profile_start, profile_start + profile_steps) with jax.profiler into WORKDIR/tensorboard
        profile_start=1, profile_steps=0,
    ))
    config.checkpoint = ConfigDict(dict(every=200, keep=3, async_save=True))
    config.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # the final table's solves, printed with a sample after training ("": the run only trains)
    config.eval = ConfigDict(dict(solves="euler,euler:3,euler:2,euler:1,midpoint:3,heun:3,rk4:1,bosh3:2"))
    return config


def _solves(field: str, text: str) -> tuple[str, ...]:
    """Comma-separated solves, each checked (one solve for every segment)."""
    solves = tuple(part.strip() for part in str(text).split(",") if part.strip())
    for solve in solves:
        try:
            Solve.parse(solve)
        except SolverError as error:
            raise ConfigError(field, str(error)) from None
    return solves


def _widened(default: Any, saved: Any) -> Any:
    """A saved number where today's field is text, a field since widened to one value per term
    (`train.distill_start`), reads as its text."""
    numeric = isinstance(saved, (int, float)) and not isinstance(saved, bool)
    return str(saved) if isinstance(default, str) and numeric else saved


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
    shuffle_blocks: int
    tokenizer: str
    tokenizer_characters: int
    checkpoint_every: int
    keep: int
    async_save: bool
    mesh: tuple[int, int, int]
    discretisation: Discretisation
    distillation: Distillation
    profile_start: int
    profile_steps: int

    @classmethod
    def from_saved(cls, run: Mapping[str, Any]) -> "TrainSettings":
        """The settings of a saved run (`Checkpointer` keeps `config.to_dict()`), over
        today's defaults for the fields it predates; fields since removed are ignored."""
        config = default_config()
        for name, value in run.items():
            if isinstance(value, Mapping) and name in config:
                config[name].update({k: _widened(config[name][k], v) for k, v in value.items() if k in config[name]})
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
            "train.eval_every": (train.eval_every, 0), "train.profile_start": (train.profile_start, 0),
            "train.profile_steps": (train.profile_steps, 0),
            "data.shards": (data.shards, 1), "data.workers": (data.workers, 0),
            "data.read_threads": (data.read_threads, 1), "data.tokenizer_characters": (data.tokenizer_characters, 1),
            "data.shuffle_blocks": (data.shuffle_blocks, 0),
            "checkpoint.every": (ckpt.every, 1), "checkpoint.keep": (ckpt.keep, 1),
        }
        for name, (value, minimum) in values.items():
            if not is_count(value, minimum):
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
            record_index=data.record_index, shuffle_blocks=data.shuffle_blocks,
            tokenizer=data.tokenizer, tokenizer_characters=data.tokenizer_characters,
            checkpoint_every=ckpt.every, keep=ckpt.keep, async_save=bool(ckpt.async_save),
            mesh=(mesh.data, mesh.fsdp, mesh.tensor),
            discretisation=Discretisation.parse(train.solver, str(train.step_counts), str(train.step_weights),
                                                train.step_mode, train.curriculum_steps),
            distillation=Distillation.parse(str(train.distill_steps), str(train.distill_weights),
                                            train.distill_label_weight, train.distill_hidden_weight,
                                            str(train.distill_solver), str(train.distill_start),
                                            str(train.distill_mode), train.distill_state_weight,
                                            str(train.distill_draw), str(train.distill_draw_weights)),
            profile_start=train.profile_start, profile_steps=train.profile_steps,
        )

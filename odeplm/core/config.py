"""Model configuration and depth plans, validated once.

Configs are frozen and hashable, so a model's configuration can key compiled
functions. Every invalid value raises `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from odeplm.core.errors import OdeplmError


class ConfigError(OdeplmError):
    """An invalid configuration value; the message starts with the field's name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class Segment:
    """One block, applied `steps` times in training over the time span [0, span].

    The training step size is tau = span / steps; span defaults to steps (tau = 1),
    which reproduces the ordinary layer stack.
    """

    steps: int
    span: float | None = None

    def __post_init__(self):
        if not is_count(self.steps):
            raise ConfigError("depth", f"segment steps must be a positive integer, got {self.steps!r}")
        span = float(self.steps) if self.span is None else self.span
        if isinstance(span, bool) or not isinstance(span, (int, float)) or not math.isfinite(span) or span <= 0:
            raise ConfigError("depth", f"segment span must be a positive number, got {self.span!r}")
        object.__setattr__(self, "span", float(span))

    @property
    def tau(self) -> float:
        return self.span / self.steps


DepthPlan = tuple[Segment, ...]


def fully_shared(layers: int, span: float | None = None) -> DepthPlan:
    """One block applied `layers` times (ALBERT, universal transformers)."""
    return (Segment(layers, span),)


def partially_shared(layers: int, groups: int) -> DepthPlan:
    """`groups` blocks, each applied layers / groups times in turn."""
    if groups < 1 or layers % groups:
        raise ConfigError("depth", f"{layers} layers do not split into {groups} equal groups")
    return tuple(Segment(layers // groups) for _ in range(groups))


def sandwich(prelude: int, core: int, coda: int) -> DepthPlan:
    """Unshared prelude and coda layers around one shared core."""
    return unshared(prelude) + (Segment(core),) + unshared(coda)


def unshared(layers: int) -> DepthPlan:
    """An ordinary transformer: every layer its own block."""
    return tuple(Segment(1) for _ in range(layers))


_SEGMENT = re.compile(r"^(?:(\d+)x)?(\d+)(?:@([0-9.eE+-]+))?$")


def parse_depth(text: str) -> DepthPlan:
    """Parses a depth plan written as comma-separated segments `[Kx]STEPS[@SPAN]`.

    `12` is fully shared over 12 steps; `4x3` is four blocks of three steps;
    `1,10,1` is a prelude, a shared core and a coda; `12x1` is unshared;
    `24@12` trains 24 steps of size 0.5 over the span of 12 layers.
    """
    segments: list[Segment] = []
    for item in text.replace(" ", "").split(","):
        match = _SEGMENT.match(item)
        if not match:
            raise ConfigError("depth", f"cannot parse segment {item!r} in {text!r}; expected [Kx]STEPS[@SPAN]")
        repeat, steps, span = match.groups()
        if repeat is not None and int(repeat) < 1:
            raise ConfigError("depth", f"segment {item!r} in {text!r} repeats a block {repeat} times; at least once")
        try:
            span_value = None if span is None else float(span)
        except ValueError:
            raise ConfigError("depth", f"span {span!r} in {text!r} is not a number") from None
        segments.extend(Segment(int(steps), span_value) for _ in range(int(repeat or 1)))
    return tuple(segments)


def format_depth(plan: DepthPlan) -> str:
    """The inverse of `parse_depth`, for logs and saved configs."""
    return ",".join(f"{s.steps}" if s.span == s.steps else f"{s.steps}@{s.span!r}" for s in plan)


_CHOICES = {
    "norm": ("pre", "post"),
    "activation": ("gelu_new", "gelu", "relu", "silu"),
    "objective": ("masked", "causal"),
    "dtype": ("float32", "bfloat16", "float64"),
    "logits_dtype": (None, "float32", "bfloat16", "float64"),
    "param_dtype": ("float32", "float64"),
    "attention": ("xla", "cudnn"),
    "remat": ("none", "full", "dots"),
    "residual_gate": ("none", "rezero"),
}

# Fields that change how a model runs, not its parameters: a checkpoint saved
# with one value restores under another (a pod run with remat, say, evaluated without).
RUNTIME_FIELDS = frozenset({"dtype", "logits_dtype", "attention", "remat", "solve_checkpoints", "loss_chunk",
                            "masked_positions"})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A parameter-shared transformer language model.

    `embedding_size` smaller than `width` gives ALBERT's factorised embeddings
    with a projection (`project_embeddings` defaults to "when the sizes differ";
    ALBERT projects even when they are equal). `inner_layers` distinct layers
    make up one block (ALBERT's `inner_group_num`). `norm="post"` with `activation="gelu_new"` is ALBERT's
    layer, `norm="pre"` the GPT layer. `depth` is the depth plan (a tuple of
    segments, or a string for `parse_depth`). `time_features` > 0 (even) makes the
    field time-aware, f(t, h), through that many sinusoidal features of t
    (`odeplm.core.block.TimeModulation`); 0 is the time-blind field of an ordinary stack.
    `stride_features` > 0 (even) makes it read the solver's step too, as its stride:
    how many training steps one step spans (Frans et al. 2024's shortcut models condition
    on the step size), so that a coarse step need not be the fine step scaled.
    `residual_gate="rezero"` scales each sub-layer's update by a learned scalar that
    starts at 0 (ReZero, SkipInit), so the block starts as the identity.

    The loss never needs the logits of a whole batch at once: `loss_chunk` positions
    per chunk are decoded, scored and recomputed in the backward pass (MaxText's
    vocabulary tiling, over positions), and a masked model with `masked_positions`
    decodes only that many target positions per row (BERT's max_predictions_per_seq;
    the data keeps at most that many targets). `logits_dtype` is the decoder
    matmul's output dtype (None: `dtype`).

    `remat` rematerialises inside one evaluation of the block; `solve_checkpoints`
    keeps only that many of a fixed-step solve's states for the backward pass and
    recomputes the others (None: every state), which is where a shared model's
    activation memory grows with N.
    """

    vocab_size: int = 512
    width: int = 128
    heads: int = 4
    mlp_width: int = 512
    max_length: int = 128
    embedding_size: int | None = None
    project_embeddings: bool | None = None
    type_vocab_size: int = 0
    norm: str = "pre"
    activation: str = "gelu_new"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    objective: str = "causal"
    depth: DepthPlan | str = "6"
    inner_layers: int = 1
    time_features: int = 0
    stride_features: int = 0
    residual_gate: str = "none"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "xla"
    remat: str = "none"
    solve_checkpoints: int | None = None
    logits_dtype: str | None = None
    loss_chunk: int | None = None
    masked_positions: int | None = None

    def __post_init__(self):
        for name in ("vocab_size", "width", "heads", "mlp_width", "max_length"):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("type_vocab_size", self.type_vocab_size, minimum=0)
        _require_int("inner_layers", self.inner_layers, minimum=1)
        for name in ("time_features", "stride_features"):
            _require_int(name, getattr(self, name), minimum=0)
        for name in ("solve_checkpoints", "loss_chunk", "masked_positions"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name), minimum=1)
        if self.masked_positions is not None and self.objective != "masked":
            raise ConfigError("masked_positions", f"applies to the masked objective only, not {self.objective!r}")
        for name in ("time_features", "stride_features"):
            if getattr(self, name) % 2:
                raise ConfigError(name, f"must be even (a sine and a cosine per frequency), got {getattr(self, name)}")
        if self.embedding_size is None:
            object.__setattr__(self, "embedding_size", self.width)
        _require_int("embedding_size", self.embedding_size, minimum=1)
        if self.project_embeddings is None:
            object.__setattr__(self, "project_embeddings", self.embedding_size != self.width)
        if not isinstance(self.project_embeddings, bool):
            raise ConfigError("project_embeddings", f"must be a boolean, got {self.project_embeddings!r}")
        if self.embedding_size != self.width and not self.project_embeddings:
            raise ConfigError("project_embeddings", f"embedding_size {self.embedding_size} differs from width "
                                                    f"{self.width}, so embeddings need a projection")
        if self.width % self.heads:
            raise ConfigError("heads", f"width {self.width} is not divisible by {self.heads} heads")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(name, f"must be one of {choices}, got {getattr(self, name)!r}")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(name, f"must be in [0, 1), got {value!r}")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(name, f"must be positive and finite, got {value!r}")
        depth = parse_depth(self.depth) if isinstance(self.depth, str) else self.depth
        if not isinstance(depth, (tuple, list)) or not depth or not all(isinstance(s, Segment) for s in depth):
            raise ConfigError("depth", f"must be a non-empty sequence of Segment or a depth string, got {self.depth!r}")
        object.__setattr__(self, "depth", tuple(depth))

    @property
    def layers(self) -> int:
        """Training-time layer applications summed over segments (L)."""
        return sum(s.steps for s in self.depth)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Builds a config from a dict or ml_collections ConfigDict; unknown keys are errors."""
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown model config field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def architecture(self) -> dict[str, Any]:
        """`to_dict()` without the runtime fields: what a checkpoint's arrays must fit."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values; `from_dict(to_dict())` round-trips."""
        values = dataclasses.asdict(self)
        values["depth"] = format_depth(self.depth)
        return values


def is_count(value: Any, minimum: int = 1) -> bool:
    """Whether `value` is an integer (not a bool) of at least `minimum`: the rule of
    every count, size and step number a config, solve or command takes."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def _require_int(name: str, value: Any, *, minimum: int):
    if not is_count(value, minimum):
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")

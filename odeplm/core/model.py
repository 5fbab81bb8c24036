"""The language model: embeddings -> depth plan of ODE segments -> head.

Each segment owns one `Block` and is integrated by `odeplm.core.ode.integrate` with
the solve chosen per call, so the same parameters run at any (solver, steps).
`forward` is the compiled entry point: one executable per
(solver plan, input shape), reused across calls. `truncated` cuts a model
after its first k layers (early exit, the baseline every grid reports).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from odeplm.core.block import Block, attention_mask, layer_norm
from odeplm.core.config import DepthPlan, ModelConfig, Segment
from odeplm.core.embeddings import Embeddings
from odeplm.core.heads import CausalLMHead, ClassifierHead, MaskedLMHead
from odeplm.core.inputs import check_inputs
from odeplm.core.ode import integrate
from odeplm.core.solvers import Solve, SolvePlan, plan_solves


class Encoded(NamedTuple):
    hidden: Float[Array, "batch seq width"]
    nfe: Int[Array, ""]  # function evaluations of the shared blocks, summed over segments
    ok: Bool[Array, ""]  # every segment's solve reached the end of its span
    states: tuple[Float[Array, "steps batch seq width"], ...] | None = None  # per segment, after each step


class ModelOutput(NamedTuple):
    logits: Float[Array, "batch seq out"]
    hidden: Float[Array, "batch seq width"]
    nfe: Int[Array, ""]
    ok: Bool[Array, ""]


class Encoder(nnx.Module):
    """Embeddings and the depth plan; Pre-LN models end with a final LayerNorm."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in config.depth])
        self.final_norm = layer_norm(config, config.width, rngs) if config.norm == "pre" else None

    def __call__(
        self,
        tokens: Int[Array, "batch seq"],
        padding_mask: Bool[Array, "batch seq"] | None = None,
        token_types: Int[Array, "batch seq"] | None = None,
        *,
        solves: SolvePlan,
        key: PRNGKeyArray | None = None,
        keep_states: bool = False,
    ) -> Encoded:
        """Runs the depth plan with one resolved `Solve` per segment; a key enables dropout;
        `keep_states` also returns each segment's state after every step (before the final norm)."""
        config = self.config
        if padding_mask is None:
            padding_mask = jnp.ones(tokens.shape, bool)
        mask = attention_mask(padding_mask, causal=config.objective == "causal")
        keys = [None] * (len(config.depth) + 1) if key is None else list(jax.random.split(key, len(config.depth) + 1))
        h = self.embeddings(tokens, token_types, keys[0])
        nfe, ok, states = jnp.zeros((), jnp.int32), jnp.ones((), bool), []
        for block, segment, solve, segment_key in zip(self.blocks, config.depth, solves, keys[1:]):
            h, segment_nfe, segment_ok = integrate(
                block, h, mask, span=solve.span or segment.span, solve=solve, key=segment_key,
                padding_mask=padding_mask, checkpoints=config.solve_checkpoints, states=keep_states, tau=segment.tau,
            )
            if keep_states:
                states.append(h)
                h = h[-1]
            nfe, ok = nfe + segment_nfe, ok & segment_ok
        if self.final_norm is not None:
            h = self.final_norm(h)
        return Encoded(h, nfe, ok, tuple(states) if keep_states else None)


class LanguageModel(nnx.Module):
    """A masked or causal LM (by `config.objective`) with a tied decoder."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.head = (MaskedLMHead if config.objective == "masked" else CausalLMHead)(config, rngs=rngs)

    def __call__(
        self,
        tokens: Int[Array, "batch seq"],
        padding_mask: Bool[Array, "batch seq"] | None = None,
        token_types: Int[Array, "batch seq"] | None = None,
        *,
        solve: Solve | str | tuple | None = None,
        key: PRNGKeyArray | None = None,
    ) -> ModelOutput:
        """Logits at every position. `solve`: None (training discretisation), one
        solve for all segments, or one per segment; see `plan_solves`."""
        encoded = self.encode(tokens, padding_mask, token_types, solve=solve, key=key)
        return ModelOutput(self.decode(encoded.hidden), encoded.hidden, encoded.nfe, encoded.ok)

    def encode(self, tokens, padding_mask=None, token_types=None, *, solve=None, key=None,
               keep_states=False) -> Encoded:
        """The final hidden states, before the head: what a loss decodes a chunk at a time."""
        return self.encoder(tokens, padding_mask, token_types, solves=plan_solves(self.config.depth, solve), key=key,
                            keep_states=keep_states)

    def decode(self, hidden: Float[Array, "batch seq width"]) -> Float[Array, "batch seq vocab"]:
        """Logits of hidden states at any positions (all of a sequence, a chunk, or gathered targets)."""
        return self.head(hidden, self.encoder.embeddings)


class SequenceClassifier(nnx.Module):
    """An encoder with a pooled classification head, for fine-tuning."""

    def __init__(self, config: ModelConfig, num_labels: int, *, pooling: str | None = None, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.head = ClassifierHead(config, num_labels, pooling=pooling, rngs=rngs)

    def __call__(self, tokens, padding_mask=None, token_types=None, *, solve=None, key=None) -> ModelOutput:
        if padding_mask is None:
            padding_mask = jnp.ones(tokens.shape, bool)
        encoded = self.encoder(tokens, padding_mask, token_types, solves=plan_solves(self.config.depth, solve), key=key)
        return ModelOutput(self.head(encoded.hidden, padding_mask, key), encoded.hidden, encoded.nfe, encoded.ok)


def abstract_model(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's structure and parameter shapes, allocating nothing: what restoring,
    converting and sharding a model start from."""
    return nnx.split(nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0))))


def truncated_depth(depth: DepthPlan, layers: int) -> DepthPlan:
    """The first `layers` training steps of a depth plan, each segment keeping its step size."""
    segments, left = [], layers
    for segment in depth:
        if left <= 0:
            break
        take = min(segment.steps, left)
        segments.append(Segment(take, take * segment.tau))
        left -= take
    return tuple(segments)


def truncated(model: LanguageModel, layers: int) -> LanguageModel:
    """The model cut after its first `layers` training steps (early exit); blocks past the cut are dropped."""
    config = dataclasses.replace(model.config, depth=truncated_depth(model.config.depth, layers))
    graphdef, state = abstract_model(config)
    params = nnx.to_pure_dict(nnx.state(model))
    params["encoder"]["blocks"] = {i: params["encoder"]["blocks"][i] for i in range(len(config.depth))}
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


@jax.jit(static_argnames=("solves",))
def _forward(model, tokens, padding_mask, token_types, solves: SolvePlan) -> ModelOutput:
    return model(tokens, padding_mask, token_types, solve=solves)


def forward(
    model: LanguageModel | SequenceClassifier,
    tokens,
    padding_mask=None,
    token_types=None,
    *,
    solve: Solve | str | tuple | None = None,
) -> ModelOutput:
    """Checks inputs on the host, then runs the model compiled once per
    (solver plan, input shape) and reused for every later call."""
    check_inputs(model.config, tokens, padding_mask, token_types)
    solves = plan_solves(model.config.depth, solve)
    tokens = jnp.asarray(tokens, jnp.int32)
    padding_mask = None if padding_mask is None else jnp.asarray(padding_mask, bool)
    token_types = None if token_types is None else jnp.asarray(token_types, jnp.int32)
    return _forward(model, tokens, padding_mask, token_types, solves)

"""Text generation from causal models: one sampling loop over two sources of
next-token logits.

- KV-cached decoding (the fast path) at any fixed-step solve. Each function
  evaluation of the shared block sees the hidden states of earlier tokens at
  that same evaluation, so the cache holds one key/value slot per evaluation
  (stage x step, per segment and inner layer). A diffrax loop cannot address a
  cache slot per evaluation, so decoding runs the same explicit Runge-Kutta
  tableaux in a hand-written loop.
- Recomputation (the reference): the whole sequence through the model's own
  diffrax solve for every new token; any solve, adaptive and `ln_euler`
  included, compiled once per (solve plan, batch size).

`tests/test_generate.py` checks the two token for token. Prompts of different
lengths are left-padded in the cache, with positions counted from each
prompt's first token, so a batch decodes as each prompt alone.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from odeplm.core.config import is_count
from odeplm.core.inputs import InputError, check_inputs, padded_rows
from odeplm.core.solvers import SOLVERS, SolvePlan, SolverError, plan_solves
from odeplm.core.special_ids import EOS


def tableau(solver: str) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]:
    """(a, b) of an explicit RK method: stage i reads stages j < i with weights a[i][j]."""
    if solver == "ln_euler":
        raise SolverError("cached generation runs Runge-Kutta methods of the field; ln_euler is not one")
    if solver == "euler":
        return ((),), (1.0,)
    table = SOLVERS[solver].make().tableau
    a = ((),) + tuple(tuple(float(x) for x in row) for row in table.a_lower)
    return a, tuple(float(x) for x in table.b_sol)


class Sampling(NamedTuple):
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0


def choose(logits, key, sampling: Sampling):
    """Next tokens [batch] from logits [batch, vocab]."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
        cutoff_index = jnp.sum(cumulative < sampling.top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(ordered, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def empty_cache(model, solves: SolvePlan, batch: int, slots: int):
    config = model.config
    dtype = jnp.dtype(config.dtype)
    caches = []
    for solve in solves:
        evaluations = solve.info.nfe(solve.steps, cached=True)
        shape = (evaluations, config.inner_layers, batch, slots, config.heads, config.head_dim)
        caches.append((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)))
    return caches


def _solve_segment(block, h, mask, cache, index, span: float, tau: float, solve):
    """The fixed-step RK solve of one segment; evaluation (step n, stage i) reads and
    writes cache slot n * stages + i. The scan consumes each step's cache slots as
    inputs and emits the updated ones, so no loop iteration copies the whole cache."""
    a, b = tableau(solve.solver)
    stages, dt = len(b), span / solve.steps

    def step(h, inputs):
        n, step_keys, step_values = inputs
        slopes, keys, values = [], [], []
        for i in range(stages):
            y = h
            for j, weight in enumerate(a[i]):
                if weight:
                    y = y + slopes[j] * (weight * dt)
            time = (n + sum(a[i])) * dt / span  # the stage's t / span, for a time-aware block
            phi, (k, v) = block.cached(y, mask, (step_keys[i], step_values[i]), index, time, dt / tau)
            keys.append(k)
            values.append(v)
            slopes.append(phi - y)
        for weight, slope in zip(b, slopes):
            if weight:
                h = h + slope * (weight * dt)
        return h, (jnp.stack(keys), jnp.stack(values))

    by_step = tuple(c.reshape((solve.steps, stages) + c.shape[1:]) for c in cache)
    h, (keys, values) = jax.lax.scan(step, h, (jnp.arange(solve.steps), *by_step))
    return h, (keys.reshape(cache[0].shape), values.reshape(cache[1].shape))


def cacheable(solves: SolvePlan) -> bool:
    """Whether cached decoding can run the plan: fixed steps of Runge-Kutta methods of the field."""
    return not any(s.adaptive or s.solver == "ln_euler" for s in solves)


def decode(model, tokens, positions, valid, caches, index, solves: SolvePlan):
    """One cached decoding call: `tokens` [batch, n] enter at cache slots index..index + n - 1
    (`valid` marks the slots each row may attend to); returns the logits after the last
    of them and the updated caches."""
    encoder = model.encoder
    length = tokens.shape[1]
    query_slots = index + jnp.arange(length)
    mask = valid[:, None, :] & (jnp.arange(valid.shape[1])[None, None, :] <= query_slots[None, :, None])
    h = encoder.embeddings(tokens, positions=positions)
    new_caches = []
    for block, segment, solve, cache in zip(encoder.blocks, model.config.depth, solves, caches):
        h, cache = _solve_segment(block, h, mask, cache, index, solve.span or segment.span, segment.tau, solve)
        new_caches.append(cache)
    if encoder.final_norm is not None:
        h = encoder.final_norm(h)
    return model.head(h[:, -1:], encoder.embeddings)[:, 0], new_caches


# The caches are donated: each decode step updates them in place instead of copying them.
_decode_jit = jax.jit(decode, static_argnames=("solves",), donate_argnames=("caches",))


@jax.jit(static_argnames=("solves",))
def _last_logits(model, buffer, lengths, solves: SolvePlan):
    """Logits after the last real token of each right-padded row, recomputing every row."""
    mask = jnp.arange(buffer.shape[1])[None] < lengths[:, None]
    return model(buffer, mask, solve=solves).logits[jnp.arange(buffer.shape[0]), lengths - 1]


def _cached_logits(model, prompts: list[list[int]], slots: int, solves: SolvePlan):
    """Yields next-token logits [batch, vocab]; is sent each step's chosen tokens."""
    tokens, real = padded_rows(prompts, left=True)
    width = tokens.shape[1]
    pads = width - real.sum(1)
    valid = np.zeros((len(prompts), slots), bool)
    valid[:, :width] = real
    positions = np.maximum(np.arange(width)[None] - pads[:, None], 0)
    caches = empty_cache(model, solves, len(prompts), slots)
    logits, caches = _decode_jit(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid), caches,
                                 0, solves)
    for slot in range(width, slots):
        chosen = yield logits
        valid[:, slot] = True
        logits, caches = _decode_jit(model, jnp.asarray(chosen[:, None].astype(np.int32)),
                                     jnp.asarray((slot - pads)[:, None]), jnp.asarray(valid), caches, slot, solves)


def _recomputed_logits(model, prompts: list[list[int]], solves: SolvePlan):
    """As `_cached_logits`, by running the whole sequence again for every token."""
    buffer, _ = padded_rows(prompts, model.config.max_length)
    lengths = np.array([len(p) for p in prompts])
    while True:
        chosen = yield _last_logits(model, jnp.asarray(buffer), jnp.asarray(lengths), solves)
        buffer[np.arange(len(prompts)), lengths] = chosen
        lengths += 1


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, solve=None, sampling: Sampling = Sampling(),
             seed: int = 0, end_token: int | None = EOS, cached: bool = True) -> list[list[int]]:
    """Continuations (token ids, without the prompt) of each prompt; a row stops at
    `end_token` (not included) or after `max_new_tokens`. `cached=False` recomputes
    the sequence for every token: slower, for any solve."""
    config = model.config
    if config.objective != "causal":
        raise InputError("generation needs a causal model")
    solves = plan_solves(config.depth, solve)
    if cached and not cacheable(solves):
        raise SolverError("cached generation needs a fixed evaluation schedule of a Runge-Kutta method; use a "
                          "fixed-step solve, or cached=False")
    if not is_count(max_new_tokens):
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not prompts or min(map(len, prompts)) == 0:
        raise InputError("every prompt needs at least one token")
    width = max(map(len, prompts))
    slots = width + max_new_tokens
    if slots > config.max_length:
        raise InputError(f"prompt length {width} + {max_new_tokens} new tokens exceeds max_length "
                         f"{config.max_length}")
    check_inputs(config, padded_rows(prompts)[0])
    source = _cached_logits(model, prompts, slots, solves) if cached else _recomputed_logits(model, prompts, solves)
    logits = next(source)
    key = jax.random.key(seed)
    outputs = [[] for _ in prompts]
    done = np.zeros(len(prompts), bool)
    for step in range(max_new_tokens):
        key, subkey = jax.random.split(key)
        chosen = np.asarray(choose(logits, subkey, sampling))
        for row, token in enumerate(chosen):
            if not done[row]:
                if end_token is not None and token == end_token:
                    done[row] = True
                else:
                    outputs[row].append(int(token))
        if done.all() or step == max_new_tokens - 1:
            break
        logits = source.send(chosen)
    return outputs

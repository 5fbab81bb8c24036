"""Text from a causal model by recomputing the whole sequence for every new
token: simple, exact, and compiled once per (solve plan, buffer length).
It is the reference that cached generation must reproduce."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from odeplm.data.tokenizer import Tokenizer
from odeplm.special_ids import EOS
from odeplm.solvers import SolvePlan, plan_solves


@jax.jit(static_argnames=("solves",))
def _next_logits(model, buffer, length, solves: SolvePlan):
    logits = model(buffer, jnp.arange(buffer.shape[1])[None] < length, solve=solves).logits
    return logits[0, length - 1]


def sample_ids(model, ids: list[int], *, max_new_tokens: int, solve=None, temperature: float = 0.0,
               seed: int = 0) -> list[int]:
    """Continues token ids: greedy at temperature 0, else sampled with `seed`; stops at EOS."""
    config = model.config
    if config.objective != "causal":
        raise ValueError("sampling needs a causal model")
    if not ids or len(ids) >= config.max_length:
        raise ValueError(f"prompt must give 1 to {config.max_length - 1} tokens, got {len(ids)}")
    solves = plan_solves(config.depth, solve)
    buffer = np.zeros((1, config.max_length), np.int32)
    buffer[0, : len(ids)] = ids
    length, key = len(ids), jax.random.key(seed)
    while length < min(config.max_length, len(ids) + max_new_tokens):
        logits = _next_logits(model, jnp.asarray(buffer), length, solves)
        if temperature > 0:
            key, subkey = jax.random.split(key)
            token = int(jax.random.categorical(subkey, logits / temperature))
        else:
            token = int(jnp.argmax(logits))
        if token == EOS:
            break
        buffer[0, length] = token
        length += 1
    return buffer[0, len(ids) : length].tolist()


def sample(model, tokenizer: Tokenizer, prompt: str, *, max_new_tokens: int = 64, solve=None,
           temperature: float = 0.0, seed: int = 0) -> str:
    """Continues `prompt` as text (see `sample_ids`)."""
    ids = sample_ids(model, tokenizer.encode(prompt), max_new_tokens=max_new_tokens, solve=solve,
                     temperature=temperature, seed=seed)
    return tokenizer.decode(ids)

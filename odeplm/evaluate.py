"""Validation loss, accuracy, NFE and latency of one set of weights across solves.

Each solve plan compiles once; every plan sees the same validation batches.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from odeplm.data.pipeline import Batches
from odeplm.objectives import batch_loss
from odeplm.solvers import SolvePlan


def _evaluate_batch(graphdef, params, batch, solves: SolvePlan):
    total, weight, correct, out = batch_loss(nnx.merge(graphdef, params), batch, solves=solves)
    return total, weight, correct, out.nfe, out.ok


_evaluate_batch_jit = jax.jit(_evaluate_batch, static_argnums=(0, 3))


def evaluate(graphdef, params, batches: Batches, solves: SolvePlan, num_batches: int) -> dict:
    """Mean token loss (nats), perplexity, accuracy, mean NFE and seconds per batch."""
    totals = np.zeros(3)
    nfe, ok, seconds = [], True, 0.0
    for step in range(num_batches):
        batch = {k: jnp.asarray(v) for k, v in batches.batch(step).items()}
        if step == 0:  # compile outside the timing
            jax.block_until_ready(_evaluate_batch_jit(graphdef, params, batch, solves))
        start = time.perf_counter()
        out = jax.block_until_ready(_evaluate_batch_jit(graphdef, params, batch, solves))
        seconds += time.perf_counter() - start
        totals += np.array([float(x) for x in out[:3]])
        nfe.append(int(out[3]))
        ok = ok and bool(out[4])
    loss = totals[0] / max(totals[1], 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": totals[2] / max(totals[1], 1.0),
            "nfe": float(np.mean(nfe)), "seconds_per_batch": seconds / num_batches, "ok": ok}


def unigram_loss(batches: Batches, num_batches: int) -> float:
    """Cross-entropy of the scored targets under their own frequencies: the best a
    model that ignores context can reach (the plateau a stalled masked LM sits on)."""
    targets = np.concatenate([batch["targets"][batch["weights"] > 0]
                              for batch in map(batches.batch, range(num_batches))])
    frequencies = np.bincount(targets) / len(targets)
    frequencies = frequencies[frequencies > 0]
    return float(-np.sum(frequencies * np.log(frequencies)))

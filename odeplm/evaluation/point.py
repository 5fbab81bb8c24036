"""The one evaluation step every evaluator runs: a model at one solve plan,
compiled once for the batch shape. The same executable scores the batch loop
and is what `odeplm.evaluation.timing` times, so a grid point compiles once and its
latency is the latency of what was scored.

Validation during training, the end-of-run table, the accuracy-versus-speed
grid and fine-tuning accuracy all score through `PointProgram`; they differ
only in the metrics of one batch (`token_metrics`, `classification_metrics`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from flax import nnx

from odeplm.core.losses import batch_rows
from odeplm.core.solvers import SolvePlan
from odeplm.data.pipeline import Batches
from odeplm.evaluation.timing import Compiled


def token_metrics(model, batch: dict, solves: SolvePlan) -> dict:
    """Token loss, weight and correct predictions per row of a batch of `Batches`."""
    rows, out = batch_rows(model, batch, solves=solves)
    return {"loss": rows.loss, "weight": rows.weight, "correct": rows.correct, "nfe": out.nfe, "ok": out.ok}


def classification_metrics(model, batch: dict, solves: SolvePlan) -> dict:
    """Correct labels over the weighted rows of {tokens, padding_mask, labels, weights}."""
    out = model(batch["tokens"], batch["padding_mask"], solve=solves)
    correct = (out.logits.argmax(-1) == batch["labels"]) * batch["weights"]
    return {"weight": batch["weights"].sum(), "correct": correct.sum(), "nfe": out.nfe, "ok": out.ok}


@dataclasses.dataclass(frozen=True)
class PointProgram:
    """`metrics` of one model at one solve plan, compiled ahead of time for one batch
    shape; later calls may pass other parameters of the same shapes (training)."""

    executable: Any
    compile_s: float

    @classmethod
    def compile(cls, metrics: Callable, graphdef, params, solves: SolvePlan, batch: dict) -> PointProgram:
        start = time.perf_counter()
        executable = jax.jit(lambda params, batch: metrics(nnx.merge(graphdef, params), batch, solves)).lower(
            params, batch).compile()
        return cls(executable, time.perf_counter() - start)

    def score(self, params, batches: Iterable[dict]) -> dict:
        """Accuracy, mean NFE and whether every solve succeeded over `batches`; mean token
        loss (nats) and perplexity when the metrics sum a loss. Batches whose rows carry a
        group (a task's difficulty) are also scored per group, under "groups"."""
        sums, groups, nfe, ok = {}, {}, [], True
        for batch in batches:
            out = self.executable(params, batch)
            rows = {key: np.asarray(out[key], np.float64) for key in ("loss", "weight", "correct") if key in out}
            _add(sums, {key: value.sum() for key, value in rows.items()})
            for group in np.unique(batch["group"]) if "group" in batch else ():
                chosen = batch["group"] == group
                _add(groups.setdefault(str(group), {}), {key: value[chosen].sum() for key, value in rows.items()})
            nfe.append(int(out["nfe"]))
            ok = ok and bool(out["ok"])
        result = {**_means(sums), "nfe": float(np.mean(nfe)), "ok": ok}
        if groups:
            result["groups"] = {group: _means(groups[group]) for group in sorted(groups, key=int)}
        return result

    def timed(self, params, batch: dict) -> Compiled:
        """One call on `batch`, blocking, for `odeplm.evaluation.timing.measure`."""
        return Compiled(lambda: jax.block_until_ready(self.executable(params, batch)), self.compile_s)


def _add(totals: dict, values: dict):
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + float(value)


def _means(sums: dict) -> dict:
    """Accuracy (and mean loss and perplexity, where summed) per unit of weight."""
    weight = max(sums["weight"], 1.0)
    means = {"accuracy": sums["correct"] / weight, "weight": sums["weight"]}
    if "loss" in sums:
        means["loss"] = sums["loss"] / weight
        means["perplexity"] = math.exp(min(means["loss"], 50.0))
    return means


def validation_batches(batches: Batches, num_batches: int) -> list[dict]:
    """The first `num_batches` batches, read once and scored at every point."""
    return [batches.batch(step) for step in range(num_batches)]


def unigram_loss(batches: Iterable[dict]) -> float:
    """Cross-entropy of the scored targets under their own frequencies: the best a
    model that ignores context can reach (the plateau a stalled masked LM sits on)."""
    targets = np.concatenate([batch["targets"][batch["weights"] > 0] for batch in batches])
    frequencies = np.bincount(targets) / len(targets)
    frequencies = frequencies[frequencies > 0]
    return float(-np.sum(frequencies * np.log(frequencies)))

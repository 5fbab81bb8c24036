"""Training metrics: TensorBoard events and metrics.jsonl, and the machine's matmul
peak measured in the same run for model-FLOPs utilisation."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from tensorboardX import SummaryWriter

from odeplm.runs.paths import run_path


class MetricWriter:
    """Writes on process 0 only; other processes hold a no-op writer."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            path = run_path(workdir)
            path.mkdir(parents=True, exist_ok=True)
            self.events = SummaryWriter(os.fspath(path / "tensorboard"))
            self.jsonl = (path / "metrics.jsonl").open("a")

    def write(self, step: int, values: dict):
        if not self.enabled:
            return
        for name, value in values.items():
            self.events.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()

    def close(self):
        if self.enabled:
            self.events.close()
            self.jsonl.close()


def measure_matmul_peak(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul on the default device: the achievable peak."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda a: a @ a).lower(a).compile()
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best

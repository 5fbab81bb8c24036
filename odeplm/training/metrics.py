"""Training metrics: TensorBoard events and metrics.jsonl (one row per step, a
resumed run's replayed steps included once), the logging window with its
throughput and model-FLOPs utilisation, and the machine's matmul peak measured
in the same run."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from tensorboardX import SummaryWriter

from odeplm.core.config import ModelConfig
from odeplm.core.errors import TrainingError
from odeplm.core.flops import training_flops_per_token
from odeplm.runs.paths import run_path


class MetricWriter:
    """Writes on process 0 only; other processes hold a no-op writer. A run resumed
    at step s replays the steps after s, so their rows of `metrics.jsonl` (written by
    the run that died) are dropped first: every step has one row. A last row cut off
    mid-write (a crash, a full disk) is one of those; a damaged row before it is named."""

    def __init__(self, workdir: str, resumed_at: int = 0):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            path = run_path(workdir)
            path.mkdir(parents=True, exist_ok=True)
            rows = path / "metrics.jsonl"
            if rows.exists():
                kept = [line for line in _rows(rows) if _step(line) <= resumed_at]
                temporary = path / "metrics.jsonl.tmp"
                temporary.write_text("".join(line + "\n" for line in kept))
                temporary.replace(rows)
            self.events = SummaryWriter(os.fspath(path / "tensorboard"))
            self.jsonl = rows.open("a")

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


class MetricWindow:
    """The steps since the last log. Their metrics stay on the device until the window
    closes; then each becomes a row of host values with the window's throughput and
    model-FLOPs utilisation: its tokens and the FLOPs its steps ran, each at its own
    NFE (random step counts included), over its wall time."""

    def __init__(self, model_config: ModelConfig, batch_size: int, peak_flops: float):
        self.model_config, self.peak = model_config, peak_flops
        self.tokens_per_step = batch_size * model_config.max_length
        self.pending: list[tuple[int, int | None, dict]] = []
        self.start = time.perf_counter()

    def add(self, step: int, drawn: int | None, metrics: dict):
        self.pending.append((step, drawn, metrics))

    def annotate(self, values: dict):
        """Adds values (validation results) to the newest step's row."""
        self.pending[-1][2].update(values)

    def close(self) -> list[tuple[int, dict]]:
        """(steps done, values) per step of the window, which starts afresh."""
        elapsed = time.perf_counter() - self.start
        rows = [(step + 1, drawn, {k: float(v) for k, v in metrics.items()}) for step, drawn, metrics in self.pending]
        length = self.model_config.max_length
        flops = sum(training_flops_per_token(self.model_config, int(values["nfe"]), length) for _, _, values in rows)
        window = {"tokens_per_second": self.tokens_per_step * len(rows) / elapsed,
                  "mfu": flops * self.tokens_per_step / elapsed / self.peak}
        self.pending, self.start = [], time.perf_counter()
        return [(done, {**values, **window, "steps_drawn": drawn or self.model_config.layers})
                for done, drawn, values in rows]


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


def _step(line: str) -> int:
    return json.loads(line)["step"]


def _rows(path) -> list[str]:
    """The rows of a metrics.jsonl, less a last row cut off mid-write; any other damaged row is a TrainingError."""
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            _step(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                return lines[:-1]
            raise TrainingError(f"{path}: row {number} is not a metrics row ({line[:40]!r}); "
                                f"move the file aside to start its rows afresh") from None
    return lines

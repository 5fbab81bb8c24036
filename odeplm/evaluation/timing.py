"""Wall-clock measurement of compiled functions, for the benchmarks under eval/.

Compilation is timed apart from execution (ahead-of-time lower + compile).
Functions whose latencies are compared run interleaved, one call each per
round in alternating order, so that drift in the machine's state (other load,
clock changes, caches) hits all of them alike. Latency is the median over rounds; a ratio of two functions
is the median of their per-round ratios, which cancels most of the drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax


class Compiled(NamedTuple):
    run: Callable[[], Any]  # executes once and blocks until the result is ready
    compile_s: float


class Timing(NamedTuple):
    compile_s: float
    latency_s: float  # median over rounds
    spread: float  # (max - min) / median over rounds: how noisy the figure is
    samples: tuple[float, ...]


def compile_timed(fn: Callable, *args, static_argnums: tuple[int, ...] = ()) -> Compiled:
    start = time.perf_counter()
    compiled = jax.jit(fn, static_argnums=static_argnums).lower(*args).compile()
    compile_s = time.perf_counter() - start
    dynamic = [a for i, a in enumerate(args) if i not in static_argnums]
    return Compiled(lambda: jax.block_until_ready(compiled(*dynamic)), compile_s)


def measure(functions: Mapping[str, Compiled], rounds: int = 10) -> dict[str, Timing]:
    """Runs every function once per round, after one warm-up call each; odd rounds
    run in reverse order, so no function always follows the same neighbour."""
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function.run()
    for round_index in range(rounds):
        order = list(functions.items())
        for name, function in order[::-1] if round_index % 2 else order:
            start = time.perf_counter()
            function.run()
            samples[name].append(time.perf_counter() - start)
    timings = {}
    for name, values in samples.items():
        median = statistics.median(values)
        timings[name] = Timing(functions[name].compile_s, median, (max(values) - min(values)) / median, tuple(values))
    return timings


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of numerator / denominator, both timed in the same `measure`."""
    return statistics.median(a / b for a, b in zip(numerator.samples, denominator.samples))

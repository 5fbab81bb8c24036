"""The training loop's periodic actions, as flax's `periodic_actions` and
Levanter's hooks have them: the loop runs steps, and after each one every hook
whose cadence has come runs. At the end of the run, and when it stops early,
the hooks that must see the last step run once more.

Stop signals have a cadence of their own: SIGTERM or Ctrl-C is noted when it
arrives and acted on at the next boundary, where every process of a
multi-process run agrees on it (one all-gather per boundary, not per step).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterable

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Hook:
    name: str
    every: int  # runs after every `every`-th step; 0: not on a cadence
    action: Callable[[int], None]  # called with the number of steps done
    at_end: bool = False  # also after the run's last step, and when it stops early

    def due(self, done: int, end: bool) -> bool:
        return (self.every > 0 and done % self.every == 0) or (end and self.at_end)


def run_hooks(hooks: Iterable[Hook], done: int, *, end: bool) -> None:
    """Runs, in order, every hook due after `done` steps."""
    for hook in hooks:
        if hook.due(done, end):
            hook.action(done)


class StopSignals:
    """SIGTERM and Ctrl-C, noted while the context is open and agreed on at boundaries.

    A single process stops after the step in flight; several stop together at the
    next step that is a multiple of any of `boundaries`. A second Ctrl-C aborts at once.
    """

    def __init__(self, boundaries: Iterable[int]):
        self.boundaries = tuple(b for b in boundaries if b > 0)
        self.requested = False

    def __enter__(self) -> StopSignals:
        self.previous = {signum: signal.signal(signum, self._note) for signum in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _note(self, signum, frame):
        self.requested = True
        if signum == signal.SIGINT:  # a second Ctrl-C aborts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def agreed(self, done: int) -> bool:
        """Whether every process stops after `done` steps."""
        if jax.process_count() == 1:
            return self.requested
        if not any(done % boundary == 0 for boundary in self.boundaries):
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


class ProfileWindow:
    """Traces steps [start, start + count) with `jax.profiler` into `directory` (the
    run's TensorBoard directory, where TensorBoard's profile plugin finds it), as
    MaxText's profiler option does: what a pod user opens to see where a step goes."""

    def __init__(self, start: int, count: int, directory: str):
        self.start, self.end, self.directory = start, start + count, directory
        self.tracing = False

    def before(self, step: int) -> None:
        if step == self.start and self.end > self.start:
            jax.profiler.start_trace(self.directory)
            self.tracing = True

    def after(self, done: int, outputs) -> None:
        if self.tracing and done == self.end:
            self.stop(outputs)

    def stop(self, outputs) -> None:
        """Ends the trace once `outputs` are computed, so the last step is in it."""
        if self.tracing:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.tracing = False

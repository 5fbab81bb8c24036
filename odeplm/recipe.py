"""The training discretisation: which solver and how many steps each batch uses.

Fixed N reproduces ordinary training (N = L, tau = 1) or trains with smaller
steps; a list of step counts, optionally weighted, draws N per batch from
(seed, step) alone, so every host draws the same N and a resumed run draws what
the uninterrupted run drew. A drawn N is the step count of every segment over
its span (tau = span / N).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from odeplm.config import ConfigError, DepthPlan
from odeplm.solvers import SOLVERS, Solve, SolvePlan, fixed_nfe


@dataclasses.dataclass(frozen=True)
class Discretisation:
    solver: str = "euler"
    steps: tuple[int, ...] = ()  # empty: each segment's training steps from the depth plan
    weights: tuple[float, ...] = ()  # empty: uniform over `steps`

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ConfigError("train.solver", f"unknown solver {self.solver!r}; known: {sorted(SOLVERS)}")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.steps):
            raise ConfigError("train.step_counts", f"step counts must be positive integers, got {self.steps}")
        if self.weights and (len(self.weights) != len(self.steps) or min(self.weights) < 0 or sum(self.weights) <= 0):
            raise ConfigError("train.step_weights", f"need one non-negative weight per step count {self.steps}, "
                                                    f"got {self.weights}")

    @classmethod
    def parse(cls, solver: str, steps: str, weights: str) -> "Discretisation":
        """From config strings: steps `"12"` or `"2,3,4,6,12"`, weights `"1,1,1,1,4"`."""
        try:
            step_list = tuple(int(s) for s in steps.split(",") if s.strip())
        except ValueError:
            raise ConfigError("train.step_counts", f"expected comma-separated integers, got {steps!r}") from None
        try:
            weight_list = tuple(float(w) for w in weights.split(",") if w.strip())
        except ValueError:
            raise ConfigError("train.step_weights", f"expected comma-separated numbers, got {weights!r}") from None
        return cls(solver, step_list, weight_list)

    def draw(self, seed: int, step: int) -> int | None:
        """The step count for training step `step` (None: the depth plan's own)."""
        if not self.steps:
            return None
        if len(self.steps) == 1:
            return self.steps[0]
        p = np.asarray(self.weights or [1.0] * len(self.steps), np.float64)
        rng = np.random.default_rng([seed, step, 0x5EED])
        return int(self.steps[rng.choice(len(self.steps), p=p / p.sum())])

    def solves(self, depth: DepthPlan, steps: int | None) -> SolvePlan:
        return tuple(Solve(self.solver, steps or segment.steps) for segment in depth)

    def nfe(self, depth: DepthPlan, steps: int | None) -> int:
        """Block evaluations of one forward pass at a drawn step count."""
        return fixed_nfe(depth, self.solves(depth, steps))

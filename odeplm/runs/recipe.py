"""The training discretisation: which solver and how many steps each batch uses,
and the sandwich rule that trains coarse step counts beside full depth.

Fixed N reproduces ordinary training (N = L, tau = 1) or trains with smaller
steps; a list of step counts, optionally weighted, draws N per batch from
(seed, step) alone, so every host draws the same N and a resumed run draws what
the uninterrupted run drew. A drawn N is the step count of every segment over
its span (tau = span / N; mode "span"), or N steps of the segment's own step
size (mode "depth": a shallower or deeper model, free with shared weights, as
Huginn draws its recurrence). A curriculum climbs through the step counts,
smallest first, over its first steps, then draws.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from odeplm.core.config import ConfigError, DepthPlan, is_count
from odeplm.core.solvers import SOLVERS, Solve, SolvePlan, fixed_nfe, unknown_solver


def _numbers(field: str, text: str, kind: type) -> tuple:
    try:
        return tuple(kind(item) for item in text.split(",") if item.strip())
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(field, f"expected comma-separated {what}, got {text!r}") from None


MODES = ("span", "depth")


def _finite(weights: tuple[float, ...]) -> bool:
    """Every weight finite and non-negative (nan and inf are not weights)."""
    return all(0 <= w < math.inf for w in weights)


@dataclasses.dataclass(frozen=True)
class Discretisation:
    solver: str = "euler"
    steps: tuple[int, ...] = ()  # empty: each segment's training steps from the depth plan
    weights: tuple[float, ...] = ()  # empty: uniform over `steps`
    mode: str = "span"  # a drawn N: N steps over the span ("span") or N steps of the trained step size ("depth")
    curriculum: int = 0  # training steps over which N climbs through the step counts; 0: none

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ConfigError("train.solver", unknown_solver(self.solver))
        if not all(map(is_count, self.steps)):
            raise ConfigError("train.step_counts", f"step counts must be positive integers, got {self.steps}")
        if self.weights and (len(self.weights) != len(self.steps) or not _finite(self.weights)
                             or sum(self.weights) <= 0):
            raise ConfigError("train.step_weights", f"need one finite non-negative weight per step count "
                                                    f"{self.steps}, got {self.weights}")
        if self.mode not in MODES:
            raise ConfigError("train.step_mode", f"must be one of {MODES}, got {self.mode!r}")
        if not is_count(self.curriculum, 0):
            raise ConfigError("train.curriculum_steps", f"must be an integer >= 0, got {self.curriculum!r}")
        if self.curriculum and len(set(self.steps)) < 2:
            raise ConfigError("train.curriculum_steps", f"a curriculum grows N through train.step_counts; give at "
                                                        f"least two, got {self.steps}")

    @classmethod
    def parse(cls, solver: str, steps: str, weights: str, mode: str = "span",
              curriculum: int = 0) -> "Discretisation":
        """From config strings: steps `"12"` or `"2,3,4,6,12"`, weights `"1,1,1,1,4"`."""
        return cls(solver, _numbers("train.step_counts", steps, int), _numbers("train.step_weights", weights, float),
                   mode, curriculum)

    def draw(self, seed: int, step: int) -> int | None:
        """The step count for training step `step` (None: the depth plan's own): during the
        curriculum each count in increasing order for an equal share of its steps, then drawn."""
        if not self.steps:
            return None
        if step < self.curriculum:
            ladder = sorted(set(self.steps))
            return ladder[len(ladder) * step // self.curriculum]
        if len(self.steps) == 1:
            return self.steps[0]
        p = np.asarray(self.weights or [1.0] * len(self.steps), np.float64)
        rng = np.random.default_rng([seed, step, 0x5EED])
        return int(self.steps[rng.choice(len(self.steps), p=p / p.sum())])

    def counts_from(self, step: int) -> tuple[int | None, ...]:
        """The step counts `draw` can return at `step` or later (None: the depth plan's own)."""
        if not self.steps:
            return (None,)
        if step < self.curriculum or not self.weights:
            return tuple(sorted(set(self.steps)))
        return tuple(sorted({n for n, w in zip(self.steps, self.weights) if w > 0}))

    def solves(self, depth: DepthPlan, steps: int | None) -> SolvePlan:
        """The solve plan of a drawn step count: over each segment's span, or (depth mode)
        at each segment's own step size, over N of them."""
        if steps is not None and self.mode == "depth":
            return tuple(Solve(self.solver, steps, span=steps * segment.tau) for segment in depth)
        return tuple(Solve(self.solver, steps or segment.steps) for segment in depth)

    def nfe(self, depth: DepthPlan, steps: int | None) -> int:
        """Block evaluations of one forward pass at a drawn step count."""
        return fixed_nfe(depth, self.solves(depth, steps))


@dataclasses.dataclass(frozen=True)
class Distillation:
    """The sandwich rule with in-place distillation over step counts (slimmable
    networks, BigNAS): every batch trains the training discretisation on the
    labels and each of `steps` (per segment, smallest first) on a target that mixes
    the labels (`label_weight`) with the full-depth model's detached predictions.
    `weights` scale each coarse term against the full-depth one; `hidden_weight`
    adds the mean squared distance to the full-depth final hidden states, and
    `state_weight` matches states along the way: each coarse step's state against
    the full-depth state at the time it lands, as a squared distance relative to
    that state's squared norm (the residual stream grows with depth), so coarse
    steps learn to land where the fine steps land. The coarse terms run `solver` (empty: the
    training solver) in `mode` (empty: the training discretisation's), so a model
    can be taught to be accurate under a higher-order method at few steps, or a
    depth curriculum can train coarse steps over the whole span. They join after
    `start` steps (0: from the first), so that full depth can form its circuit
    before coarse steps must serve too; one start per term lets a term that
    learns as if from scratch (one step) train from the first step while the
    others join late. `draw` adds one more term per batch, a solve (solver and
    step count, weighted by `draw_weights`) drawn from (seed, step) as the
    training step count is: every step count and order of a range trains for
    the cost of one coarse solve a batch, as random loop counts do (Huginn).
    """

    steps: tuple[int, ...] = ()  # empty: off
    weights: tuple[float, ...] = ()  # empty: 1 each
    label_weight: float = 0.5
    hidden_weight: float = 0.0
    solver: str = ""
    start: tuple[int, ...] = (0,)  # one for every term, or one per term
    mode: str = ""
    state_weight: float = 0.0
    draw: tuple[tuple[str, int], ...] = ()  # (solver, steps) of the drawn term; empty: none
    draw_weights: tuple[float, ...] = ()  # empty: uniform over `draw`
    solvers: tuple[str, ...] = ()  # per term, set by `active` for a drawn term; empty: `solver` for all

    def __post_init__(self):
        if not (self.start and all(is_count(s, 0) for s in self.start)):
            raise ConfigError("train.distill_start", f"must be integers >= 0, got {self.start!r}")
        if len(self.start) > 1 and len(self.start) != len(self.steps):
            raise ConfigError("train.distill_start", f"need one start for every term or one per step count "
                                                     f"{self.steps}, got {self.start}")
        if not all(map(is_count, self.steps)):
            raise ConfigError("train.distill_steps", f"step counts must be positive integers, got {self.steps}")
        if self.weights and (len(self.weights) != len(self.steps) or not _finite(self.weights)):
            raise ConfigError("train.distill_weights", f"need one finite non-negative weight per step count "
                                                       f"{self.steps}, got {self.weights}")
        if not 0.0 <= self.label_weight <= 1.0:
            raise ConfigError("train.distill_label_weight", f"must be in [0, 1], got {self.label_weight!r}")
        for field, value in (("hidden_weight", self.hidden_weight), ("state_weight", self.state_weight)):
            if not 0.0 <= value < math.inf:
                raise ConfigError(f"train.distill_{field}", f"must be finite and >= 0, got {value!r}")
        if self.mode and self.mode not in MODES:
            raise ConfigError("train.distill_mode", f"must be empty (the training step mode) or one of {MODES}, "
                                                    f"got {self.mode!r}")
        if self.solver and self.solver not in SOLVERS:
            raise ConfigError("train.distill_solver", unknown_solver(self.solver))
        if self.draw_weights and (len(self.draw_weights) != len(self.draw) or not _finite(self.draw_weights)
                                  or sum(self.draw_weights) <= 0):
            raise ConfigError("train.distill_draw_weights", f"need one finite non-negative weight per drawn solve "
                                                            f"({len(self.draw)}), got {self.draw_weights}")
        if self.draw and self.state_weight:
            raise ConfigError("train.distill_draw", "a drawn coarse solve cannot match states "
                                                    "(train.distill_state_weight > 0); give fixed distill_steps")

    @classmethod
    def parse(cls, steps: str, weights: str, label_weight: float, hidden_weight: float,
              solver: str = "", start: str = "0", mode: str = "", state_weight: float = 0.0,
              draw: str = "", draw_weights: str = "") -> "Distillation":
        """From config strings: steps `"2,4"`, weights `"1,1"`, start `"1200"` or one per term, `"0,1200"`,
        draw `"euler:1,euler:3,midpoint:1"` with draw weights `"2,1,1"`."""
        return cls(_numbers("train.distill_steps", steps, int), _numbers("train.distill_weights", weights, float),
                   float(label_weight), float(hidden_weight), solver, _numbers("train.distill_start", start, int),
                   mode, float(state_weight), _drawn_solves(draw),
                   _numbers("train.distill_draw_weights", draw_weights, float))

    def starts(self) -> tuple[int, ...]:
        """The step at which each coarse term joins."""
        return self.start * len(self.steps) if len(self.start) == 1 else self.start

    def active(self, step: int, seed: int = 0) -> "Distillation":
        """The coarse terms that train at `step` (0-based): those whose start has passed (the drawn term's
        start is the last of them), and the solve drawn for this step as one more fixed term."""
        starts = self.starts()
        joined = [i for i, start in enumerate(starts) if step >= start]
        steps, solvers = [self.steps[i] for i in joined], [self.solver] * len(joined)
        weights = [self.weights[i] if self.weights else 1.0 for i in joined]
        if self.draw and step >= max(self.start):
            p = np.asarray(self.draw_weights or [1.0] * len(self.draw), np.float64)
            solver, n = self.draw[np.random.default_rng([seed, step, 0xD5A]).choice(len(self.draw), p=p / p.sum())]
            steps, solvers, weights = steps + [n], solvers + [solver], weights + [1.0]
        weighted = bool(self.weights or self.draw)
        return dataclasses.replace(self, steps=tuple(steps), weights=tuple(weights) if weighted else (),
                                   start=tuple(starts[i] for i in joined) or (0,), draw=(), draw_weights=(),
                                   solvers=tuple(solvers) if self.draw else ())

    def terms(self) -> tuple[tuple[int, float], ...]:
        """(step count, weight) of each coarse term."""
        return tuple(zip(self.steps, self.weights or (1.0,) * len(self.steps)))

    def term_labels(self) -> tuple[str, ...]:
        """Each coarse term's name in the metrics: `N_steps`, or `N_SOLVER_steps` where its solver is its own."""
        solvers = self.solvers or (self.solver,) * len(self.steps)
        return tuple(f"{n}_{s}_steps" if s and s != self.solver else f"{n}_steps" for n, s in zip(self.steps, solvers))

    def coarse_solves(self, depth: DepthPlan, discretisation: Discretisation) -> tuple[SolvePlan, ...]:
        """One solve plan per coarse term: its solver (`solver`, or the training solver) at its steps in every
        segment, over the segment's span, or in depth mode at the segment's own step size (its first N layers)."""
        solvers = self.solvers or (self.solver,) * len(self.steps)
        return tuple(dataclasses.replace(discretisation, solver=solver or discretisation.solver,
                                         mode=self.mode or discretisation.mode).solves(depth, n)
                     for n, solver in zip(self.steps, solvers))


def _drawn_solves(text: str) -> tuple[tuple[str, int], ...]:
    """`"euler:1,midpoint:2"` -> (("euler", 1), ("midpoint", 2)), each checked."""
    drawn = []
    for part in filter(None, (item.strip() for item in str(text).split(","))):
        solver, _, steps = part.partition(":")
        if solver not in SOLVERS or not steps.isdigit() or not is_count(int(steps)):
            raise ConfigError("train.distill_draw", f"each drawn solve is SOLVER:STEPS, a known solver at "
                                                    f"STEPS >= 1 fixed steps, got {part!r}")
        drawn.append((solver, int(steps)))
    return tuple(drawn)


def landings(depth: DepthPlan, coarse: SolvePlan, fine: SolvePlan) -> tuple[tuple[int, ...], ...]:
    """Per segment, the index of the fine solve's step at which each step of the coarse solve lands: where
    state matching compares them. A coarse step that lands between fine steps, or past the fine solve's end,
    is a ConfigError naming it."""
    found = []
    for number, (segment, c, f) in enumerate(zip(depth, coarse, fine)):
        c_span, f_span = c.span or segment.span, f.span or segment.span
        indices = []
        for j in range(1, c.steps + 1):
            at = j * c_span / c.steps
            k = at * f.steps / f_span
            if abs(k - round(k)) > 1e-6 or not 1 <= round(k) <= f.steps:
                raise ConfigError("train.distill_state_weight",
                                  f"step {j} of the coarse solve {c} in segment {number} lands at t = {at:g}, "
                                  f"where the training solve {f} has no step")
            indices.append(round(k) - 1)
        found.append(tuple(indices))
    return tuple(found)

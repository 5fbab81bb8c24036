"""ODE solvers for inference and training, and the `Solve` spec that picks one.

A `Solve` is hashable: each (solver, steps) pair keys one compiled function.
Cost is counted in function evaluations of the shared block (NFE). Every
solver is a diffrax solver; `ln_euler` (`LayerNormEuler`) is the other
discretisation of a Post-LN block: each step is the layer with its sub-layer
updates scaled by the step size inside the LayerNorms, h <- LN(h + tau F(h)),
which at tau = 1 is again the layer. It steps the block itself with the
vector field's arguments (block, mask, key, span, stride; see `odeplm.core.ode`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from odeplm.core.config import DepthPlan, is_count
from odeplm.core.errors import OdeplmError


class SolverError(OdeplmError):
    """An unknown solver or an invalid solve specification."""


class RK4(diffrax.AbstractERK):
    """The classic fourth-order Runge–Kutta method (diffrax ships none).

    It has no embedded error estimate, so it runs with fixed steps only.
    """

    tableau = diffrax.ButcherTableau(
        c=np.array([0.5, 0.5, 1.0]),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.zeros(4),
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    )
    interpolation_cls = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 4


def time_key(key, t):
    """Dropout keys inside a solve are folded from the base key and t (no RNG state is mutated in the loop)."""
    if key is None:
        return None
    return jax.random.fold_in(key, jax.lax.bitcast_convert_type(jnp.asarray(t, jnp.float32), jnp.uint32))


class LayerNormEuler(diffrax.Euler):
    """Steps h <- Phi_tau(h): the Post-LN block with each sub-layer's update scaled
    by the step size tau inside its LayerNorm. Not a Runge-Kutta method of f, so
    it runs with fixed steps only."""

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del terms, solver_state, made_jump
        block, mask, key, span, stride = args
        y1 = block(y0, mask, time_key(key, t0), t0 / span, tau=t1 - t0, stride=stride)
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful


class ReadsItsStep(diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver):
    """An adaptive solver whose every step hands the field the stride it is taking, (t1 - t0) / tau in
    training steps, in place of the last of the field's arguments (block, mask, key, span, stride): a
    stride-aware block then reads each attempted step as a fixed-step solve of that size would. (A
    first-same-as-last stage is reused at the next step's stride, as the method reuses it at its time.)"""

    solver: diffrax.AbstractSolver
    tau: float = eqx.field(static=True)

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        return self.solver.step(terms, t0, t1, y0, (*args[:-1], (t1 - t0) / self.tau), solver_state, made_jump)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


@dataclasses.dataclass(frozen=True)
class SolverInfo:
    """What the rest of the library needs to know about a solver, read off the
    diffrax solver itself: its order, and from its Butcher tableau the stages,
    first-same-as-last, and whether it has an embedded error estimate."""

    make: Callable[[], diffrax.AbstractSolver]

    @functools.cached_property
    def order(self) -> int:
        return int(self.make().order(None))

    @functools.cached_property
    def _tableau(self) -> diffrax.ButcherTableau | None:
        return getattr(self.make(), "tableau", None)  # Euler and ln_euler: none, one stage

    @property
    def stages(self) -> int:
        return 1 if self._tableau is None else int(self._tableau.num_stages)

    @property
    def fsal(self) -> bool:
        """The first stage reuses the previous step's last evaluation."""
        return self._tableau is not None and bool(self._tableau.fsal)

    @property
    def adaptive(self) -> bool:
        """Has an embedded error estimate, for step-size control."""
        return self._tableau is not None and bool(np.any(np.asarray(self._tableau.b_error) != 0))

    def nfe(self, num_steps, *, cached: bool = False):
        """Function evaluations for `num_steps` attempted steps (rejected ones included).
        Cached decoding evaluates every stage afresh, each writing its own key/value
        slot, so first-same-as-last saves nothing there."""
        if cached:
            return self.stages * num_steps
        return (self.stages - self.fsal) * num_steps + self.fsal


SOLVERS: dict[str, SolverInfo] = {
    "euler": SolverInfo(diffrax.Euler),
    "midpoint": SolverInfo(diffrax.Midpoint),
    "heun": SolverInfo(diffrax.Heun),
    "ralston": SolverInfo(diffrax.Ralston),
    "bosh3": SolverInfo(diffrax.Bosh3),
    "rk4": SolverInfo(RK4),
    "tsit5": SolverInfo(diffrax.Tsit5),
    "dopri5": SolverInfo(diffrax.Dopri5),
    # Post-LN only: h <- LN(h + tau F(h)) per sub-layer, not a Runge-Kutta method of f (see odeplm.core.ode)
    "ln_euler": SolverInfo(LayerNormEuler),
}


def unknown_solver(name: str) -> str:
    """What is said of a solver name that is not in the registry."""
    return f"unknown solver {name!r}; known: {sorted(SOLVERS)}"


@dataclasses.dataclass(frozen=True)
class Solve:
    """How to integrate one segment: a solver with a fixed step count, or adaptively.

    `steps=None` without tolerances means the segment's training step count;
    `rtol`/`atol` select adaptive stepping with a PID controller, bounded by
    `max_steps` attempted steps. `span=None` integrates over the segment's own
    span; another span runs the block over a shorter or longer time (`euler:16@16`
    on a model trained as 8 steps of size 1: sixteen layers, a deeper model).
    """

    solver: str = "euler"
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 64
    span: float | None = None

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise SolverError(unknown_solver(self.solver))
        if self.steps is not None and not is_count(self.steps):
            raise SolverError(f"steps must be a positive integer, got {self.steps!r}")
        if (self.rtol is None) != (self.atol is None):
            raise SolverError("adaptive solves need both rtol and atol")
        if self.adaptive:
            if self.steps is not None:
                raise SolverError("give either a fixed step count or tolerances, not both")
            if not self.info.adaptive:
                adaptive = sorted(n for n, s in SOLVERS.items() if s.adaptive)
                raise SolverError(f"solver {self.solver!r} has no error estimate; adaptive solvers: {adaptive}")
            if not (0 < self.rtol < math.inf and 0 < self.atol < math.inf):
                raise SolverError(f"tolerances must be positive and finite, got rtol={self.rtol}, atol={self.atol}")
        if not is_count(self.max_steps):
            raise SolverError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        if self.span is not None:
            if isinstance(self.span, bool) or not isinstance(self.span, (int, float)) or not 0 < self.span < math.inf:
                raise SolverError(f"span must be a positive number, got {self.span!r}")
            object.__setattr__(self, "span", float(self.span))

    @property
    def info(self) -> SolverInfo:
        return SOLVERS[self.solver]

    @property
    def adaptive(self) -> bool:
        return self.rtol is not None

    @classmethod
    def parse(cls, text: str) -> "Solve":
        """Parses `euler`, `rk4:3`, `tsit5:rtol=1e-3:atol=1e-4[:max_steps=32]`, each optionally
        followed by `@SPAN` (`euler:16@16`)."""
        body, marker, span = text.strip().partition("@")
        name, *options = body.split(":")
        kwargs: dict = {}
        if marker:
            try:
                kwargs["span"] = float(span)
            except ValueError:
                raise SolverError(f"cannot parse the span {span!r} of solve {text!r}") from None
        for option in options:
            key, value = option.split("=", 1) if "=" in option else ("steps", option)
            if key not in ("steps", "rtol", "atol", "max_steps"):
                raise SolverError(f"unknown solve option {key!r} in {text!r}")
            if key in kwargs:
                raise SolverError(f"solve {text!r} gives {key} twice")
            try:
                kwargs[key] = float(value) if key in ("rtol", "atol") else int(value)
            except ValueError:
                raise SolverError(f"cannot parse solve {text!r}; expected NAME[:STEPS] or NAME:rtol=R:atol=A") from None
        return cls(name, **kwargs)

    def __str__(self) -> str:
        if self.adaptive:
            text = f"{self.solver}:rtol={self.rtol:g}:atol={self.atol:g}"
        else:
            text = self.solver if self.steps is None else f"{self.solver}:{self.steps}"
        return text if self.span is None else f"{text}@{self.span:g}"


SolvePlan = tuple[Solve, ...]


def plan_solves(depth: DepthPlan, solve: Solve | str | Sequence[Solve | str] | None = None) -> SolvePlan:
    """One resolved `Solve` per segment.

    None runs the training discretisation (Euler at each segment's step count);
    a single solve applies to every segment; a sequence gives one per segment.
    A fixed solve without a step count takes the segment's training steps.
    """
    if solve is None:
        solve = Solve()
    if isinstance(solve, (Solve, str)):
        solves = [solve] * len(depth)
    elif not isinstance(solve, Sequence):
        raise SolverError(f"a solve is a Solve, a string such as 'rk4:2', or one per segment; got {solve!r}")
    else:
        solves = list(solve)
        if len(solves) != len(depth):
            raise SolverError(f"{len(solves)} solves given for a depth plan of {len(depth)} segments")
    resolved = []
    for segment, item in zip(depth, solves):
        item = Solve.parse(item) if isinstance(item, str) else item
        if not isinstance(item, Solve):
            raise SolverError(f"expected a Solve or a string, got {item!r}")
        if item.steps is None and not item.adaptive:
            item = dataclasses.replace(item, steps=segment.steps)
        resolved.append(item)
    return tuple(resolved)


def plan_label(plan: SolvePlan) -> str:
    """A plan as text: one solve when every segment runs the same, else one per segment."""
    return str(plan[0]) if len(set(plan)) == 1 else ",".join(map(str, plan))


def fixed_nfe(depth: DepthPlan, solve: Solve | str | Sequence[Solve | str] | None = None, *,
              cached: bool = False) -> int:
    """Function evaluations of a fixed-step solve plan over the whole depth plan: per
    forward pass, or (`cached`) per token of KV-cached decoding."""
    plan = plan_solves(depth, solve)
    if any(s.adaptive for s in plan):
        raise SolverError(f"an adaptive solve has no fixed NFE: {','.join(map(str, plan))}")
    return sum(s.info.nfe(s.steps, cached=cached) for s in plan)


def parse_plan(text: str) -> list[Solve]:
    """Parses comma-separated solves, one per segment (`rk4:2,euler:1`)."""
    return [Solve.parse(part) for part in text.split(",")]

"""The accuracy-versus-speed grid of one model: validation quality, NFE and
latency at every (solver, step count) and at two baselines.

- full depth: the training discretisation (Euler at each segment's steps);
- truncated k: only the first k training steps (layers, at tau = 1), then the
  head: early exit, what a user gets for free without solving anything;
- solves: each solver at N steps per segment (the same N in every segment),
  plus any explicit plans (`"rk4:1,euler:2"`, adaptive tolerances).

Quality is summed over the same validation batches for every point, so two runs
give identical numbers. Latency is measured interleaved (`odeplm.evaluation.timing`): every
point runs once per round on one batch, and speed-ups are medians of per-round
ratios against the first point. The end-of-run table of pre-training is the
same grid over the config's `eval.solves` (`solve_points`). Writing the rows
out is `odeplm.evaluation.report`'s; reading checkpoints and data is eval/'s.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
from tqdm import tqdm

from odeplm.core.config import is_count
from odeplm.core.model import LanguageModel, truncated, truncated_depth
from odeplm.core.solvers import (
    SOLVERS,
    SolvePlan,
    SolverError,
    fixed_nfe,
    parse_plan,
    plan_label,
    plan_solves,
    unknown_solver,
)
from odeplm.evaluation.point import PointProgram, token_metrics
from odeplm.evaluation.timing import measure, paired_ratio

DEFAULT_SOLVERS = ("euler", "midpoint", "heun", "bosh3", "rk4")
_STEP_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


@dataclasses.dataclass(frozen=True)
class GridPoint:
    kind: str  # "full depth", "truncated" or "solve"
    label: str
    solves: SolvePlan
    layers: int | None = None  # truncation depth


def grid_points(model: LanguageModel, solvers=DEFAULT_SOLVERS, steps=None, extra=(),
                max_nfe: int | None = None) -> list[GridPoint]:
    """Full depth, truncation at every depth the solve grid's Euler points reach, and solver x steps.

    `steps` are step counts per segment; by default every count up to the largest
    segment's training steps from (1, 2, 3, 4, 6, 8, 12, 16, ...). Solver x steps
    points costing more than `max_nfe` evaluations are left out. `extra` holds
    solve plans as strings, one solve or one per segment.
    """
    depth = model.config.depth
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        raise SolverError(", ".join(map(unknown_solver, unknown)))
    if steps is None:
        steps = [n for n in _STEP_CANDIDATES if n <= max(s.steps for s in depth)]
    if not steps or not all(map(is_count, steps)):
        raise SolverError(f"step counts must be positive integers, got {steps}")
    if max_nfe is not None and not is_count(max_nfe):
        raise SolverError(f"max_nfe must be a positive integer, got {max_nfe!r}")
    full = plan_solves(depth, None)
    points = [GridPoint("full depth", f"full depth ({plan_label(full)})", full)]
    layers = model.config.layers
    for k in sorted({n * len(depth) for n in steps} | set(steps)):
        if k < layers:
            points.append(GridPoint("truncated", f"first {k} layers", plan_solves(truncated_depth(depth, k)), k))
    for solver in solvers:
        for n in sorted(set(steps)):
            solves = plan_solves(depth, f"{solver}:{n}")
            if solves != full and (max_nfe is None or fixed_nfe(depth, solves) <= max_nfe):
                points.append(GridPoint("solve", plan_label(solves), solves))
    for text in extra:
        solves = plan_solves(depth, parse_plan(text))
        points.append(GridPoint("solve", plan_label(solves), solves))
    labels = [p.label for p in points]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise SolverError(f"grid points given twice: {duplicates}")
    return points


def solve_points(model: LanguageModel, solves: str) -> list[GridPoint]:
    """One point per comma-separated solve, each run in every segment, in the order given."""
    plans = dict.fromkeys(plan_solves(model.config.depth, solve) for solve in parse_plan(solves))
    return [GridPoint("solve", plan_label(plan), plan) for plan in plans]


def run_grid(model: LanguageModel, points: list[GridPoint], batches: list[dict], rounds: int = 10) -> list[dict]:
    """One row per point: quality over `batches`, NFE, latency, speed-up against the first point, Pareto front.

    Each point compiles once (`odeplm.evaluation.point.PointProgram`); its latency is that
    executable on the first batch, all points timed interleaved (`odeplm.evaluation.timing`).
    """
    rows, timed = [], {}
    for point in tqdm(points, desc="grid points", unit="point", leave=False):
        graphdef, params = nnx.split(truncated(model, point.layers) if point.kind == "truncated" else model)
        program = PointProgram.compile(token_metrics, graphdef, params, point.solves, batches[0])
        quality = program.score(params, batches)
        timed[point.label] = program.timed(params, batches[0])
        rows.append({"label": point.label, "kind": point.kind, "solves": [str(s) for s in point.solves],
                     "layers": point.layers, **quality})
    timings = measure(timed, rounds=rounds)
    first = timings[points[0].label]
    for row in rows:
        timing = timings[row["label"]]
        row.update(latency_ms=timing.latency_s * 1e3, latency_spread=timing.spread,
                   speedup=paired_ratio(first, timing), compile_s=timing.compile_s)
    for row, on_front in zip(rows, pareto_front([(r["latency_ms"], r["loss"]) for r in rows])):
        row["pareto"] = on_front
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Whether each (cost, loss) point is undominated: no other point is at least
    as cheap and as good, and strictly better in one."""
    return [not any(c <= cost and q <= loss and (c < cost or q < loss) for c, q in points)
            for cost, loss in points]

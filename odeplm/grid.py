"""The accuracy-versus-speed grid of one model: validation quality, NFE and
latency at every (solver, step count) and at two baselines.

- full depth: the training discretisation (Euler at each segment's steps);
- truncated k: only the first k training steps (layers, at tau = 1), then the
  head: early exit, what a user gets for free without solving anything;
- solves: each solver at N steps per segment (the same N in every segment),
  plus any explicit plans (`"rk4:1,euler:2"`, adaptive tolerances).

Quality is summed over the same validation batches for every point, so two runs
give identical numbers. Latency is measured interleaved (`odeplm.timing`): every
point runs once per round on one batch, and speed-ups are medians of per-round
ratios against full depth.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from tqdm import tqdm
from flax import nnx

from odeplm.checkpoint import CheckpointError
from odeplm.config import Segment
from odeplm.data.pipeline import Batches, split_batches
from odeplm.evaluate import evaluate, unigram_loss
from odeplm.loading import load, results_directory
from odeplm.model import LanguageModel
from odeplm.solvers import SOLVERS, SolvePlan, SolverError, fixed_nfe, parse_plan, plan_label, plan_solves
from odeplm.timing import compile_timed, measure, paired_ratio

DEFAULT_SOLVERS = ("euler", "midpoint", "heun", "bosh3", "rk4")
_STEP_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


@dataclasses.dataclass(frozen=True)
class GridPoint:
    kind: str  # "full depth", "truncated" or "solve"
    label: str
    solves: SolvePlan
    layers: int | None = None  # truncation depth


def parse_steps(values: list[str] | None) -> list[int] | None:
    """Step counts from a command line's comma-separated list (None: the default grid)."""
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise SolverError(f"step counts must be integers, got {values}") from None


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
        raise SolverError(f"unknown solver(s) {unknown}; known: {sorted(SOLVERS)}")
    if steps is None:
        steps = [n for n in _STEP_CANDIDATES if n <= max(s.steps for s in depth)]
    if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps):
        raise SolverError(f"step counts must be positive integers, got {steps}")
    if max_nfe is not None and (isinstance(max_nfe, bool) or not isinstance(max_nfe, int) or max_nfe < 1):
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


def truncated_depth(depth: tuple[Segment, ...], layers: int) -> tuple[Segment, ...]:
    """The first `layers` training steps of a depth plan, each segment keeping its step size."""
    segments, left = [], layers
    for segment in depth:
        if left <= 0:
            break
        take = min(segment.steps, left)
        segments.append(Segment(take, take * segment.tau))
        left -= take
    return tuple(segments)


def truncated(model: LanguageModel, layers: int) -> LanguageModel:
    """The model cut after its first `layers` training steps; blocks past the cut are dropped."""
    config = dataclasses.replace(model.config, depth=truncated_depth(model.config.depth, layers))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0))))
    params = nnx.to_pure_dict(nnx.state(model))
    params["encoder"]["blocks"] = {i: params["encoder"]["blocks"][i] for i in range(len(config.depth))}
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def _logits(graphdef, params, tokens, padding_mask, solves):
    return nnx.merge(graphdef, params)(tokens, padding_mask, solve=solves).logits


def run_grid(model: LanguageModel, points: list[GridPoint], batches: Batches, num_batches: int,
             rounds: int = 10) -> list[dict]:
    """One row per point: quality over `num_batches` validation batches, NFE, latency, speed-up, Pareto front."""
    rows, timed = [], {}
    batch = batches.batch(0)
    for point in tqdm(points, desc="grid points", unit="point", leave=False):
        point_model = truncated(model, point.layers) if point.kind == "truncated" else model
        graphdef, params = nnx.split(point_model)
        quality = evaluate(graphdef, params, batches, point.solves, num_batches)
        timed[point.label] = compile_timed(_logits, graphdef, params, batch["tokens"], batch["padding_mask"],
                                           point.solves, static_argnums=(0, 4))
        row = {"label": point.label, "kind": point.kind, "solves": [str(s) for s in point.solves],
               "layers": point.layers, **{k: quality[k] for k in ("loss", "perplexity", "accuracy", "nfe", "ok")}}
        rows.append(row)
    timings = measure(timed, rounds=rounds)
    full = timings[points[0].label]
    for row in rows:
        timing = timings[row["label"]]
        row.update(latency_ms=timing.latency_s * 1e3, latency_spread=timing.spread,
                   speedup=paired_ratio(full, timing), compile_s=timing.compile_s)
    for row, on_front in zip(rows, pareto_front([(r["latency_ms"], r["loss"]) for r in rows])):
        row["pareto"] = on_front
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Whether each (cost, loss) point is undominated: no other point is at least
    as cheap and as good, and strictly better in one."""
    return [not any(c <= cost and q <= loss and (c < cost or q < loss) for c, q in points)
            for cost, loss in points]


def markdown_table(rows: list[dict], objective: str) -> str:
    base = rows[0]
    quality = "perplexity" if objective == "causal" else "accuracy"
    lines = [f"| point | NFE | loss | Δ loss | {quality} | latency (ms) | speed-up | Pareto |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for row in rows:
        value = f"{row[quality]:.2f}" if quality == "perplexity" else f"{row[quality]:.4f}"
        lines.append(f"| {row['label']} | {row['nfe']:.0f} | {row['loss']:.4f} | {row['loss'] - base['loss']:+.4f} | "
                     f"{value} | {row['latency_ms']:.1f} | {row['speedup']:.2f}x | {'★' if row['pareto'] else ''} |")
    return "\n".join(lines)


def loss_range(losses: list[float], reference: float) -> tuple[float, float]:
    """The plot's loss axis: from the best point to the full-depth loss plus twice
    the median point's distance from it (at least 1 nat), so that a few diverged
    coarse solves do not squeeze every other point into a line."""
    median = float(np.median(losses))
    high = reference + max(1.0, 2 * (median - reference))
    low = min(losses)
    return low - 0.05 * (high - low), high


def plot(rows: list[dict], path: str, title: str) -> None:
    """Loss against latency: baselines and each solver in its own marker, each point
    labelled with its NFE, the Pareto front as a line; points beyond the loss axis
    sit on its top edge as red arrows with their loss written beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    low, high = loss_range([r["loss"] for r in rows], rows[0]["loss"])
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = row["kind"] if row["kind"] != "solve" else row["solves"][0].split(":")[0]
        groups.setdefault(key, []).append(row)
    markers = iter("o^sDvP*Xh<>")
    for name, members in groups.items():
        fmt, size = {"full depth": ("k*", 12), "truncated": ("kx", 7)}.get(name) or (next(markers), 6)
        shown = [r for r in members if r["loss"] <= high]
        axes.plot([r["latency_ms"] for r in shown], [r["loss"] for r in shown], fmt, linestyle="none",
                  label=name, markersize=size)
    for row in rows:
        clipped = row["loss"] > high
        y = high if clipped else row["loss"]
        if clipped:
            axes.plot(row["latency_ms"], y, "r^", markersize=7, clip_on=False)
        axes.annotate(f"{row['nfe']:.0f}" + (f" ({row['loss']:.2f})" if clipped else ""), (row["latency_ms"], y),
                      textcoords="offset points", xytext=(4, -9 if clipped else 3), fontsize=6,
                      color="red" if clipped else "0.3")
    front = sorted((r["latency_ms"], r["loss"]) for r in rows if r["pareto"])
    axes.step([x for x, _ in front], [y for _, y in front], where="post", color="grey", alpha=0.6,
              label="Pareto front")
    axes.set_ylim(low, high)
    axes.set_xlabel("latency per batch (ms); numbers: NFE")
    axes.set_ylabel("validation loss (nats)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(report: dict, out_dir: str) -> dict[str, str]:
    """grid.json, grid.md and grid.png under `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"grid.{name}") for name in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=2, default=_plain)
    with open(paths["md"], "w") as f:
        f.write(markdown_table(report["points"], report["objective"]) + "\n")
    plot(report["points"], paths["png"], report["title"])
    return paths


def _plain(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def accelerate(checkpoint: str, *, out: str | None = None, step: int | None = None, solvers=None, steps=None,
               extra=(), max_nfe: int | None = None, batches: int = 16, batch_size: int = 16, rounds: int = 10,
               dataset: str | None = None, data_dir: str | None = None) -> dict:
    """Runs the grid on a checkpoint and writes its outputs; returns the report (what grid.json holds)."""
    out = results_directory(checkpoint, out, "accelerate")
    if batches < 1 or batch_size < 1 or rounds < 1:
        raise ValueError("batches, batch_size and rounds must be positive")
    loaded = load(checkpoint, step)
    if loaded.tokenizer is None:
        raise CheckpointError(f"{checkpoint} holds no tokenizer, so its validation text cannot be read")
    run = loaded.run
    dataset = dataset or run.dataset
    data_dir = loaded.data_dir(data_dir)
    config = loaded.model.config
    validation = split_batches(dataset, "validation", data_dir, loaded.tokenizer, length=config.max_length,
                               batch_size=batch_size, objective=config.objective, seed=run.seed, shuffle=False)
    points = grid_points(loaded.model, solvers or DEFAULT_SOLVERS, steps, extra, max_nfe)
    rows = run_grid(loaded.model, points, validation, batches, rounds)
    name = os.path.basename(os.path.normpath(checkpoint))
    report = {
        "title": f"{name} (step {loaded.step}): {config.objective} LM, depth {config.to_dict()['depth']}",
        "checkpoint": os.path.abspath(checkpoint), "step": loaded.step, "objective": config.objective,
        "model": config.to_dict(), "dataset": dataset, "batches": batches, "batch_size": batch_size,
        "rounds": rounds, "unigram_loss": unigram_loss(validation, batches), "points": rows,
    }
    report["outputs"] = write_outputs(report, out)
    report["markdown"] = markdown_table(rows, config.objective)
    return report

"""What evaluations write, in one place: markdown tables, the grid's plot, and
JSON + markdown + PNG files; and what pre-training prints at the end (the grid
over `eval.solves`, and a look at the model's output)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from odeplm.core.model import forward
from odeplm.core.solvers import fixed_nfe, parse_plan, plan_label, plan_solves
from odeplm.evaluation.grid import run_grid, solve_points
from odeplm.inference.generate import Sampling, cacheable, generate


def markdown(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table; `columns` are (title, alignment: "l", "r" or "c")."""
    rule = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join(rule[align] for _, align in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def grid_table(rows: list[dict], objective: str, group_name: str | None = None) -> str:
    """The grid's rows: NFE, loss and its change from the first row, quality, latency, speed-up, Pareto front;
    for a task's examples, accuracy overall and per group (`group_name` says what groups count)."""
    base = rows[0]
    quality = "perplexity" if objective == "causal" and group_name is None else "accuracy"
    groups = list(base.get("groups", {}))
    columns = ([("point", "l"), ("NFE", "r"), ("loss", "r"), ("Δ loss", "r"), (quality, "r")]
               + [(f"{group_name}={group}", "r") for group in groups]
               + [("latency (ms)", "r"), ("speed-up", "r"), ("Pareto", "c")])
    return markdown(columns, ([row["label"], f"{row['nfe']:.0f}", f"{row['loss']:.4f}",
                               f"{row['loss'] - base['loss']:+.4f}",
                               f"{row[quality]:.2f}" if quality == "perplexity" else f"{row[quality]:.4f}"]
                              + [f"{row['groups'][group]['accuracy']:.4f}" for group in groups]
                              + [f"{row['latency_ms']:.1f}", f"{row['speedup']:.2f}x", "★" if row["pareto"] else ""]
                              for row in rows))


def plot_ranges(rows: list[dict]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The plot's axes, chosen from what a reader looks for: the Pareto front and full
    depth (the first row). Latency (a log axis) spans their fastest to their slowest,
    loss their best to their worst, each with a margin; a far point (a diverged solve,
    a slow adaptive one) does not squeeze the rest into a corner."""
    anchors = [row for row in rows if row["pareto"]] + rows[:1]
    latencies, losses = [r["latency_ms"] for r in anchors], [r["loss"] for r in anchors]
    margin = max(0.25 * (max(losses) - min(losses)), 0.01)
    return (min(latencies) / 1.3, max(latencies) * 1.3), (min(losses) - margin, max(losses) + 2 * margin)


def plot(rows: list[dict], path: str, title: str, group_name: str | None = None) -> None:
    """Loss against latency: baselines and each solver in its own marker, each point
    labelled with its NFE, the Pareto front as a line. Points beyond the axes
    (`plot_ranges`) sit on their edges in red with their latency and loss written
    beside them. Rows scored per group get a second panel: accuracy against NFE,
    one curve per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_group = "groups" in rows[0]
    figure, panels = plt.subplots(1, 2 if by_group else 1, figsize=(13 if by_group else 7, 4.5), squeeze=False)
    axes = panels[0, 0]
    (left, right), (low, high) = plot_ranges(rows)
    on_scale = [left <= r["latency_ms"] <= right and low <= r["loss"] <= high for r in rows]
    groups: dict[str, list[dict]] = {}
    for row in (r for r, shown in zip(rows, on_scale) if shown):
        key = row["kind"] if row["kind"] != "solve" else row["solves"][0].split(":")[0]
        groups.setdefault(key, []).append(row)
    markers = iter("o^sDvP*Xh<>")
    for name, members in groups.items():
        fmt, size = {"full depth": ("k*", 12), "truncated": ("kx", 7)}.get(name) or (next(markers), 6)
        axes.plot([r["latency_ms"] for r in members], [r["loss"] for r in members], fmt, linestyle="none",
                  label=name, markersize=size)
    for row, shown in zip(rows, on_scale):
        x, y = min(max(row["latency_ms"], left), right), min(max(row["loss"], low), high)
        off_scale = not shown
        if off_scale:
            axes.plot(x, y, "r^", markersize=7, clip_on=False)
        label = f"{row['nfe']:.0f}" + (f" ({row['latency_ms']:.0f} ms, {row['loss']:.2f})" if off_scale else "")
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, -9 if off_scale else 3), fontsize=6,
                      color="red" if off_scale else "0.3", annotation_clip=False)
    front = sorted((r["latency_ms"], r["loss"]) for r in rows if r["pareto"])
    axes.step([x for x, _ in front], [y for _, y in front], where="post", color="grey", alpha=0.6,
              label="Pareto front")
    axes.set_xscale("log")
    axes.set_xlim(left, right)
    axes.set_ylim(low, high)
    axes.set_xlabel("latency per batch (ms, log scale); numbers: NFE; red: off the axes")
    axes.set_ylabel("validation loss (nats)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    if by_group:
        _plot_group_accuracy(panels[0, 1], rows, group_name or "group")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_group_accuracy(axes, rows: list[dict], group_name: str) -> None:
    """Accuracy against NFE per group: a line through the points of the first solver
    (with full depth), a dashed line through the truncations, other solvers as markers."""
    solves = [r for r in rows if r["kind"] != "truncated"]
    first = solves[0]["solves"][0].split(":")[0]
    line = sorted((r for r in solves if r["solves"][0].split(":")[0] == first), key=lambda r: r["nfe"])
    cut = sorted((r for r in rows if r["kind"] == "truncated"), key=lambda r: r["nfe"])
    others = [r for r in solves if r not in line]
    import matplotlib

    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(rows[0]["groups"])))
    for colour, group in zip(colours, rows[0]["groups"]):
        axes.plot([r["nfe"] for r in line], [r["groups"][group]["accuracy"] for r in line], "-o", color=colour,
                  markersize=4, label=f"{group_name}={group} ({first})")
        if cut:
            axes.plot([r["nfe"] for r in cut], [r["groups"][group]["accuracy"] for r in cut], "--x", color=colour,
                      markersize=5, alpha=0.6)
        axes.plot([r["nfe"] for r in others], [r["groups"][group]["accuracy"] for r in others], "^", color=colour,
                  markersize=5, alpha=0.7, linestyle="none")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("NFE (dashed: first N layers only; triangles: other solvers)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.02)
    axes.legend(fontsize=7)


def write_outputs(report: dict, out_dir: str, name: str) -> dict[str, str]:
    """NAME.json (the report), NAME.md (its markdown) and, for a grid with latencies,
    NAME.png under `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    kinds = ("json", "md", "png") if "latency_ms" in report["points"][0] else ("json", "md")
    paths = {kind: os.path.join(out_dir, f"{name}.{kind}") for kind in kinds}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=2, default=_plain)
    with open(paths["md"], "w") as f:
        f.write(report["markdown"] + "\n")
    if "png" in paths:
        plot(report["points"], paths["png"], report["title"], report.get("group_name"))
    return paths


def _plain(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def validation_table(model, batches: list[dict], solves: str, rounds: int = 10,
                     group_name: str | None = None) -> tuple[list[dict], str]:
    """The grid over each comma-separated solve in `solves` (one applied to every segment) on
    `batches`, timed interleaved; speed-ups are against the first solve."""
    config = model.config
    rows = run_grid(model, solve_points(model, solves), batches, rounds)
    title = (f"validation ({config.objective} LM, L = {config.layers}, {len(batches)} batches; speed-ups: medians "
             f"of {rounds} interleaved rounds)")
    return rows, f"{title}\n{grid_table(rows, config.objective, group_name)}"


def show_outputs(model, tokenizer, batch: dict, solves: str, prompt: str = "ROMEO.\n") -> str:
    """Continuations of `prompt` sampled at temperature 0.7 (causal text), predictions for the
    masked tokens of the first row of `batch` (masked text), or a task example's targets and
    predictions (examples with groups), at the full depth and the cheapest listed solve."""
    plans = parse_plan(solves)
    fixed = [s for s in plans if not s.adaptive]
    cheapest = min(fixed, key=lambda s: fixed_nfe(model.config.depth, s)) if fixed else plans[0]
    lines = []
    if "group" in batch:
        shown = batch["weights"][0] > 0
        lines += [f"--- a validation example (group {batch['group'][0]}): input, then targets where scored",
                  tokenizer.decode(batch["tokens"][0]), _scored(tokenizer, batch["targets"][0], shown)]
    for solve in dict.fromkeys((plans[0], cheapest)):
        plan = plan_solves(model.config.depth, solve)
        label = plan_label(plan) + ("" if solve.adaptive else f" (NFE {fixed_nfe(model.config.depth, plan)})")
        if "group" in batch:
            predicted = np.asarray(forward(model, batch["tokens"][:1], batch["padding_mask"][:1],
                                           solve=solve).logits[0].argmax(-1))
            lines += [f"--- predictions at {label}", _scored(tokenizer, predicted, shown)]
        elif model.config.objective == "causal":
            prompt_ids = tokenizer.encode(prompt)
            (ids,) = generate(model, [prompt_ids], max_new_tokens=min(48, model.config.max_length - len(prompt_ids)),
                              solve=plan, sampling=Sampling(temperature=0.7), cached=cacheable(plan))
            lines.append(f"--- sample at {label}\n{prompt}{tokenizer.decode(ids)}")
        else:
            tokens, targets, chosen = batch["tokens"][:1], batch["targets"][0], batch["weights"][0] > 0
            predicted = np.asarray(forward(model, tokens, batch["padding_mask"][:1], solve=solve).logits[0].argmax(-1))
            shown = [tokenizer.decode([t]) if not c else f"[{tokenizer.decode([p])}|{tokenizer.decode([t])}]"
                     for t, p, c in zip(targets[:48], predicted[:48], chosen[:48])]
            lines.append(f"--- masked predictions at {label} ([predicted|original]):\n" + "".join(shown))
    return "\n".join(lines)


def _scored(tokenizer, ids, scored) -> str:
    """One line of pieces, a space where a position is not scored."""
    return "".join(tokenizer.decode([int(i)]) if s else " " for i, s in zip(ids, scored))

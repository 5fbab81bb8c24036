"""One k-hop model at every speed (issue "An ODE in fact"): the solves a result file gains with
`python -m eval.study --study khop --evaluate NAME --any_speed`, and the table and figure that
`python -m eval.study --table khop_any_speed` (`--format json`, `--plot khop_any_speed`) print from them.

Every solve runs over the model's trained span on the 2048 held-out sequences: Euler at every N from 1 to 2L,
and the midpoint method (order 2), Bogacki-Shampine (order 3) and classic RK4 (order 4) at every step count
costing at most L evaluations. An adaptive solver (Bogacki-Shampine with the PID controller: 4 evaluations for one
step, 3 for each more, so a few steps fit within L) runs at three tolerances on
256 sequences of each hop count, one hop count a batch, so that its NFE per hop count says whether harder inputs
buy more steps. Each row is held against the model a user would otherwise serve: at NFE <= L the dedicated
model of that depth, above L the same model's own N = L, adaptive the dedicated full-depth model.
"""

from __future__ import annotations

import os

import numpy as np

from eval import khop_study
from odeplm.core.solvers import SOLVERS, Solve
from odeplm.evaluation.report import markdown

HIGHER_ORDER = ("midpoint", "bosh3", "rk4")
TOLERANCES = (1e-1, 3e-2, 1e-2)  # rtol = atol
ADAPTIVE = "bosh3"
ADAPTIVE_BATCHES = 8  # of 32 sequences, per hop count
CRITERION = "every hop count within 1 point and the loss within 1% or 0.01 nats, whichever is larger"


def fixed_solves(layers: int) -> list[str]:
    """Euler at 1 to 2L steps, and each higher-order solver at every step count costing at most L evaluations."""
    solves = [f"euler:{n}" for n in range(1, 2 * layers + 1)]
    for solver in HIGHER_ORDER:
        solves += [f"{solver}:{n}" for n in range(1, layers + 1) if SOLVERS[solver].nfe(n) <= layers]
    return solves


def adaptive_solves() -> list[str]:
    return [f"{ADAPTIVE}:rtol={tol:g}:atol={tol:g}" for tol in TOLERANCES]


def evaluate(name: str, workdir: str, results: str) -> dict:
    """Adds `any_speed` to the model's result file (made first by `khop_study.evaluate`); returns the file."""
    from odeplm.data.pipeline import split_batches
    from odeplm.data.tasks import KHopOptions
    from odeplm.evaluation.checkpoint_grid import load_with_tokenizer
    from odeplm.evaluation.grid import run_grid, solve_points
    from odeplm.evaluation.point import validation_batches

    record = khop_study.result(results, name)
    if record is None:
        raise FileNotFoundError(f"{khop_study.result_path(results, name)}: evaluate the model first")
    loaded = load_with_tokenizer(os.path.join(workdir, name))
    model, config, run = loaded.model, loaded.model.config, loaded.run

    def batches(dataset: str, count: int) -> list[dict]:
        split = split_batches(dataset, "validation", loaded.data_dir(), loaded.tokenizer, length=config.max_length,
                              batch_size=khop_study.BATCH_SIZE, objective=config.objective, seed=run.seed,
                              shuffle=False)
        return validation_batches(split, count)

    keep = ("label", "solves", "nfe", "loss", "accuracy", "groups")
    points = [{k: row[k] for k in keep} for row in run_grid(
        model, solve_points(model, ",".join(fixed_solves(config.layers))), batches(run.dataset, khop_study.BATCHES),
        rounds=1)]
    options = KHopOptions.parse(run.dataset)
    task = f"khop?alphabet={options.alphabet}&length={options.length}&seed={options.seed}&train=32"
    adaptive = []
    for solve in adaptive_solves():
        by_hops = {}
        for hops in range(options.hops[0], options.hops[1] + 1):
            (row,) = run_grid(model, solve_points(model, solve), batches(f"{task}&hops={hops}", ADAPTIVE_BATCHES),
                              rounds=1)
            group = row["groups"][str(hops)]
            by_hops[str(hops)] = {"nfe": row["nfe"], "loss": group["loss"], "accuracy": group["accuracy"],
                                  "weight": group["weight"]}
        adaptive.append({"solve": solve, "by_hops": by_hops})
    return khop_study.write(results, name, {**record, "any_speed": {"points": points, "adaptive": adaptive}})


def dedicated_name(depth: int) -> str:
    """The dedicated model of `depth` layers that a one-model speed is held against: the depth curriculum's
    (at 1 and 2 layers the curriculum is the plain model)."""
    return f"depth{depth}" if depth <= 2 else f"depth{depth}_curriculum"


def _order(solve: str) -> int:
    return SOLVERS[Solve.parse(solve).solver].order


def _mean(points: list[dict]) -> dict:
    """Loss, accuracy per hop count and NFE, means over seeds."""
    hops = sorted(points[0]["groups"], key=int)
    return {"nfe": float(np.mean([p["nfe"] for p in points])), "loss": float(np.mean([p["loss"] for p in points])),
            "hops": {h: float(np.mean([p["groups"][h]["accuracy"] for p in points])) for h in hops}}


def _adaptive_point(entry: dict) -> dict:
    """An adaptive solve over its per-hop batches as one point: NFE a batch, token-weighted loss and accuracy."""
    by_hops = entry["by_hops"]
    weights = {h: v["weight"] for h, v in by_hops.items()}
    total = sum(weights.values())
    return {"nfe": float(np.mean([v["nfe"] for v in by_hops.values()])),
            "loss": sum(v["loss"] * weights[h] for h, v in by_hops.items()) / total,
            "groups": {h: {"accuracy": v["accuracy"]} for h, v in by_hops.items()},
            "nfe_by_hops": {h: v["nfe"] for h, v in by_hops.items()}}


def _measured(found: dict) -> dict[str, dict]:
    """Every fixed solve over the span that a result file holds, by solve text: its grid and its any-speed
    points (a row at Euler over the first N layers is the same solve only at N = L, its full depth)."""
    rows = {}
    for row in found["points"] + found.get("any_speed", {}).get("points", []):
        if row.get("kind") != "truncated" and len(set(row["solves"])) == 1:
            rows[row["solves"][0]] = row
    return rows


def within(point: dict, reference: dict) -> tuple[bool, float, float]:
    """(within, loss excess over the allowance, worst hop-count shortfall in points): the study's criterion."""
    allowance = max(0.01 * reference["loss"], 0.01)
    excess = point["loss"] - reference["loss"] - allowance
    shortfall = max(100 * (reference["hops"][h] - point["hops"][h]) for h in reference["hops"])
    return excess <= 0 and shortfall <= 1.0, excess, shortfall


def rows(results: str, models: tuple[str, ...]) -> list[dict]:
    """The table's rows, as `--format json` prints them; models without a result file are left out."""
    out = []
    for name in models:
        found = khop_study.seeds_of(results, name)
        if not found:
            continue
        depth = khop_study.layers(name)
        references = {}
        for n in range(1, depth + 1):
            ded = khop_study.seeds_of(results, dedicated_name(n))
            if ded:
                references[n] = (dedicated_name(n), _mean([khop_study.full_depth(r) for _, r in ded]),
                                 khop_study.training_evaluations(ded))
        cost = (khop_study.training_evaluations(found) / references[depth][2]) if depth in references else None
        measured = [(seed, _measured(r)) for seed, r in found]
        having = {s: [seed for seed, m in measured if s in m] for s in fixed_solves(depth)}
        own = {s: _mean([m[s] for _, m in measured if s in m]) for s, seeds in having.items() if seeds}
        for solve, point in own.items():
            nfe = round(point["nfe"])
            if nfe <= depth:
                held = references.get(nfe)
            else:
                held = (f"{name} at euler:{depth}", own.get(f"euler:{depth}"), None)
                held = held if held[1] is not None else None
            out.append(_row(name, depth, having[solve], solve, _order(solve), point, held, cost))
        adaptive = {}  # solve -> [(seed, point)], matched by solve: seeds may list them in another order
        for seed, r in found:
            for entry in r.get("any_speed", {}).get("adaptive", []):
                adaptive.setdefault(entry["solve"], []).append((seed, _adaptive_point(entry)))
        for solve, pairs in adaptive.items():
            points = [p for _, p in pairs]
            point = {**_mean(points), "nfe_by_hops": {h: float(np.mean([p["nfe_by_hops"][h] for p in points]))
                                                      for h in points[0]["nfe_by_hops"]}}
            row = _row(name, depth, [seed for seed, _ in pairs], solve, _order(solve), point, references.get(depth),
                       cost)
            out.append({**row, "nfe_by_hops": point["nfe_by_hops"]})
    return out


def _row(name, depth, seeds, solve, order, point, held, cost) -> dict:
    row = {"model": name, "depth": depth, "seeds": seeds, "solve": solve, "order": order, "nfe": point["nfe"],
           "loss": point["loss"], "hops": point["hops"], "dedicated": held[0] if held else None,
           "dedicated_loss": held[1]["loss"] if held else None, "within": None, "loss_excess": None,
           "hop_shortfall": None, "training_cost": cost}
    if held:
        row["within"], row["loss_excess"], row["hop_shortfall"] = within(point, held[1])
    return row


def table(rows: list[dict]) -> str:
    columns = ([("model", "l"), ("seeds", "l"), ("solve", "l"), ("order", "r"), ("NFE", "r"), ("loss", "r")]
               + [(f"hops={h}", "r") for h in ("1", "2", "3", "4")]
               + [("held against", "l"), ("its loss", "r"), ("within", "c"), ("short by", "l"), ("cost", "r")])
    body = []
    for r in rows:
        short = "" if r["within"] in (True, None) else ", ".join(filter(None, (
            f"{r['loss_excess']:.3f} nats" if r["loss_excess"] > 0 else "",
            f"{r['hop_shortfall']:.1f} points" if r["hop_shortfall"] > 1 else "")))
        body.append([r["model"], ",".join(map(str, r["seeds"])), r["solve"], str(r["order"]), f"{r['nfe']:.1f}",
                     f"{r['loss']:.4f}"] + [f"{r['hops'][h]:.3f}" for h in sorted(r["hops"], key=int)]
                    + [r["dedicated"] or "not trained",
                       f"{r['dedicated_loss']:.4f}" if r["dedicated_loss"] is not None else "–",
                       {True: "yes", False: "no", None: "–"}[r["within"]], short,
                       f"{r['training_cost']:.2f}" if r["training_cost"] is not None else "–"])
    return markdown(columns, body)


def goals(rows: list[dict]) -> str:
    """Per model, each goal of the issue: met, or by how much it is missed."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        depth = mine[0]["depth"]
        euler = {int(r["solve"].split(":")[1]): r for r in mine if r["solve"].startswith("euler:")}
        low = [euler[n] for n in range(1, depth + 1) if n in euler]
        missed = [f"N = {n} ({_short(euler[n])})" for n in range(1, depth + 1)
                  if n in euler and euler[n]["within"] is False]
        untested = [n for n in range(1, depth + 1) if n not in euler or euler[n]["within"] is None]
        seeds = sorted(set().union(*(r["seeds"] for r in mine)))
        lines.append(f"- **{name}** (L = {depth}, seeds {','.join(map(str, seeds))}, training cost "
                     + (f"{mine[0]['training_cost']:.2f}" if mine[0]["training_cost"] is not None else "–")
                     + " dedicated full-depth models):")
        lines.append(f"  - Euler at N = 1..{depth} within the dedicated depth-N model: "
                     f"{sum(r['within'] is True for r in low)} of {depth}"
                     + (f"; missed at {'; '.join(missed)}" if missed else "")
                     + (f"; no dedicated model or point yet at N = {', '.join(map(str, untested))}"
                        if untested else ""))
        high = [euler[n] for n in range(depth + 1, 2 * depth + 1) if n in euler]
        if high and depth in euler:
            worst = max(high, key=lambda r: r["loss"])
            kept = [r for r in high if r["within"]]
            lines.append(f"  - N = {depth + 1}..{2 * depth} no worse than N = {depth} (within its row): "
                         f"{len(kept)} of {len(high)}; worst {worst['solve']} {worst['loss']:.4f} against "
                         f"{euler[depth]['loss']:.4f}" + (f" ({_short(worst)})" if not worst["within"] else ""))
        best = None
        for r in mine:
            nfe = round(r["nfe"])
            if r["order"] >= 2 and "rtol" not in r["solve"] and nfe <= depth // 2 and nfe in euler:
                gain = euler[nfe]["loss"] - r["loss"]
                best = max(best or (gain, r, euler[nfe]), (gain, r, euler[nfe]), key=lambda x: x[0])
        if best:
            gain, r, e = best
            lines.append(f"  - order >= 2 better than Euler at equal NFE <= {depth // 2}: "
                         f"{'met' if gain > 0 else 'missed'} (best {r['solve']} {r['loss']:.4f} against "
                         f"{e['solve']} {e['loss']:.4f})")
        adaptive = [r for r in mine if "rtol" in r["solve"]]
        if adaptive:
            good = [r for r in adaptive if r["within"] and r["nfe"] <= depth
                    and r["nfe_by_hops"]["4"] > r["nfe_by_hops"]["1"]]
            lines.append(f"  - adaptive within the dedicated full-depth model at mean NFE <= {depth}, more NFE on "
                         f"hop 4 than hop 1: {'met by ' + good[0]['solve'] if good else 'missed'} ("
                         + "; ".join(f"{r['solve']}: NFE {r['nfe']:.1f} (hop 1 {r['nfe_by_hops']['1']:.1f}, hop 4 "
                                     f"{r['nfe_by_hops']['4']:.1f}), {_short(r) or 'within'}" for r in adaptive) + ")")
        cost = mine[0]["training_cost"]
        if cost is not None:
            lines.append(f"  - training cost at most 1.5 dedicated full-depth models: "
                         f"{'met' if cost <= 1.5 else 'missed'} ({cost:.2f})")
    return "\n".join(lines)


def _short(row: dict) -> str:
    if row["within"] in (True, None):
        return ""
    parts = [f"loss {row['loss_excess']:+.3f} nats past the allowance" if row["loss_excess"] > 0 else "",
             f"{row['hop_shortfall']:.1f} points short at a hop count" if row["hop_shortfall"] > 1 else ""]
    return ", ".join(filter(None, parts))


def plot(results: str, rows: list[dict], path: str) -> None:
    """Per model, loss and hop-4 accuracy against NFE: its Euler curve, higher-order and adaptive points, and the
    dedicated models as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    figure, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), squeeze=False)
    for (loss_axis, hop_axis), name in zip(axes, models):
        mine = [r for r in rows if r["model"] == name]
        depth = mine[0]["depth"]
        dedicated = []
        for n in range(1, depth + 1):
            found = khop_study.seeds_of(results, dedicated_name(n))
            if found:
                dedicated.append((n, _mean([khop_study.full_depth(r) for _, r in found])))
        for axis, value in ((loss_axis, lambda p: p["loss"]), (hop_axis, lambda p: p["hops"]["4"])):
            euler = sorted((r for r in mine if r["solve"].startswith("euler:")), key=lambda r: r["nfe"])
            axis.plot([r["nfe"] for r in euler], [value(r) for r in euler], "o-", color="C0", label="one model, Euler")
            for solver, marker, color in (("midpoint", "s", "C1"), ("bosh3", "^", "C2"), ("rk4", "D", "C3")):
                some = [r for r in mine if r["solve"].startswith(solver + ":")]
                if some:
                    axis.plot([r["nfe"] for r in some], [value(r) for r in some], marker, color=color,
                              label=f"one model, {solver}")
            adaptive = [r for r in mine if "rtol" in r["solve"]]
            if adaptive:
                axis.plot([r["nfe"] for r in adaptive], [value(r) for r in adaptive], "*", color="C4", markersize=11,
                          label=f"one model, {ADAPTIVE} (3 tolerances)")
            if dedicated:
                axis.plot([n for n, _ in dedicated], [value(p) for _, p in dedicated], "kx", markersize=9,
                          mew=2, label="dedicated depth-N models")
            axis.axvline(depth, color="grey", lw=0.5)
            axis.set_xlabel("NFE (block evaluations)")
            axis.grid(alpha=0.3)
        loss_axis.set_yscale("log")
        loss_axis.set_ylabel("held-out loss (nats)")
        hop_axis.set_ylabel("accuracy at 4 hops")
        loss_axis.set_title(f"{name} (L = {depth}, seeds {','.join(map(str, mine[0]['seeds']))})", fontsize=9)
        hop_axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

"""The k-hop study of docs/results.md (issue "Depth that pays"): result files made
from trained models, and the tables `python -m eval.study --table khop...` prints
from them. Nothing here retrains anything.

A result file (`docs/study/khop/NAME.json`) holds a model's grid on the 2048
held-out sequences of its task (loss and accuracy per hop count at full depth,
each solver at N steps up to 2L, deeper stacks and truncations), the same on
hop counts beyond its training range, an adaptive solver's NFE on 256
sequences of each trained hop count, and its training curve: the windowed training loss, the
validation accuracy per hop every 100 steps, and the step at which each hop
count was learned (accuracy first at or above 90%).
"""

from __future__ import annotations

import json
import os

import numpy as np

from configs import khop as khop_configs
from odeplm.core.config import ModelConfig
from odeplm.core.solvers import SOLVERS, Solve, plan_label, plan_solves
from odeplm.evaluation.report import markdown

LEARNED = 0.9  # a hop count is learned once its validation accuracy reaches this
GRID_SOLVERS = ("euler", "midpoint", "rk4")
ADAPTIVE = "tsit5:rtol=1e-2:atol=1e-2"
BATCHES, BATCH_SIZE = 64, 32  # all 2048 held-out sequences


def result_path(results: str, name: str) -> str:
    return os.path.join(results, "khop", f"{name}.json")


def evaluate(name: str, workdir: str, results: str, grid: bool = True) -> dict:
    """Writes the result file of the trained model `workdir/name`; returns it. Without `grid`, the file holds
    the model at full depth, at the solves it is served with at N = L/2 and L/4 (`served_at`) and its
    training curve only: enough for a seed replicate, in a tenth of the time."""
    from odeplm.data.pipeline import split_batches
    from odeplm.data.tasks import KHopOptions
    from odeplm.evaluation.checkpoint_grid import load_with_tokenizer
    from odeplm.evaluation.grid import grid_points, run_grid, solve_points
    from odeplm.evaluation.point import validation_batches

    run_dir = os.path.join(workdir, name)
    loaded = load_with_tokenizer(run_dir)
    model, config, run = loaded.model, loaded.model.config, loaded.run
    layers, tau = config.layers, config.depth[0].tau

    def batches(dataset: str, count: int = BATCHES) -> list[dict]:
        split = split_batches(dataset, "validation", loaded.data_dir(), loaded.tokenizer, length=config.max_length,
                              batch_size=BATCH_SIZE, objective=config.objective, seed=run.seed, shuffle=False)
        return validation_batches(split, count)

    def rows(points, data, rounds=3) -> list[dict]:
        keep = ("label", "kind", "solves", "layers", "nfe", "loss", "accuracy", "groups", "latency_ms", "speedup")
        return [{k: row[k] for k in keep} for row in run_grid(model, points, data, rounds)]

    record = {"name": name, "model": config.to_dict(), "dataset": run.dataset, "step": loaded.step,
              "training": training_record(run_dir, plan_label(plan_solves(config.depth)))}
    if not grid:
        served = ",".join(filter(None, (served_at(name, n) for n in (layers // 2, layers // 4) if n >= 1)))
        points = grid_points(model, (), [layers])[:1] + (solve_points(model, served) if served else [])
        return write(results, name, {**record, "points": rows(points, batches(run.dataset), rounds=1)})
    deeper = [f"euler:{n}@{n * tau:g}" for n in (layers * 3 // 2, 2 * layers)]
    steps = [n for n in (1, 2, 3, 4, 6, 8, 12, 16) if n <= 2 * layers]  # per segment; at most 2L evaluations
    points = grid_points(model, GRID_SOLVERS, steps, deeper, max_nfe=2 * layers)
    options = KHopOptions.parse(run.dataset)
    low, high = options.hops
    task = f"khop?alphabet={options.alphabet}&length={options.length}&seed={options.seed}&train=32"
    beyond = f"{task}&hops={high + 1}-{min(2 * high, 15)}"
    adaptive = {}
    for hops in range(low, high + 1):
        (row,) = rows(solve_points(model, ADAPTIVE), batches(f"{task}&hops={hops}", 8), rounds=1)
        adaptive[str(hops)] = {"nfe": row["nfe"], "accuracy": row["accuracy"]}
    return write(results, name, {
        **record,
        "points": rows(points, batches(run.dataset)),
        "beyond": {"dataset": beyond, "points": rows(solve_points(model, ",".join(
            [f"euler:{layers}", f"euler:{2 * layers}"] + deeper)), batches(beyond), rounds=1)},
        "adaptive": {"solve": ADAPTIVE, "by_hops": adaptive},
    })


def write(results: str, name: str, result: dict) -> dict:
    path = result_path(results, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def training_record(run_dir: str, solve: str, window: int = 50) -> dict:
    """The loss curve in windows of `window` steps, validation accuracy per hop count at the training `solve`,
    and the step at which each hop count was learned there (None: not within the run)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    curve = [[rows[i + window - 1]["step"], float(np.mean([r["loss"] for r in rows[i:i + window]]))]
             for i in range(0, len(rows) - window + 1, window)]
    prefix = f"validation/accuracy@{solve}/hops="
    validation = [[row["step"], {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}]
                  for row in rows if any(k.startswith(prefix) for k in row)]
    learned = {}
    for step, by_hops in validation:
        for hops, accuracy in by_hops.items():
            if accuracy >= LEARNED and hops not in learned:
                learned[hops] = step
    hops = sorted({h for _, by_hops in validation for h in by_hops}, key=int)
    return {"final_train_loss": float(np.mean([r["loss"] for r in rows[-window:]])),
            "nfe_per_step": float(np.mean([r["nfe"] for r in rows])), "loss_curve": curve,
            "validation_by_hops": validation, "learned_at": {h: learned.get(h) for h in hops}}


def result(results: str, name: str) -> dict | None:
    path = result_path(results, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def seeds_of(results: str, name: str) -> list[tuple[int, dict]]:
    """(seed, result) of a model and its `NAME_seedK` replicates that have result files."""
    found = []
    for seed in range(10):
        found_result = result(results, name if seed == 0 else f"{name}_seed{seed}")
        if found_result is not None:
            found.append((seed, found_result))
    return found


def full_depth(found: dict) -> dict:
    return next(row for row in found["points"] if row["kind"] == "full depth")


def at(found: dict, solve: str) -> dict | None:
    """The grid point running `solve` in every segment; Euler at the trained step size over N layers is the
    model's first N layers (its truncation, or full depth at N = L)."""
    row = next((row for row in found["points"] if row["kind"] != "truncated" and set(row["solves"]) == {solve}),
               None)
    parsed = Solve.parse(solve)
    if row is None and parsed.solver == "euler" and parsed.span == parsed.steps:
        row = next((row for row in found["points"] if row["kind"] == "truncated" and row["layers"] == parsed.steps
                    or row["kind"] == "full depth" and row["nfe"] == parsed.steps), None)
    return row


def _hops(row: dict) -> list[str]:
    return sorted(row["groups"], key=int)


def _learned(found: dict) -> str:
    steps = found["training"]["learned_at"]
    return ", ".join(f"{steps[h]}" if steps[h] is not None else "–" for h in sorted(steps, key=int))


def dedicated_table(results: str, recipes: dict[str, tuple[str, ...]]) -> str:
    """Each dedicated model per seed at its own depth: loss, accuracy per hop count, the steps at which
    each hop count was learned; then, per seed, whether depth pays at each halving."""
    rows, by_recipe, listed = [], {}, set()
    for recipe, names in recipes.items():
        for name in names:
            for seed, found in seeds_of(results, name):
                point = full_depth(found)
                by_recipe.setdefault(recipe, {}).setdefault(seed, {})[name] = point
                if (name, seed) in listed:  # a model two recipes share (the shallowest) is listed once
                    continue
                listed.add((name, seed))
                rows.append([f"{name} ({recipe})", str(seed), f"{point['loss']:.4f}", f"{point['accuracy']:.3f}"]
                            + [f"{point['groups'][h]['accuracy']:.3f}" for h in _hops(point)] + [_learned(found)])
    hop_columns = [(f"hops={h}", "r") for h in ("1", "2", "3", "4")]
    table = markdown([("model", "l"), ("seed", "r"), ("loss", "r"), ("accuracy", "r")] + hop_columns
                     + [("learned at step (hops 1, 2, 3, 4)", "l")], rows)
    pays = []
    for recipe, seeds in by_recipe.items():
        names = recipes[recipe]
        for seed, points in sorted(seeds.items()):
            for deep, shallow in zip(names, names[1:]):
                if deep in points and shallow in points:
                    a, b = points[deep], points[shallow]
                    hardest = _hops(a)[-1]
                    loss_gain = 100 * (b["loss"] - a["loss"]) / b["loss"]
                    hop_gain = 100 * (a["groups"][hardest]["accuracy"] - b["groups"][hardest]["accuracy"]) / max(
                        b["groups"][hardest]["accuracy"], 1e-9)
                    pays.append([recipe, str(seed), f"{deep} over {shallow}", f"{loss_gain:+.1f}%",
                                 f"{hop_gain:+.1f}%", "yes" if loss_gain >= 3 and hop_gain >= 3 else "no"])
    question = "Does depth pay (by at least 3% in loss and in accuracy at the hardest hop count)?"
    return table + f"\n\n{question}\n\n" + markdown(
        [("recipe", "l"), ("seed", "r"), ("halving", "l"), ("loss lower by", "r"), ("hardest hop higher by", "r"),
         ("pays", "c")], pays)


def candidates_table(results: str, plain: str, candidates: tuple[str, ...]) -> str:
    """What makes a deep shared model learn within the budget: each candidate over its seeds against the plain
    model, with the step each seed learned the hardest hop count (– : not within the run)."""
    rows, untrained = [], []
    for name in (plain,) + candidates:
        found = seeds_of(results, name)
        if not found:
            untrained.append(name)
            continue
        points = [full_depth(r) for _, r in found]
        hardest = _hops(points[0])[-1]
        learned = [r["training"]["learned_at"].get(hardest) for _, r in found]
        rows.append([name, ", ".join(str(s) for s, _ in found),
                     ", ".join(f"{p['loss']:.3f}" for p in points),
                     ", ".join(f"{p['groups'][hardest]['accuracy']:.2f}" for p in points),
                     ", ".join(str(s) if s is not None else "–" for s in learned),
                     f"{sum(s is not None for s in learned)} of {len(found)}"])
    table = markdown([("model (L = 8)", "l"), ("seeds", "l"), ("loss per seed", "l"), ("hops=4 accuracy per seed", "l"),
                      ("hops=4 learned at step", "l"), ("seeds that learned it", "c")], rows)
    return table + (f"\n\nNo result file yet: {', '.join(untrained)}." if untrained else "")


def speeds_table(results: str, models: tuple[str, ...], dedicated: dict[int, str]) -> str:
    """One model at N = L, L/2, L/4 (each at the solve it is served with) against the dedicated models of those
    depths, over seeds: accuracy per hop count and loss; `within` when every hop count is within 1 point and the
    loss within 1% or 0.01 nats, whichever is larger. A model's training cost is its block evaluations over
    training (steps times NFE per step) relative to the dedicated models of the three depths together: what one
    model saves, or spends, against training each depth on its own."""
    depths = sorted(dedicated, reverse=True)
    references, costs = {}, {}
    for n in depths:
        found = seeds_of(results, dedicated[n])
        if found:
            references[n] = _mean_point([full_depth(r) for _, r in found])
            costs[n] = training_evaluations(found)
    ladder = sum(costs.values()) if len(costs) == len(depths) else None

    def cost(evaluations: float) -> str:
        return f"{evaluations / ladder:.2f}" if ladder else "–"

    columns = ([("model", "l"), ("served at", "l"), ("training cost", "r"), ("loss", "r")]
               + [(f"hops={h}", "r") for h in ("1", "2", "3", "4")] + [("within", "c")])
    unmeasured = ["–"] * (len(columns) - 3)  # every column but the model, its solve and the verdict
    rows = [["dedicated (mean over seeds)", f"N = {n}", cost(costs[n]), f"{references[n]['loss']:.4f}"]
            + [f"{references[n]['groups'][h]['accuracy']:.3f}" for h in _hops(references[n])] + [""]
            for n in depths if n in references]
    for name in models:
        found = seeds_of(results, name)
        model_cost = cost(training_evaluations(found)) if found else "–"
        for n in depths:
            solve = served_at(name, n)
            if solve is None:
                rows.append([name, f"N = {n}"] + unmeasured + ["fewer than its segments"])
                continue
            points = [at(r, solve) for _, r in found]
            if not found or any(p is None for p in points) or n not in references:
                rows.append([name, f"N = {n} ({solve})"] + unmeasured + ["not measured"])
                continue
            mean, reference = _mean_point(points), references[n]
            within = (abs(mean["loss"] - reference["loss"]) <= max(0.01 * reference["loss"], 0.01)
                      or mean["loss"] <= reference["loss"]) and all(
                mean["groups"][h]["accuracy"] >= reference["groups"][h]["accuracy"] - 0.01 for h in _hops(mean))
            seeds = f"{len(found)} seed{'s' if len(found) > 1 else ''}"
            rows.append([f"{name} ({seeds})", f"N = {n} ({solve})", model_cost, f"{mean['loss']:.4f}"]
                        + [f"{mean['groups'][h]['accuracy']:.3f}" for h in _hops(mean)]
                        + ["yes" if within else "no"])
    return markdown(columns, rows)


def training_evaluations(found: list[tuple[int, dict]]) -> float:
    """Block evaluations over a model's training, mean over its seeds: steps x the mean NFE per step."""
    return float(np.mean([r["step"] * r["training"]["nfe_per_step"] for _, r in found]))


def _mean_point(points: list[dict]) -> dict:
    hops = _hops(points[0])
    return {"loss": float(np.mean([p["loss"] for p in points])),
            "groups": {h: {"accuracy": float(np.mean([p["groups"][h]["accuracy"] for p in points]))} for h in hops}}


def steps_table(results: str, name: str) -> str:
    """Harder inputs and more steps: accuracy per hop count against N (finer steps over the trained span, and
    more layers of the trained size), on the trained hop counts and beyond them; an adaptive solver's NFE on
    sequences of one hop count each."""
    found = result(results, name)
    if found is None:
        return f"{name}: no result file"
    rows = []
    for row in sorted((r for r in found["points"] if r["solves"][0].startswith("euler")), key=lambda r: r["nfe"]):
        rows.append([row["label"], f"{row['nfe']:.0f}", f"{row['loss']:.4f}"]
                    + [f"{row['groups'][h]['accuracy']:.3f}" for h in _hops(row)])
    table = markdown([("solve", "l"), ("NFE", "r"), ("loss", "r")] + [(f"hops={h}", "r") for h in
                                                                         _hops(found["points"][0])], rows)
    beyond = found["beyond"]["points"]
    table += f"\n\nBeyond the trained hop counts ({found['beyond']['dataset']}):\n\n" + markdown(
        [("solve", "l"), ("NFE", "r")] + [(f"hops={h}", "r") for h in _hops(beyond[0])],
        ([r["label"], f"{r['nfe']:.0f}"] + [f"{r['groups'][h]['accuracy']:.3f}" for h in _hops(r)] for r in beyond))
    adaptive = found["adaptive"]
    table += f"\n\nAn adaptive solver ({adaptive['solve']}) on sequences of one hop count each:\n\n" + markdown(
        [("hops", "r"), ("mean NFE", "r"), ("accuracy", "r")],
        ([h, f"{v['nfe']:.1f}", f"{v['accuracy']:.3f}"] for h, v in sorted(adaptive["by_hops"].items(),
                                                                          key=lambda kv: int(kv[0]))))
    return table


def layers(name: str) -> int:
    """The trained depth of a model of configs/khop.py."""
    return ModelConfig.from_dict(khop_configs.get_config(name).model).layers


def solvers_table(results: str, models: tuple[str, ...]) -> str:
    """Higher-order solvers against Euler at equal NFE over the trained span: loss and accuracy at the hardest
    hop count, means over the seeds whose result files hold the grid."""
    rows = []
    for name in models:
        found = [r for _, r in seeds_of(results, name) if "beyond" in r]
        if not found:
            rows.append([name, "–"] + ["no grid"] * len(GRID_SOLVERS))
            continue
        for nfe in (1, 2, 4, 8):
            cells = []
            for solver in GRID_SOLVERS:
                per_step = SOLVERS[solver].nfe(1)
                points = [at(r, f"{solver}:{nfe // per_step}") for r in found] if nfe % per_step == 0 else [None]
                if any(p is None for p in points):
                    cells.append("–")
                    continue
                mean = _mean_point(points)
                cells.append(f"{mean['loss']:.4f} ({mean['groups'][_hops(mean)[-1]]['accuracy']:.3f})")
            rows.append([f"{name} ({len(found)} seed{'s' if len(found) > 1 else ''})", str(nfe)] + cells)
    return markdown([("model", "l"), ("NFE", "r")] + [(f"{s}: loss (hardest hop)", "r") for s in GRID_SOLVERS], rows)


def served_at(name: str, n: int) -> str | None:
    """The solve a model of configs/khop.py is served with at N evaluations of its blocks: below full depth,
    its coarse terms' solver (or its training solver; that one too below the cost of one step), over its span,
    or, for coarse terms in depth mode, its first N layers; at full depth, as trained. Every segment takes
    the same steps, so a partially shared plan of S segments serves multiples of S only (None below S)."""
    config = khop_configs.get_config(name)
    train, model = config.train, ModelConfig.from_dict(config.model)
    segments = len(model.depth)
    solver = train.distill_solver or train.solver
    if n >= model.layers or n < segments * SOLVERS[solver].nfe(1):
        solver = train.solver
    steps = n // (segments * SOLVERS[solver].nfe(1))
    if steps < 1:
        return None
    if (train.distill_mode or train.step_mode) == "depth":
        return f"{solver}:{steps}@{steps * model.depth[0].tau:g}"
    return f"{solver}:{steps}"

"""The studies of docs/results.md: small result files in, markdown tables out.

The k-hop study, where depth pays (`eval/khop_study.py`, configs/khop.py):

    python -m eval.study --table khop              # dedicated depths per seed: loss, accuracy per hop, when learned
    python -m eval.study --table khop_candidates   # what makes deep shared models learn: candidates over seeds
    python -m eval.study --table khop_recipes      # one model at N = L, L/2, L/4 against the dedicated models
    python -m eval.study --table khop_steps        # accuracy per hop against N, beyond the trained hops, adaptive NFE
    python -m eval.study --table khop_solvers      # higher-order solvers against Euler at equal NFE
    python -m eval.study --table khop_any_speed    # one model at every step count, order and tolerance (--format json)
    python -m eval.study --plot khop_any_speed     # the same as a figure, docs/figures/khop_any_speed.png
    python -m train.pretrain --config configs/khop.py:NAME --workdir runs/khop/NAME
    python -m eval.study --study khop --evaluate NAME --workdir runs/khop   # -> docs/study/khop/NAME.json
    python -m eval.study --study khop --evaluate NAME --nogrid --any_speed --workdir runs/khop   # every speed

The character-level Shakespeare study, where depth does not pay (configs/study.py):

    python -m eval.study --table search     # the regime: dedicated depths 8, 4, 2, causal and masked
    python -m eval.study --table recipes    # one model at N = L, L/2, L/4 against the dedicated models
    python -m eval.study --table seeds      # the same over seeds: each seed and the means
    python -m eval.study --table solvers    # higher-order solvers against Euler at equal NFE
    python -m eval.study --table masked     # masked models, Post-LN (with ln_euler) and Pre-LN
    python -m eval.study --table latency    # whole-model speed-ups, timed interleaved

Tables read `docs/study/NAME.json`, one per model of configs/study.py, and
write their figures under docs/figures/; nothing is retrained. A result file
is made from a trained model by

    python -m train.pretrain --config configs/study.py:NAME --workdir runs/study/NAME
    python -m eval.study --evaluate NAME --workdir runs/study

which runs the model's accuracy-versus-speed grid (`odeplm.evaluation.checkpoint_grid.accelerate`:
every point on the same validation batches, latencies timed interleaved) and
keeps what the tables need, with the training cost per step from its metrics.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from configs import study as study_configs
from eval import khop_any_speed, khop_study
from odeplm.cli import run
from odeplm.core.solvers import SOLVERS
from odeplm.evaluation.report import markdown

flags.DEFINE_string("table", None, "khop, khop_candidates, khop_recipes, khop_steps, khop_solvers, khop_any_speed, "
                                   "search, recipes, seeds, solvers, masked or latency")
flags.DEFINE_enum("format", "markdown", ["markdown", "json"], "--table khop_any_speed: a markdown table with the "
                  "goals met and missed, or its rows as a JSON list")
flags.DEFINE_enum("plot", None, ["khop_any_speed"], "draws the table's figure under --figures")
flags.DEFINE_bool("any_speed", False, "k-hop: add every step count, order and tolerance to each result file "
                  "(eval/khop_any_speed.py)")
flags.DEFINE_enum("study", "shakespeare", ["shakespeare", "khop"], "the study whose models --evaluate names")
flags.DEFINE_list("evaluate", [], "models of the study whose result files to (re)make from --workdir")
flags.DEFINE_bool("grid", True, "k-hop: the whole grid in each result file; "
                  "--nogrid: full depth, the served speeds and training only")
flags.DEFINE_string("workdir", "runs/study", "one pre-training workdir per model under here")
flags.DEFINE_string("results", "docs/study", "result files, one per model")
flags.DEFINE_string("figures", "docs/figures", "where plots are written")
FLAGS = flags.FLAGS

SPEEDS = (8, 4, 2)  # N = L, L/2, L/4
_SPEED_COLUMNS = [(f"N = {n}", "r") for n in SPEEDS]
CAUSAL = {n: f"depth{n}" for n in SPEEDS}
RECIPES = ("random", "sandwich", "sandwich_heavy", "sandwich_hidden", "sandwich_time", "sandwich_time_heavy",
           "sandwich_time_heavy_seed1", "sandwich_time_midpoint")
MASKED = {"post": ("masked_post_sandwich", "masked_post_ln_euler"), "pre": ()}
GRID_SOLVERS = ("euler", "midpoint", "heun", "rk4")
GRID_STEPS = (1, 2, 4, 8)


def equal_nfe(nfe: int) -> tuple[str, ...]:
    """The grid's solves that cost exactly `nfe` evaluations of one segment."""
    return tuple(f"{s}:{n}" for s in GRID_SOLVERS for n in GRID_STEPS if SOLVERS[s].nfe(n) == nfe)



def evaluate(name: str) -> dict:
    """The result file of one trained model: its grid and its training cost."""
    from odeplm.evaluation.checkpoint_grid import accelerate

    workdir = os.path.join(FLAGS.workdir, name)
    solvers = GRID_SOLVERS + (("ln_euler",) if name.startswith("masked_post") else ())
    report = accelerate(workdir, out=os.path.join(workdir, "accelerate"), solvers=solvers, steps=list(GRID_STEPS),
                        max_nfe=16, batches=16, batch_size=16, rounds=3)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    with open(os.path.join(workdir, "validation.json")) as f:
        run = json.load(f)
    keep = ("label", "kind", "solves", "layers", "nfe", "loss", "accuracy", "latency_ms", "speedup")
    result = {
        "name": name, "model": report["model"], "step": report["step"], "unigram_loss": report["unigram_loss"],
        "training": {"nfe_per_step": float(np.mean([m["nfe"] for m in metrics])),
                     "final_train_loss": metrics[-1]["loss"], "validation_at_training_solve": run[0]["loss"]},
        "points": [{k: row[k] for k in keep} for row in report["points"]],
    }
    os.makedirs(FLAGS.results, exist_ok=True)
    with open(os.path.join(FLAGS.results, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def result(name: str) -> dict | None:
    path = os.path.join(FLAGS.results, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def at(name: str, solve: str, key: str = "loss") -> float | None:
    """The model's value at the grid point running `solve` in every segment (None: not measured)."""
    found = result(name)
    for row in (found or {}).get("points", []):
        if row["kind"] != "truncated" and set(row["solves"]) == {solve}:
            return row[key]
    return None


def _cell(value: float | None, reference: float | None = None) -> str:
    if value is None:
        return "–"
    if reference is None:
        return f"{value:.4f}"
    return f"{value:.4f} ({100 * (value - reference) / reference:+.2f}%)"


def _worse_by_at_most(value, reference, percent: float, *, higher_is_better: bool) -> bool:
    if value is None or reference is None:
        return False
    ratio = 1 - percent / 100 if higher_is_better else 1 + percent / 100
    return value >= ratio * reference if higher_is_better else value <= ratio * reference


def search_table() -> str:
    curriculum = {**CAUSAL, **{n: f"depth{n}_curriculum" for n in SPEEDS[:2]}}  # at L = 2 the plain model
    masked = {f"masked, {'Post' if n == 'post' else 'Pre'}-LN": {d: f"masked_{n}_depth{d}" for d in SPEEDS}
              for n in ("post", "pre")}
    groups = {"causal, Pre-LN": CAUSAL, "causal, Pre-LN, depth curriculum": curriculum, **masked}
    rows = []
    for label, models in groups.items():
        losses = {n: at(models[n], f"euler:{n}") for n in SPEEDS}
        cells = [label] + [_cell(losses[n]) for n in SPEEDS]
        if any(v is None for v in losses.values()):
            rows.append(cells + ["–", "–", "not measured"])
            continue
        gain84, gain42 = (100 * (losses[b] - losses[a]) / losses[b] for a, b in ((8, 4), (4, 2)))
        rows.append(cells + [f"{gain84:+.1f}%", f"{gain42:+.1f}%", "yes" if gain84 >= 3 and gain42 > 0 else "no"])
    return markdown([("models", "l")] + _SPEED_COLUMNS + [("8 beats 4 by", "r"), ("4 beats 2 by", "r"),
                                                          ("depth pays", "c")], rows)


def served_at(name: str, nfe: int) -> str:
    """The solve a model is served with at `nfe` evaluations: its training solver at full depth, and
    below it the solver its coarse terms were trained with (its training solver unless configured)."""
    train = study_configs.get_config(name).train
    solver = train.solver if nfe == SPEEDS[0] else train.distill_solver or train.solver
    return f"{solver}:{nfe // SOLVERS[solver].nfe(1)}"


def speed_table(models, dedicated: dict[int, str], key: str = "loss") -> str:
    """Each model at N = L, L/2, L/4 evaluations (each at the solve it is served with) against the
    dedicated model of that depth, with its training cost."""
    higher = key == "accuracy"
    references = {n: at(dedicated[n], f"euler:{n}", key) for n in SPEEDS}
    rows = [["dedicated models (N layers)"] + [_cell(references[n]) for n in SPEEDS] + ["", "1.00 each"]]
    for name in models:
        found = result(name)
        if found is None:
            rows.append([name, "–", "–", "–", "not trained", ""])
            continue
        solves = {n: served_at(name, n) for n in SPEEDS}
        values = {n: at(name, solves[n], key) for n in SPEEDS}
        met = all(_worse_by_at_most(values[n], references[n], 1, higher_is_better=higher) for n in SPEEDS)
        cost = found["training"]["nfe_per_step"] / 8
        solvers = ", ".join(dict.fromkeys(solve.split(":")[0] for solve in solves.values()))
        rows.append([f"{name} ({solvers})"] + [_cell(values[n], references[n]) for n in SPEEDS]
                    + ["yes" if met else "no", f"{cost:.2f}"])
    return markdown([("model", "l")] + _SPEED_COLUMNS + [("within 1% at every N", "c"),
                                                         ("training cost per step", "r")], rows)


def replicates(name: str) -> list[str]:
    """The model and its seed replicates (`NAME_seedK`) that have result files."""
    found = [name] if result(name) else []
    seed = 1
    while result(f"{name}_seed{seed}"):
        found.append(f"{name}_seed{seed}")
        seed += 1
    return found


def _seeds(count: int) -> str:
    return f"{count} seed" + ("s" if count != 1 else "")


def seeds_table(models) -> str:
    """Each model's seeds and their mean, against the mean over the dedicated models' seeds."""
    dedicated = {n: [at(m, f"euler:{n}") for m in replicates(CAUSAL[n])] for n in SPEEDS}
    references = {n: float(np.mean(v)) if v else None for n, v in dedicated.items()}
    rows = [[f"dedicated models, mean over {_seeds(min(map(len, dedicated.values())))}"]
            + [_cell(references[n]) for n in SPEEDS] + [""]]
    for name in models:
        seeds = replicates(name)
        values = {n: [at(m, served_at(m, n)) for m in seeds] for n in SPEEDS}
        for index, seed_name in enumerate(seeds):
            rows.append([seed_name] + [_cell(values[n][index], references[n]) for n in SPEEDS] + [""])
        means = {n: float(np.mean(values[n])) for n in SPEEDS}
        met = all(_worse_by_at_most(means[n], references[n], 1, higher_is_better=False) for n in SPEEDS)
        rows.append([f"{name}, mean over {_seeds(len(seeds))}"] + [_cell(means[n], references[n]) for n in SPEEDS]
                    + ["yes" if met else "no"])
    return markdown([("model", "l")] + _SPEED_COLUMNS + [("mean within 1% at every N", "c")], rows)


def truncation_row(name: str, dedicated: dict[int, str]) -> str:
    found = result(name) or {"points": []}
    cut = {r["layers"]: r["loss"] for r in found["points"] if r["kind"] == "truncated"}
    references = {n: at(dedicated[n], f"euler:{n}") for n in SPEEDS}
    return (f"| {name}, first N layers only | – | " + " | ".join(_cell(cut.get(n), references[n]) for n in SPEEDS[1:])
            + " | | |")


def solvers_table(models) -> str:
    blocks = []
    for nfe, solves in ((n, equal_nfe(n)) for n in SPEEDS[::-1]):
        rows = []
        for name in models:
            losses = {s: at(name, s) for s in solves}
            measured = {s: v for s, v in losses.items() if v is not None}
            if not measured:
                continue
            best = min(measured, key=measured.get)
            rows.append([name] + [f"**{_cell(v)}**" if s == best else _cell(v) for s, v in losses.items()] + [best])
        blocks.append(f"NFE {nfe}:\n\n" + markdown([("model", "l")] + [(s, "r") for s in solves] + [("best", "l")],
                                                     rows))
    return "\n\n".join(blocks)


def latency_table(name: str = "sandwich") -> str:
    found = result(name)
    rows = [[row["label"], f"{row['nfe']:.0f}", f"{row['loss']:.4f}", f"{row['latency_ms']:.2f}",
             f"{row['speedup']:.2f}x", f"{8 / row['nfe']:.2f}x"]
            for row in sorted(found["points"], key=lambda r: (r["nfe"], r["label"])) if row["kind"] != "truncated"]
    return (f"{name}: whole-model latency on one batch of 16 x 128 characters, all points timed interleaved\n\n"
            + markdown([("solve", "l"), ("NFE", "r"), ("loss", "r"), ("latency (ms)", "r"), ("speed-up", "r"),
                        ("8 / NFE", "r")], rows))


def plot_speeds(models, dedicated: dict[int, str], path: str, title: str) -> None:
    """Loss against NFE: each model at the solves it is served with (`served_at`); dedicated models as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in (m for m in models if result(m)):
        points = [(n, at(name, served_at(name, n))) for n in SPEEDS]
        solvers = ", ".join(dict.fromkeys(served_at(name, n).split(":")[0] for n in SPEEDS))
        axes.plot(*zip(*points), "-o", markersize=5, label=f"{name} ({solvers})")
    references = sorted((n, at(name, f"euler:{n}")) for n, name in dedicated.items() if result(name))
    axes.plot(*zip(*references), "k*", markersize=13, label="dedicated model of N layers")
    low = min(v for _, v in references)
    axes.set_ylim(low - 0.02, low + 0.32)  # the interesting range; points above it are off the chart
    axes.set_xscale("log", base=2)
    axes.set_xticks(SPEEDS, [str(n) for n in SPEEDS])
    axes.set_xlabel("function evaluations (NFE)")
    axes.set_ylabel("validation loss (nats per character)")
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# dedicated models per depth, plain and with the depth curriculum (at L <= 2 the curriculum is the plain model),
# and on a time-aware field, the control for the time-aware recipe (at L = 1 the field's time is constant)
KHOP_DEDICATED = {"plain": ("depth8", "depth4", "depth2", "depth1"),
                  "curriculum": ("depth8_curriculum", "depth4_curriculum", "depth2", "depth1"),
                  "time-aware": ("depth4_curriculum_time", "depth2_time", "depth1"),
                  "masked": ("depth4_curriculum_masked", "depth2_masked", "depth1_masked")}
KHOP_CANDIDATES = ("depth8_curriculum", "depth8_rezero", "depth8_span2", "depth8_mup", "depth8_random_depth",
                   "depth8_lr5e-4")
# time-aware recipes trained for the block evaluations of the dedicated models together, or more (`_long`)
_AT_LADDER_COST4 = ("depth4_curriculum_sandwich_span_time_matched", "depth4_curriculum_sandwich_span_stride_early",
                    "depth4_curriculum_sandwich_span_time_early", "depth4_curriculum_sandwich_span_stride_staggered",
                    "depth4_curriculum_sandwich_span_time_long", "depth4_curriculum_sandwich_span_time_long_heavy")
_TIME_AWARE4 = ("depth4_curriculum_sandwich_late_labels_time", "depth4_curriculum_sandwich_span_time",
                "depth4_curriculum_sandwich_span_time_states", "depth4_curriculum_sandwich_span_time_states_light",
                "depth4_curriculum_sandwich_midpoint_time", "depth4_curriculum_sandwich_span_stride",
                "depth2x2_curriculum_sandwich_span_time", *_AT_LADDER_COST4)
# models whose result files hold the grid: each solver against Euler at equal NFE
KHOP_SOLVERS = ("depth8_curriculum", "depth4_curriculum_sandwich_late", "depth4_curriculum_sandwich_midpoint_time")
# one model at N = L, L/2, L/4 against the dedicated models of a family (KHOP_DEDICATED) at those depths
KHOP_RECIPES = (
    (8, "curriculum", ("depth8_curriculum", "depth8_curriculum_sandwich_late", "depth8_curriculum_sandwich_span_time",
                       "depth8_curriculum_sandwich_span_time_matched", "depth8_curriculum_sandwich_span_time_long")),
    (4, "curriculum", ("depth4_curriculum", "depth4_span2", "depth4_curriculum_random",
                       "depth4_curriculum_sandwich_late", "depth4_curriculum_sandwich_late_labels",
                       "depth4_curriculum_sandwich_late_labels_heavy", "depth4_curriculum_sandwich_after_transition",
                       "depth4_curriculum_sandwich_late_labels_time", *_AT_LADDER_COST4)),
    (4, "time-aware", _TIME_AWARE4),
    (4, "masked", ("depth4_curriculum_masked",)),
)
# one model at every step count, order and tolerance, each against the dedicated curriculum ladder
KHOP_ANY_SPEED = ("depth8_curriculum_draw_stride_balanced", "depth4_curriculum_draw_stride_balanced",
                  "depth4_curriculum_draw_stride",
                  "depth8_curriculum_sandwich_span_time_long", "depth4_curriculum_sandwich_span_time_long_heavy",
                  "depth8_curriculum")


def khop_table(name: str) -> str:
    if name == "khop":
        return khop_study.dedicated_table(FLAGS.results, KHOP_DEDICATED)
    if name == "khop_candidates":
        return khop_study.candidates_table(FLAGS.results, "depth8", KHOP_CANDIDATES)
    if name == "khop_recipes":
        tables = []
        for depth, family, models in KHOP_RECIPES:
            dedicated = {khop_study.layers(n): n for n in KHOP_DEDICATED[family]}
            tables.append(f"At L = {depth}, against the {family} dedicated models:\n\n" + khop_study.speeds_table(
                FLAGS.results, models, {n: dedicated[n] for n in (depth, depth // 2, depth // 4)}))
        return "\n\n".join(tables)
    if name == "khop_solvers":
        return khop_study.solvers_table(FLAGS.results, KHOP_SOLVERS)
    if name == "khop_steps":
        return khop_study.steps_table(FLAGS.results, "depth8_curriculum")
    if name == "khop_any_speed":
        rows = khop_any_speed.rows(FLAGS.results, KHOP_ANY_SPEED)
        if FLAGS.format == "json":
            return json.dumps(rows, indent=1)
        return (khop_any_speed.table(rows) + f"\n\nWithin: {khop_any_speed.CRITERION}, means over seeds; cost: "
                f"block evaluations over training relative to one dedicated full-depth model.\n\n"
                + khop_any_speed.goals(rows))
    raise app.UsageError(f"unknown --table {name!r}")


def main(argv):
    del argv
    for name in FLAGS.evaluate:
        if FLAGS.study == "khop":
            khop_study.evaluate(name, FLAGS.workdir, FLAGS.results, FLAGS.grid)
            if FLAGS.any_speed:
                khop_any_speed.evaluate(name, FLAGS.workdir, FLAGS.results)
            print(f"wrote {khop_study.result_path(FLAGS.results, name)}")
        else:
            evaluate(name)
            print(f"wrote {os.path.join(FLAGS.results, name + '.json')}")
    if FLAGS.plot == "khop_any_speed":
        path = os.path.join(FLAGS.figures, "khop_any_speed.png")
        khop_any_speed.plot(FLAGS.results, khop_any_speed.rows(FLAGS.results, KHOP_ANY_SPEED), path)
        print(f"wrote {path}")
    if FLAGS.table is None:
        return
    if FLAGS.table.startswith("khop"):
        print(khop_table(FLAGS.table))
        return
    masked_dedicated = {norm: {n: f"masked_{norm}_depth{n}" for n in SPEEDS} for norm in ("post", "pre")}
    if FLAGS.table == "search":
        print(search_table())
    elif FLAGS.table == "recipes":
        print(speed_table(("depth8",) + RECIPES, CAUSAL))
        print(truncation_row("depth8", CAUSAL))
        plot_speeds(("depth8",) + RECIPES, CAUSAL, os.path.join(FLAGS.figures, "recipes.png"),
                    "causal character LM, fully shared, L = 8")
    elif FLAGS.table == "seeds":
        print(seeds_table(("sandwich_time_heavy",)))
    elif FLAGS.table == "solvers":
        print(solvers_table(("depth8",) + RECIPES + ("masked_post_depth8",) + MASKED["post"]))
    elif FLAGS.table == "masked":
        for norm in ("post", "pre"):
            label = "Post-LN (ALBERT)" if norm == "post" else "Pre-LN"
            models = (masked_dedicated[norm][8],) + MASKED[norm]
            print(f"{label}, masked-character loss:\n\n{speed_table(models, masked_dedicated[norm])}\n")
            print(f"{label}, masked-character accuracy:\n\n"
                  f"{speed_table(models, masked_dedicated[norm], 'accuracy')}\n")
    elif FLAGS.table == "latency":
        print(latency_table())
    else:
        raise app.UsageError(f"unknown --table {FLAGS.table!r}")


if __name__ == "__main__":
    run(main)

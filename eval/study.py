"""The study of docs/results.md: one command per table.

    python -m eval.study --table recipes    # one model, every speed: recipes vs dedicated-depth models
    python -m eval.study --table solvers    # higher-order solvers against Euler at equal NFE
    python -m eval.study --table sharing    # fully shared against four shared segments
    python -m eval.study --table masked     # masked LMs, Post-LN (ALBERT) and Pre-LN
    python -m eval.study --table finetune   # downstream accuracy of the masked LMs per (solver, N)
    python -m eval.study --table latency    # measured speed-up against NFE
    python -m eval.study --table grids      # every model's whole grid

Each table trains the models of configs/study.py it needs and has not got yet
(`python -m train.pretrain --config configs/study.py:NAME`), runs
`eval.accelerate` (and `eval.finetune` for masked models) on those not yet
evaluated, then prints markdown. Results live under --workdir/NAME; the plots
go to --figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags, logging

flags.DEFINE_string("table", "recipes", "recipes, solvers, sharing, masked, finetune, latency or grids")
flags.DEFINE_string("workdir", "runs/study", "one pre-training workdir per model under here")
flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory")
flags.DEFINE_string("figures", "docs/figures", "where plots are written")
FLAGS = flags.FLAGS

SOLVERS = ("euler", "midpoint", "heun", "bosh3", "rk4")
STEPS = (1, 2, 3, 4, 6, 8)
FINETUNE_SOLVERS = ("euler", "midpoint", "rk4")
FINETUNE_STEPS = (1, 2, 4, 8)
RECIPES = ("causal_plain", "causal_fine", "causal_random", "causal_mix")
DEDICATED = {8: "causal_plain", 4: "causal_depth4", 2: "causal_depth2"}
MASKED = {"post": ("masked_post_plain", "masked_post_mix"), "pre": ("masked_pre_plain", "masked_pre_mix")}


# Dedicated-depth masked baselines were trained for Post-LN only (time ran out for Pre-LN ones).
MASKED_DEDICATED = {"post": {8: "masked_post_plain", 4: "masked_post_depth4", 2: "masked_post_depth2"},
                    "pre": {8: "masked_pre_plain"}}
SPEEDS = (8, 4, 2)


def workdir(name: str) -> str:
    return os.path.join(FLAGS.workdir, name)


def trained(name: str) -> str:
    """The model's workdir, pre-training it first if it has not finished."""
    path = workdir(name)
    if not os.path.exists(os.path.join(path, "validation.json")):
        print(f"pre-training {name} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "train.pretrain", "--config", f"configs/study.py:{name}",
                        "--workdir", path, f"--config.data.data_dir={FLAGS.data_dir}"], check=True)
    return path


def grid(name: str) -> list[dict]:
    """The model's accuracy-versus-speed grid, run once and kept under its workdir."""
    from odeplm.grid import accelerate

    path = os.path.join(workdir(name), "accelerate", "grid.json")
    if not os.path.exists(path):
        steps = STEPS + ((12, 16) if name == "causal_fine" else ())
        accelerate(trained(name), solvers=SOLVERS, steps=list(steps), max_nfe=16, batches=16, batch_size=16,
                   rounds=5, data_dir=os.path.expanduser(FLAGS.data_dir))
    with open(path) as f:
        return json.load(f)["points"]


def finetuned(name: str) -> dict:
    from odeplm.finetune import finetune_checkpoint

    path = os.path.join(workdir(name), "finetune", "finetune.json")
    if not os.path.exists(path):
        finetune_checkpoint(trained(name), solvers=FINETUNE_SOLVERS, steps=list(FINETUNE_STEPS), epochs=2,
                            per_class=1000, data_dir=os.path.expanduser(FLAGS.data_dir))
    with open(path) as f:
        return json.load(f)


def at(rows: list[dict], solve: str, key: str = "loss") -> float | None:
    """The value of the grid point running `solve` in every segment (None where the grid has none)."""
    for row in rows:
        if row["kind"] != "truncated" and set(row["solves"]) == {solve}:
            return row[key]
    return None


def truncated_at(rows: list[dict], layers: int, key: str = "loss") -> float | None:
    return next((r[key] for r in rows if r["kind"] == "truncated" and r["layers"] == layers), None)


def _cell(value: float | None, reference: float | None = None) -> str:
    if value is None:
        return "–"
    if reference is None:
        return f"{value:.4f}"
    return f"{value:.4f} ({100 * (value - reference) / reference:+.1f}%)"


def _within_one_percent(value: float, reference: float, *, higher_is_better: bool) -> bool:
    """At most 1% worse than the reference (better counts as met)."""
    return value >= 0.99 * reference if higher_is_better else value <= 1.01 * reference


def speed_table(models, dedicated: dict[int, str], key: str = "loss") -> str:
    """Euler at N = L, L/2, L/4 evaluations per model, against the plain model of that depth where one was trained."""
    references = {n: at(grid(dedicated[n]), f"euler:{n}", key) if n in dedicated else None for n in SPEEDS}
    complete = len(dedicated) == len(SPEEDS)
    header = " | ".join(f"N = {n}" for n in SPEEDS)
    lines = [f"| model | {header} | at most 1% worse at every N |", "|---" + "|---:" * len(SPEEDS) + "|:---:|"]
    lines.append("| dedicated plain models (N layers) | " + " | ".join(_cell(references[n]) for n in SPEEDS) + " | |")
    for name in models:
        rows = grid(name)
        values = {n: at(rows, f"euler:{n}", key) for n in SPEEDS}
        met = complete and all(_within_one_percent(values[n], references[n], higher_is_better=key == "accuracy")
                               for n in SPEEDS)
        lines.append(f"| {name} (Euler) | " + " | ".join(_cell(values[n], references[n]) for n in SPEEDS)
                     + f" | {('yes' if met else 'no') if complete else '–'} |")
        if name.endswith("plain"):
            cells = [_cell(truncated_at(rows, n, key), references[n]) if n < max(SPEEDS) else "–" for n in SPEEDS]
            lines.append(f"| {name}, first N layers only | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


# Solves of (about) equal cost: 4 and 8 evaluations; Bosh3 (FSAL) takes 3N + 1.
EQUAL_NFE = {4: ("euler:4", "midpoint:2", "heun:2", "bosh3:1", "rk4:1"), 8: ("euler:8", "midpoint:4", "heun:4",
                                                                            "bosh3:2", "rk4:2")}


def solvers_table(models) -> str:
    lines = ["| model | NFE | " + " | ".join(s.split(":")[0] for s in EQUAL_NFE[4]) + " | best |",
             "|---|---:" + "|---:" * len(EQUAL_NFE[4]) + "|---|"]
    for name in models:
        rows = grid(name)
        for nfe, solves in EQUAL_NFE.items():
            losses = {s: at(rows, s) for s in solves}
            best = min((v, s) for s, v in losses.items() if v is not None)[1]
            cells = [("**" + _cell(losses[s]) + "**" if s == best else _cell(losses[s])) + f" ({s.split(':')[1]})"
                     for s in solves]
            lines.append(f"| {name} | {nfe} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def sharing_table() -> str:
    references = {8: at(grid("seg4_plain"), "euler:2"), 4: at(grid("seg4_depth4"), "euler:1")}
    lines = ["| model | 8 NFE (2 per segment) | 4 NFE (1 per segment) | midpoint:1 (8 NFE) | rk4:1 (16 NFE) |",
             "|---|---:|---:|---:|---:|",
             f"| dedicated plain models | {_cell(references[8])} | {_cell(references[4])} | | |"]
    for name in ("seg4_plain", "seg4_mix"):
        rows = grid(name)
        lines.append(f"| {name} | {_cell(at(rows, 'euler:2'), references[8])} | "
                     f"{_cell(at(rows, 'euler:1'), references[4])} | {_cell(at(rows, 'midpoint:1'))} | "
                     f"{_cell(at(rows, 'rk4:1'))} |")
    return "\n".join(lines)


def masked_tables() -> str:
    parts = []
    for norm, models in MASKED.items():
        label = "Post-LN (ALBERT)" if norm == "post" else "Pre-LN"
        parts.append(f"{label}, masked-token loss:\n\n" + speed_table(models, MASKED_DEDICATED[norm]))
        parts.append(f"{label}, masked-token accuracy:\n\n" + speed_table(models, MASKED_DEDICATED[norm], "accuracy"))
    return "\n\n".join(parts)


def finetune_table() -> str:
    models = list(dict.fromkeys(m for norm in MASKED for m in (*MASKED[norm], *MASKED_DEDICATED[norm].values())))
    solves = [f"euler:{n}" for n in (8, 4, 2, 1)] + ["midpoint:4", "midpoint:2", "rk4:2", "rk4:1"]
    lines = ["| model | " + " | ".join(solves) + " | majority class |", "|---" + "|---:" * (len(solves) + 1) + "|"]
    for name in models:
        report = finetuned(name)
        cells = [_cell(at(report["points"], s, "accuracy")) for s in solves]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {report['majority_accuracy']:.4f} |")
    return "\n".join(lines)


def latency_table(name: str = "causal_mix") -> str:
    rows = grid(name)
    lines = [f"{name}: whole-model latency on one batch of 16 x 128 tokens, interleaved timing",
             "", "| solve | NFE | latency (ms) | speed-up | 8 / NFE |", "|---|---:|---:|---:|---:|"]
    for row in sorted(rows, key=lambda r: (r["nfe"], r["label"])):
        if row["kind"] == "truncated":
            continue
        lines.append(f"| {row['label']} | {row['nfe']:.0f} | {row['latency_ms']:.1f} | {row['speedup']:.2f}x | "
                     f"{8 / row['nfe']:.2f}x |")
    return "\n".join(lines)


def plot_losses(models, dedicated: dict[int, str], path: str, title: str, key: str = "loss") -> None:
    """Loss against NFE: each model's Euler curve and higher-order points, dedicated models as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, name in enumerate(models):
        rows = [r for r in grid(name) if r["kind"] != "truncated" and r["ok"]]
        color = f"C{index}"
        euler = sorted((r["nfe"], r[key]) for r in rows if r["solves"][0].startswith("euler"))
        axes.plot(*zip(*euler), "-o", color=color, label=f"{name}: Euler", markersize=4)
        for solver, marker in (("midpoint", "^"), ("rk4", "D")):
            points = sorted((r["nfe"], r[key]) for r in rows if r["solves"][0].startswith(solver))
            axes.plot(*zip(*points), marker, color=color, linestyle="none", markersize=5,
                      label=f"{name}: {solver}" if index == 0 else None)
    references = sorted((n, at(grid(name), f"euler:{n}", key)) for n, name in dedicated.items())
    axes.plot(*zip(*references), "k*", markersize=13, label="dedicated plain model of N layers")
    axes.set_xscale("log", base=2)
    axes.set_xlim(0.8, 20)
    low = min(v for _, v in references)
    axes.set_ylim(low - 0.1 if key == "loss" else low - 0.05, low + 0.8 if key == "loss" else low + 0.05)
    axes.set_xlabel("function evaluations (NFE)")
    axes.set_ylabel("validation loss (nats)" if key == "loss" else "masked-token accuracy")
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    figures = FLAGS.figures
    if FLAGS.table == "recipes":
        print(speed_table(RECIPES, DEDICATED))
        plot_losses(RECIPES, DEDICATED, os.path.join(figures, "recipes.png"), "causal LM, fully shared, L = 8")
    elif FLAGS.table == "solvers":
        print(solvers_table(RECIPES + MASKED["post"] + MASKED["pre"]))
    elif FLAGS.table == "sharing":
        print(sharing_table())
    elif FLAGS.table == "masked":
        print(masked_tables())
        plot_losses(MASKED["post"], MASKED_DEDICATED["post"], os.path.join(figures, "masked_post.png"),
                    "masked LM, Post-LN (ALBERT), fully shared, L = 8")
    elif FLAGS.table == "finetune":
        print(finetune_table())
    elif FLAGS.table == "latency":
        print(latency_table())
    elif FLAGS.table == "grids":
        from configs.study import MODELS
        from odeplm.grid import markdown_table

        for name, (objective, *_) in MODELS.items():
            print(f"#### {name}\n\n{markdown_table(grid(name), objective)}\n")
    else:
        raise app.UsageError(f"unknown --table {FLAGS.table!r}")


if __name__ == "__main__":
    app.run(main)

"""The grids of a saved checkpoint, from its directory to result files: accuracy
versus speed on its validation split (`accelerate`, for eval.accelerate and
eval.study) and classification accuracy after fine-tuning (`finetune`, for
eval.finetune). Computing the grid is `odeplm.grid`'s and `odeplm.finetune`'s;
writing it is `odeplm.report`'s; this module reads checkpoints and data and
says where results go.
"""

from __future__ import annotations

import os

import odeplm
from odeplm.data.labelled import load_labelled
from odeplm.data.pipeline import split_batches
from odeplm.evaluate import unigram_loss, validation_batches
from odeplm.finetune import accuracy, classification_inputs, finetune as finetune_classifier
from odeplm.grid import DEFAULT_SOLVERS, grid_points, run_grid
from odeplm.report import grid_table, markdown, write_outputs
from odeplm.solvers import SolverError


def parse_steps(values: list[str] | None) -> list[int] | None:
    """Step counts from a command line's comma-separated list (None: the default grid)."""
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise SolverError(f"step counts must be integers, got {values}") from None


def results_directory(checkpoint: str, out: str | None, name: str) -> str:
    """Where an evaluation of `checkpoint` writes: `out`, else `<workdir>/<name>` for a pre-training workdir."""
    if not os.path.isdir(checkpoint):
        raise odeplm.CheckpointError(f"no checkpoint directory {checkpoint}")
    if out is not None:
        return out
    if os.path.isdir(os.path.join(checkpoint, "checkpoints")):
        return os.path.join(checkpoint, name)
    entries = os.listdir(checkpoint)
    if os.path.basename(os.path.normpath(checkpoint)).isdigit() or any(e.isdigit() for e in entries):
        raise ValueError(f"{checkpoint} is a checkpoint directory, not a pre-training workdir; pass --out for the "
                         f"results")
    raise odeplm.CheckpointError(f"{checkpoint} is neither a pre-training workdir nor a checkpoint directory")


def _load_with_tokenizer(checkpoint: str, step: int | None = None) -> odeplm.Loaded:
    loaded = odeplm.load(checkpoint, step)
    if loaded.tokenizer is None:
        raise odeplm.CheckpointError(f"{checkpoint} holds no tokenizer, so its text cannot be read")
    return loaded


def accelerate(checkpoint: str, *, out: str | None = None, step: int | None = None, solvers=None, steps=None,
               extra=(), max_nfe: int | None = None, batches: int = 16, batch_size: int = 16, rounds: int = 10,
               dataset: str | None = None, data_dir: str | None = None) -> dict:
    """Runs the grid on a checkpoint and writes grid.json, grid.md and grid.png; returns the report."""
    out = results_directory(checkpoint, out, "accelerate")
    if batches < 1 or batch_size < 1 or rounds < 1:
        raise ValueError("batches, batch_size and rounds must be positive")
    loaded = _load_with_tokenizer(checkpoint, step)
    run = loaded.run
    dataset = dataset or run.dataset
    config = loaded.model.config
    split = split_batches(dataset, "validation", loaded.data_dir(data_dir), loaded.tokenizer, length=config.max_length,
                          batch_size=batch_size, objective=config.objective, seed=run.seed, shuffle=False)
    validation = validation_batches(split, batches)
    points = grid_points(loaded.model, solvers or DEFAULT_SOLVERS, steps, extra, max_nfe)
    rows = run_grid(loaded.model, points, validation, rounds)
    name = os.path.basename(os.path.normpath(checkpoint))
    report = {
        "title": f"{name} (step {loaded.step}): {config.objective} LM, depth {config.to_dict()['depth']}",
        "checkpoint": os.path.abspath(checkpoint), "step": loaded.step, "objective": config.objective,
        "model": config.to_dict(), "dataset": dataset, "batches": batches, "batch_size": batch_size,
        "rounds": rounds, "unigram_loss": unigram_loss(validation), "group_name": split.group_name, "points": rows,
        "markdown": grid_table(rows, config.objective, split.group_name),
    }
    report["outputs"] = write_outputs(report, out, "grid")
    return report


def finetune(checkpoint: str, *, task: str = "shakespeare_genre", out: str | None = None, solvers=None,
             steps=None, extra=(), epochs: int = 2, batch_size: int = 32, learning_rate: float = 1e-3,
             per_class: int = 1000, seed: int = 0, data_dir: str | None = None) -> dict:
    """Fine-tunes, scores every solve of the grid and writes finetune.json and finetune.md; returns the report."""
    out = results_directory(checkpoint, out, "finetune")
    loaded = _load_with_tokenizer(checkpoint)
    data = load_labelled(task, loaded.data_dir(data_dir), per_class=per_class, seed=seed)
    discretisation = loaded.run.discretisation
    classifier, losses = finetune_classifier(loaded.model, loaded.tokenizer, data, discretisation=discretisation,
                                             epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                             seed=seed)
    tokens, mask = classification_inputs(loaded.tokenizer, data.test_texts, loaded.model.config.max_length)
    rows = []
    for point in grid_points(loaded.model, solvers or DEFAULT_SOLVERS, steps, extra):
        if point.kind == "truncated":
            continue
        value, nfe = accuracy(classifier, tokens, mask, data.test_labels, solve=point.solves)
        rows.append({"label": point.label, "kind": point.kind, "solves": [str(s) for s in point.solves], "nfe": nfe,
                     "accuracy": value})
    majority = float(max((data.test_labels == k).mean() for k in range(len(data.label_names))))
    name = os.path.basename(os.path.normpath(checkpoint))
    report = {"title": f"{name}: {task} accuracy after fine-tuning", "checkpoint": os.path.abspath(checkpoint),
              "task": task, "labels": list(data.label_names), "train_examples": len(data.train_texts),
              "test_examples": len(data.test_texts), "majority_accuracy": majority,
              "discretisation": {"solver": discretisation.solver, "steps": list(discretisation.steps),
                                 "weights": list(discretisation.weights)},
              "epochs": epochs, "first_loss": losses[0], "last_loss": float(sum(losses[-10:]) / len(losses[-10:])),
              "points": rows,
              "markdown": markdown([("point", "l"), ("NFE", "r"), ("accuracy", "r")],
                                   ([r["label"], f"{r['nfe']:.0f}", f"{r['accuracy']:.4f}"] for r in rows))}
    report["outputs"] = write_outputs(report, out, "finetune")
    return report

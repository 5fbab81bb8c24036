"""The grids of a saved checkpoint, from its directory to result files: accuracy
versus speed on its validation split (`accelerate`, for eval.accelerate and
eval.study) and classification accuracy after fine-tuning (`finetune`, for
eval.finetune). Computing the grid is `odeplm.evaluation.grid`'s and `odeplm.training.finetune`'s;
writing it is `odeplm.evaluation.report`'s; this module reads checkpoints and data and
says where results go.
"""

from __future__ import annotations

import os

import odeplm
from odeplm.core.inputs import InputError
from odeplm.data.pipeline import split_batches
from odeplm.evaluation.grid import DEFAULT_SOLVERS, grid_points, run_grid
from odeplm.evaluation.point import unigram_loss, validation_batches
from odeplm.evaluation.report import grid_table, write_outputs


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
        raise odeplm.CheckpointError(f"{checkpoint} is a checkpoint directory, not a pre-training workdir; pass --out "
                                     f"for the results")
    raise odeplm.CheckpointError(f"{checkpoint} is neither a pre-training workdir nor a checkpoint directory")


def load_with_tokenizer(checkpoint: str, step: int | None = None) -> odeplm.Loaded:
    """`odeplm.load`, refusing a checkpoint whose text cannot be read."""
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
        raise InputError("batches, batch_size and rounds must be positive")
    loaded = load_with_tokenizer(checkpoint, step)
    run = loaded.run
    dataset = dataset or run.dataset
    config = loaded.model.config
    split = split_batches(dataset, "validation", loaded.data_dir(data_dir), loaded.tokenizer, length=config.max_length,
                          batch_size=batch_size, objective=config.objective, seed=run.seed, shuffle=False,
                          max_targets=config.masked_positions)
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

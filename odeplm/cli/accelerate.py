"""Accuracy versus speed of one checkpoint: a jitted grid over solver x step
count on the validation split, with full-depth and truncation baselines.

    python -m eval.accelerate --checkpoint runs/demo
    python -m eval.accelerate --checkpoint runs/demo --solvers euler,rk4 --steps 1,2,3,6 \
        --extra "bosh3:rtol=1e-2:atol=1e-2" --out /tmp/grid

Writes grid.json, grid.md and grid.png (quality against latency with the Pareto
front) to --out (default: <workdir>/accelerate) and prints the table. Step
counts are per segment, so a model of 4 segments at --steps 1 runs 4 steps.
"""

from __future__ import annotations

from absl import flags

from odeplm.cli import parse_steps, run
from odeplm.evaluation.checkpoint_grid import accelerate
from odeplm.evaluation.grid import DEFAULT_SOLVERS

flags.DEFINE_string("checkpoint", None, "pre-training workdir, checkpoint directory or step directory")
flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
flags.DEFINE_list("solvers", list(DEFAULT_SOLVERS), "solvers of the grid")
flags.DEFINE_list("steps", None, "step counts per segment (default: 1, 2, 3, 4, 6, 8, ... up to the training steps)")
flags.DEFINE_multi_string("extra", [], "further solve plans: one solve, or one per segment comma-separated")
flags.DEFINE_integer("max_nfe", None, "leave out solver x steps points costing more evaluations")
flags.DEFINE_integer("batches", 16, "validation batches each point is scored on")
flags.DEFINE_integer("batch_size", 16, "rows per batch")
flags.DEFINE_integer("rounds", 10, "timing rounds (every point runs once per round)")
flags.DEFINE_string("dataset", None, "dataset (default: the one the checkpoint was trained on)")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: the one of the checkpoint's run)")
flags.DEFINE_string("out", None, "output directory (default: <workdir>/accelerate)")
flags.mark_flags_as_required(["checkpoint"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    report = accelerate(
        FLAGS.checkpoint, out=FLAGS.out, step=FLAGS.step, solvers=FLAGS.solvers, steps=parse_steps(FLAGS.steps),
        extra=FLAGS.extra, max_nfe=FLAGS.max_nfe, batches=FLAGS.batches, batch_size=FLAGS.batch_size,
        rounds=FLAGS.rounds, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir)
    print(report["title"])
    print(report["markdown"])
    print("wrote", ", ".join(report["outputs"].values()))


def entry():
    run(main)

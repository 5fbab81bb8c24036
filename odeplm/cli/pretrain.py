"""Pre-trains a parameter-shared LM, then prints validation loss across solves.

    python -m train.pretrain --config configs/demo.py --workdir runs/demo
    python -m train.pretrain --config configs/tiny.py --workdir /tmp/t --config.model.width=64

Multi-host: pass --coordinator_address/--num_processes/--process_id, or nothing
on a TPU pod (jax.distributed discovers the topology).
"""

from __future__ import annotations

import json

import jax
from absl import flags

from odeplm.cli import config_flag, run

flags.DEFINE_string("workdir", None, "checkpoints, metrics and results go here")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs")
flags.DEFINE_integer("num_processes", None, "number of processes in a multi-process run")
flags.DEFINE_integer("process_id", None, "index of this process")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection (TPU pods)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.coordinator_address or FLAGS.distributed:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from flax import nnx

    from odeplm.evaluation.report import show_outputs, validation_table
    from odeplm.runs.paths import run_path
    from odeplm.training.trainer import Trainer

    with Trainer(FLAGS.config, FLAGS.workdir) as trainer:
        summary = trainer.run()
        if summary["preempted"] or not FLAGS.config.eval.solves:  # no solves: a run that only trains
            return
        model = nnx.merge(trainer.graphdef, trainer.state["params"])
        rows, table = validation_table(model, trainer.validation_set, FLAGS.config.eval.solves,
                                       group_name=trainer.validation_batches.group_name)
        if jax.process_index() == 0:
            print(table)
            print(show_outputs(model, trainer.tokenizer, trainer.validation_set[0], FLAGS.config.eval.solves))
            (run_path(FLAGS.workdir) / "validation.json").write_text(json.dumps(rows, indent=2))


def entry():
    run(main, flags_parser=config_flag.parse)

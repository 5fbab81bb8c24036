"""Fine-tunes a pre-trained checkpoint for sentence classification, then
reports test accuracy across solver x step count.

    python -m eval.finetune --checkpoint runs/study/masked_post_mix
    python -m eval.finetune --checkpoint runs/albert --task glue/sst2 --data_dir ~/tensorflow_datasets
    python -m eval.finetune --checkpoint runs/demo --task my_labels.tsv --solvers euler,rk4 --steps 1,2,3

Tasks: `shakespeare_genre` (default, from the bundled corpus), `sample` (the
shipped set), a CSV/TSV path or directory, or a prepared TFDS name (see
`odeplm.data.labelled`). Writes finetune.json and finetune.md to --out
(default: <workdir>/finetune).
"""

from __future__ import annotations

from absl import flags

from odeplm.cli import parse_steps, run
from odeplm.evaluation.grid import DEFAULT_SOLVERS
from odeplm.training.finetune import finetune_checkpoint

flags.DEFINE_string("checkpoint", None, "pre-training workdir, checkpoint directory or step directory")
flags.DEFINE_string("task", "shakespeare_genre", "shakespeare_genre, sample, a CSV/TSV path or a TFDS name")
flags.DEFINE_list("solvers", list(DEFAULT_SOLVERS), "solvers of the grid")
flags.DEFINE_list("steps", None, "step counts per segment (default: 1, 2, 3, 4, 6, 8, ... up to the training steps)")
flags.DEFINE_multi_string("extra", [], "further solve plans: one solve, or one per segment comma-separated")
flags.DEFINE_integer("epochs", 2, "passes over the training set")
flags.DEFINE_integer("batch_size", 32, "examples per step")
flags.DEFINE_float("learning_rate", 1e-3, "peak learning rate (warm-up over a tenth of training, cosine decay)")
flags.DEFINE_integer("per_class", 1000, "training examples per class for shakespeare_genre (a quarter as many test)")
flags.DEFINE_integer("seed", 0, "seed of the head's initialisation, the data order and the step counts drawn")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: the one of the checkpoint's run)")
flags.DEFINE_string("out", None, "output directory (default: <workdir>/finetune)")
flags.mark_flags_as_required(["checkpoint"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    report = finetune_checkpoint(
        FLAGS.checkpoint, task=FLAGS.task, out=FLAGS.out, solvers=FLAGS.solvers, steps=parse_steps(FLAGS.steps),
        extra=FLAGS.extra, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
        per_class=FLAGS.per_class, seed=FLAGS.seed, data_dir=FLAGS.data_dir)
    print(report["title"])
    print(f"{report['train_examples']} training and {report['test_examples']} test examples; majority class "
          f"{report['majority_accuracy']:.4f}; training loss {report['first_loss']:.3f} -> {report['last_loss']:.3f}")
    print(report["markdown"])


def entry():
    run(main)

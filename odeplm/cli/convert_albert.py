"""Converts a local Hugging Face ALBERT directory into an odeplm checkpoint.

    python -m eval.convert_albert --hf path/to/albert-base-v2 --out ckpt/albert-base-v2

`--hf` holds config.json and model.safetensors (or pytorch_model.bin, read as
tensors only); a spiece.model beside them becomes the checkpoint's tokenizer.
The result opens with `odeplm.load(out)` and runs at any (solver, steps).
"""

from __future__ import annotations

from absl import flags

from odeplm.cli import run

FLAGS = flags.FLAGS
flags.DEFINE_string("hf", None, "local Hugging Face ALBERT directory")
flags.DEFINE_string("out", None, "checkpoint directory to write (must not hold a checkpoint yet)")
flags.mark_flags_as_required(["hf", "out"])


def main(argv):
    del argv
    from odeplm.inference.albert import convert_to_checkpoint

    print(f"wrote {convert_to_checkpoint(FLAGS.hf, FLAGS.out)}")


def entry():
    run(main)

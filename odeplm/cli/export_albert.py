"""Exports an odeplm masked LM as a Hugging Face ALBERT directory.

    python -m eval.export_albert --checkpoint runs/albert --out hf/albert

`--checkpoint` is a workdir, its checkpoints/ or one step's directory; `--out`
must not exist or be empty. It receives config.json, model.safetensors and, where
the checkpoint has a SentencePiece tokenizer, spiece.model with its
tokenizer_config.json; `transformers.AlbertForMaskedLM.from_pretrained(out)` and
`AlbertModel.from_pretrained(out, add_pooling_layer=False)` load it (ALBERT's
pooler is not part of a language model). A model that ALBERT cannot express
(causal, Pre-LN, time-aware, a prelude or coda, steps of size tau != 1) is
refused in one line naming what does not fit, and nothing is written.
"""

from __future__ import annotations

from absl import flags

from odeplm.cli import run

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "odeplm checkpoint: a workdir, its checkpoints/ or one step")
flags.DEFINE_string("out", None, "Hugging Face directory to write (must not exist or be empty)")
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
    del argv
    from odeplm.inference.albert import export_albert

    print(f"wrote {export_albert(FLAGS.checkpoint, FLAGS.out)}")


def entry():
    run(main)

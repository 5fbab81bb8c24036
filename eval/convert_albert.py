"""Converts a local Hugging Face ALBERT directory into an odeplm checkpoint.

    python -m eval.convert_albert --hf path/to/albert-base-v2 --out ckpt/albert-base-v2

`--hf` holds config.json and model.safetensors (or pytorch_model.bin, read as
tensors only); a spiece.model beside them becomes the checkpoint's tokenizer.
The result opens with `odeplm.load(out)` and runs at any (solver, steps).
"""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("hf", None, "local Hugging Face ALBERT directory")
flags.DEFINE_string("out", None, "checkpoint directory to write (must not hold a checkpoint yet)")
flags.mark_flags_as_required(["hf", "out"])


def convert_directory(hf: str, out: str) -> str:
    """Writes step 0 of a new checkpoint under `out`; returns its path."""
    from flax import nnx

    from odeplm.albert import load_albert
    from odeplm.checkpoint import Checkpointer, CheckpointError
    from odeplm.data.tokenizer import Tokenizer

    if os.path.isdir(out) and os.listdir(out):
        raise CheckpointError(f"{out} is not empty; refusing to write over it")
    model = load_albert(hf)
    tokenizer = None
    spiece = os.path.join(hf, "spiece.model")
    if os.path.exists(spiece):
        with open(spiece, "rb") as f:
            tokenizer = Tokenizer(f.read()).to_json()
    checkpointer = Checkpointer(out, async_save=False)
    config = {"model": model.config.to_dict(), "source": {"format": "huggingface-albert", "path": os.path.abspath(hf)}}
    checkpointer.save(0, params=nnx.to_pure_dict(nnx.state(model)), config=config, tokenizer=tokenizer)
    checkpointer.close()
    return os.path.join(os.path.abspath(out), "0")


def main(argv):
    del argv
    print(f"wrote {convert_directory(FLAGS.hf, FLAGS.out)}")


if __name__ == "__main__":
    app.run(main)

"""`odeplm.load`: a ready model, its tokenizer and config from a checkpoint.

Accepts a pre-training workdir, its `checkpoints/` directory, one step's
directory, or the output of a conversion. Only parameters, config and tokenizer
are read (never the optimizer), onto this process's first device.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
from flax import nnx

from odeplm.checkpoint import Checkpointer, CheckpointError
from odeplm.config import ModelConfig
from odeplm.data.tokenizer import Tokenizer
from odeplm.model import LanguageModel


class Loaded(NamedTuple):
    model: LanguageModel
    tokenizer: Tokenizer | None  # None where the checkpoint holds none (e.g. converted without spiece.model)
    config: dict  # everything saved with the checkpoint; config["model"] is the ModelConfig
    step: int


def load(path: str, step: int | None = None) -> Loaded:
    """Restores the newest checkpoint under `path` (or `step`) as a `LanguageModel`."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    elif os.path.basename(path).isdigit() and step is None:
        path, step = os.path.dirname(path), int(os.path.basename(path))
    checkpointer = Checkpointer(path, async_save=False, create=False)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint under {path}")
        if step is not None and step not in steps:
            raise CheckpointError(f"no checkpoint {step} under {path}; steps: {steps}")
        saved = checkpointer.read_config(step if step is not None else steps[-1])
        try:
            config = ModelConfig.from_dict(saved["model"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint under {path} holds no valid model config: {error}") from None
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0))))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                              nnx.to_pure_dict(abstract))
        restored = checkpointer.restore(target, model_config=config.to_dict(), step=step)
    finally:
        checkpointer.close()
    return Loaded(nnx.merge(graphdef, restored["params"]), restored["tokenizer"], restored["config"],
                  restored["step"])

"""`odeplm.load`: a ready model, its tokenizer and config from a checkpoint.

Accepts a pre-training workdir, its `checkpoints/` directory, one step's
directory, or the output of a conversion. Only parameters, config and tokenizer
are read (never the optimizer), onto this process's first device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import numpy as np
from flax import nnx

from odeplm.core.config import ModelConfig
from odeplm.core.model import LanguageModel, abstract_model
from odeplm.data.tokenizer import Symbols, Tokenizer, tokenizer_from_json
from odeplm.inference import scoring
from odeplm.runs.checkpoint import Checkpointer, CheckpointError
from odeplm.runs.paths import run_path

if TYPE_CHECKING:
    from odeplm.runs.settings import TrainSettings


class Loaded(NamedTuple):
    """A restored model with what it needs to read text; every method takes a `solve`
    (None: the training discretisation, `"rk4:2"`, or one solve per segment)."""

    model: LanguageModel
    tokenizer: Tokenizer | Symbols | None  # None where the checkpoint holds none (e.g. converted without spiece.model)
    config: dict  # everything saved with the checkpoint; config["model"] is the ModelConfig
    step: int

    def score(self, texts: Sequence[str], *, solve=None) -> list[scoring.Score]:
        """Log-likelihood and perplexity per text (pseudo-log-likelihood for masked models)."""
        return scoring.score(self.model, self._tokenizer(), texts, solve=solve)

    def fill_mask(self, text: str, *, solve=None, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top predictions for each `[MASK]` in `text` (masked models)."""
        return scoring.fill_mask(self.model, self._tokenizer(), text, solve=solve, top_k=top_k)

    def encode(self, texts: Sequence[str], *, solve=None) -> np.ndarray:
        """One vector per text: final hidden states averaged over its tokens."""
        return scoring.encode(self.model, self._tokenizer(), texts, solve=solve)

    @property
    def run(self) -> TrainSettings:
        """The settings the checkpoint was trained with, typed and read over today's
        defaults (all defaults for a converted model, which was trained elsewhere)."""
        from odeplm.runs.settings import TrainSettings  # it reads TFDS options: imported only when asked

        return TrainSettings.from_saved(self.config.get("run", {}))

    def data_dir(self, override: str | None = None) -> str:
        """The TFDS data directory: `override`, else the one the checkpoint's run used."""
        return os.path.expanduser(override) if override else self.run.data_dir

    def _tokenizer(self) -> Tokenizer | Symbols:
        if self.tokenizer is None:
            raise CheckpointError("this checkpoint holds no tokenizer; pass token ids to odeplm.forward instead")
        return self.tokenizer


def load(path: str, step: int | None = None) -> Loaded:
    """Restores the newest checkpoint under `path` (or `step`) as a `LanguageModel`.

    Reading never changes the directory: a damaged step raises `CheckpointError`
    naming it, and an older one can be asked for with `step`.
    """
    path = run_path(path)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    elif path.name.isdigit() and step is None:
        path, step = path.parent, int(path.name)
    checkpointer = Checkpointer(path, async_save=False, create=False)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint under {path}")
        if step is not None and step not in steps:
            raise CheckpointError(f"no checkpoint {step} under {path}; steps: {steps}")
        step = steps[-1] if step is None else step  # read-only: a damaged step is reported, never moved aside
        saved = checkpointer.read_config(step)
        try:
            config = ModelConfig.from_dict(saved["model"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint under {path} holds no valid model config: {error}") from None
        graphdef, abstract = abstract_model(config)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                              nnx.to_pure_dict(abstract))
        restored = checkpointer.restore(target, model_config=config.architecture(), step=step)
    finally:
        checkpointer.close()
    tokenizer = None if restored["tokenizer"] is None else tokenizer_from_json(restored["tokenizer"])
    return Loaded(nnx.merge(graphdef, restored["params"]), tokenizer, restored["config"], restored["step"])

"""odeplm: parameter-shared language models read as neural ODEs, fast at inference.

The package is layered, each folder importing only the ones before it:

- `core`: the model (config, block, vector field, solvers, the model, losses, FLOPs);
- `data`: corpora and tasks as TFDS datasets, tokenizers, prepared token files, batches;
- `runs`: what a run is and keeps (settings, recipe, workdir paths, lock, checkpoints);
- `inference`: loading a checkpoint, generation, text scoring, ALBERT conversion;
- `evaluation`: the one evaluation step, timing, the accuracy-versus-speed grid, reports;
- `training`: the trainer, the sharded train step, the ahead-of-time proof, fine-tuning;
- `cli`: the commands.

`import odeplm` brings the model core only; `odeplm.load`, `Loaded`,
`CheckpointError`, `generate` and `Sampling` import their layers when first used.
On a machine without TPU chips or another accelerator plugin, and with no platform
asked for, it points JAX at the CPU so that libtpu's probe prints nothing
(`odeplm.core.platforms`; set `JAX_PLATFORMS` to opt out).
"""

import importlib

from odeplm.core.platforms import cpu_unless_asked

cpu_unless_asked()  # before anything starts JAX's backends

from odeplm.core.block import Block
from odeplm.core.config import (
    ConfigError,
    ModelConfig,
    Segment,
    format_depth,
    fully_shared,
    parse_depth,
    partially_shared,
    sandwich,
    unshared,
)
from odeplm.core.errors import OdeplmError, TrainingError
from odeplm.core.inputs import InputError, check_inputs
from odeplm.core.model import Encoder, LanguageModel, ModelOutput, SequenceClassifier, forward
from odeplm.core.ode import integrate, vector_field
from odeplm.core.solvers import RK4, SOLVERS, Solve, SolverError, parse_plan, plan_solves

__all__ = [
    "Block",
    "CheckpointError",
    "ConfigError",
    "Encoder",
    "InputError",
    "LanguageModel",
    "Loaded",
    "ModelConfig",
    "ModelOutput",
    "OdeplmError",
    "RK4",
    "SOLVERS",
    "Sampling",
    "Segment",
    "SequenceClassifier",
    "Solve",
    "SolverError",
    "TrainingError",
    "check_inputs",
    "format_depth",
    "forward",
    "fully_shared",
    "generate",
    "integrate",
    "load",
    "parse_depth",
    "parse_plan",
    "partially_shared",
    "plan_solves",
    "sandwich",
    "unshared",
    "vector_field",
]

_LAZY = {"CheckpointError": "odeplm.runs.checkpoint", "Loaded": "odeplm.inference.loading",
         "load": "odeplm.inference.loading", "Sampling": "odeplm.inference.generate",
         "generate": "odeplm.inference.generate"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'odeplm' has no attribute {name!r}")

"""odeplm: parameter-shared language models read as neural ODEs, fast at inference.

`import odeplm` brings the model core only (config, block, vector field,
solvers, model); `odeplm.load`, `Loaded` and `CheckpointError` import orbax
and the tokenizer when first used.
"""

import importlib

from odeplm.block import Block
from odeplm.config import (
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
from odeplm.inputs import InputError, check_inputs
from odeplm.model import Encoder, LanguageModel, ModelOutput, SequenceClassifier, forward
from odeplm.ode import integrate, vector_field
from odeplm.solvers import RK4, SOLVERS, Solve, SolverError, parse_plan, plan_solves

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
    "RK4",
    "SOLVERS",
    "Segment",
    "SequenceClassifier",
    "Solve",
    "SolverError",
    "check_inputs",
    "format_depth",
    "forward",
    "fully_shared",
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

_LAZY = {"CheckpointError": "odeplm.checkpoint", "Loaded": "odeplm.loading", "load": "odeplm.loading"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'odeplm' has no attribute {name!r}")

"""odeplm: parameter-shared language models read as neural ODEs, fast at inference."""

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
from odeplm.checkpoint import CheckpointError
from odeplm.inputs import InputError, check_inputs
from odeplm.loading import Loaded, load
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

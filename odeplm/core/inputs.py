"""Host-side checks of model inputs, run before any device work.

Under a trace (a caller's own `jax.jit`) values are unknown, so only shapes
are checked there.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from odeplm.core.config import ModelConfig
from odeplm.core.errors import OdeplmError
from odeplm.core.special_ids import PAD


class InputError(OdeplmError):
    """Model inputs that do not fit the model: wrong shape, ids out of range, too long."""


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def padded_rows(rows: Sequence[Sequence[int]], length: int | None = None, *,
                left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token rows of different lengths as one [rows, length] array (length: the longest
    row's by default), padded on the right (or the left) with PAD, and the mask of real tokens."""
    length = max(map(len, rows)) if length is None else length
    tokens = np.full((len(rows), length), PAD, np.int32)
    mask = np.zeros(tokens.shape, bool)
    for i, row in enumerate(rows):
        place = slice(length - len(row), length) if left else slice(0, len(row))
        tokens[i, place], mask[i, place] = row, True
    return tokens, mask


def check_inputs(config: ModelConfig, tokens, padding_mask=None, token_types=None) -> None:
    try:
        shape = np.shape(tokens)
    except ValueError:  # numpy refuses ragged nested lists
        raise InputError("tokens must be a rectangular [batch, seq] array; rows of different lengths need "
                         "padding and a padding_mask") from None
    if len(shape) != 2:
        raise InputError(f"tokens must have shape [batch, seq], got {shape}")
    if shape[0] == 0:
        raise InputError("the batch is empty")
    if shape[1] > config.max_length:
        raise InputError(f"sequence length {shape[1]} exceeds max_length {config.max_length}")
    if shape[1] == 0:
        raise InputError("sequences are empty")
    if not np.issubdtype(np.asarray(tokens).dtype if _concrete(tokens) else tokens.dtype, np.integer):
        raise InputError(f"tokens must be integers, got dtype {tokens.dtype}")
    if _concrete(tokens):
        values = np.asarray(tokens)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= config.vocab_size:
            raise InputError(f"token ids must lie in [0, {config.vocab_size}), got ids in [{low}, {high}]")
    for name, array in (("padding_mask", padding_mask), ("token_types", token_types)):
        if array is not None and np.shape(array) != shape:
            raise InputError(f"{name} has shape {np.shape(array)}, tokens have {shape}")
    if token_types is not None:
        if not config.type_vocab_size:
            raise InputError("token_types given but the model has no token-type embeddings (type_vocab_size=0)")
        if _concrete(token_types):
            values = np.asarray(token_types)
            if values.min() < 0 or values.max() >= config.type_vocab_size:
                raise InputError(f"token_types must lie in [0, {config.type_vocab_size})")

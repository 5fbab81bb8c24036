"""Text in, numbers out: score text, fill masks and encode, at any solve.

Each function tokenizes, right-pads to a multiple of 32 tokens (so a handful of
shapes compile) and runs `odeplm.core.model.forward`, which compiles once per
(solve plan, shape). A causal model scores a text as the document start the
training stream shows it: after an end-of-document token. A masked model
scores by pseudo-log-likelihood (each token masked in turn, Salazar et al.,
2020).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from odeplm.core.inputs import InputError, padded_rows
from odeplm.core.model import LanguageModel, forward
from odeplm.core.special_ids import EOS, MASK
from odeplm.data.tokenizer import Tokenizer

MASK_MARKER = "[MASK]"
_BUCKET = 32


class Score(NamedTuple):
    tokens: int  # tokens scored
    log_likelihood: float  # nats, summed over the tokens
    perplexity: float  # exp(-log_likelihood / tokens)


def _padded(rows: Sequence[Sequence[int]], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    longest = max(len(r) for r in rows)
    if longest > max_length:
        raise InputError(f"a text gives {longest} tokens; the model takes at most {max_length}")
    return padded_rows(rows, min(max_length, -(-longest // _BUCKET) * _BUCKET))


def _log_probs(model: LanguageModel, rows, solve, batch_size: int = 64) -> np.ndarray:
    """Log-softmax over the vocabulary at every position of every row, [rows, length, vocab]."""
    tokens, mask = _padded(rows, model.config.max_length)
    out = [np.asarray(jax.nn.log_softmax(forward(model, tokens[i : i + batch_size], mask[i : i + batch_size],
                                                 solve=solve).logits.astype("float32"), axis=-1))
           for i in range(0, len(tokens), batch_size)]
    return np.concatenate(out)


def _encode_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if isinstance(texts, str):
        raise TypeError("expected a sequence of texts, got one string; wrap it in a list")
    ids = [tokenizer.encode(t) for t in texts]
    if not ids or any(not row for row in ids):
        raise InputError("every text must give at least one token")
    return ids


def score(model: LanguageModel, tokenizer: Tokenizer, texts: Sequence[str], *, solve=None) -> list[Score]:
    """Log-likelihood and perplexity of each text under the model at `solve`."""
    ids = _encode_texts(tokenizer, texts)
    if model.config.objective == "causal":
        rows = [[EOS] + row for row in ids]
        log_probs = _log_probs(model, [r[:-1] for r in rows], solve)
        totals = [float(log_probs[i, np.arange(len(row)), row].sum()) for i, row in enumerate(ids)]
    else:
        masked_rows, owners = [], []
        for i, row in enumerate(ids):
            for position in range(len(row)):
                masked_rows.append(row[:position] + [MASK] + row[position + 1:])
                owners.append((i, position))
        log_probs = _log_probs(model, masked_rows, solve)
        totals = [0.0] * len(ids)
        for k, (i, position) in enumerate(owners):
            totals[i] += float(log_probs[k, position, ids[i][position]])
    return [Score(len(row), total, float(np.exp(-total / len(row)))) for row, total in zip(ids, totals)]


def fill_mask(model: LanguageModel, tokenizer: Tokenizer, text: str, *, solve=None,
              top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The `top_k` (piece, probability) predictions for each `[MASK]` in `text`, in order."""
    if model.config.objective != "masked":
        raise InputError("fill_mask needs a masked LM; this model is causal")
    parts = text.split(MASK_MARKER)
    if len(parts) < 2:
        raise InputError(f"the text holds no {MASK_MARKER}")
    row: list[int] = []
    positions = []
    for index, part in enumerate(parts):
        row += tokenizer.encode(part) if part else []
        if index < len(parts) - 1:
            positions.append(len(row))
            row.append(MASK)
    log_probs = _log_probs(model, [row], solve)[0]
    predictions = []
    for position in positions:
        best = np.argsort(-log_probs[position])[:top_k]
        predictions.append([(tokenizer.decode([int(t)]), float(np.exp(log_probs[position, t]))) for t in best])
    return predictions


def encode(model: LanguageModel, tokenizer: Tokenizer, texts: Sequence[str], *, solve=None,
           batch_size: int = 64) -> np.ndarray:
    """One vector per text: final hidden states averaged over its tokens, [texts, width]."""
    ids = _encode_texts(tokenizer, texts)
    tokens, mask = _padded(ids, model.config.max_length)
    vectors = []
    for i in range(0, len(tokens), batch_size):
        hidden = np.asarray(forward(model, tokens[i : i + batch_size], mask[i : i + batch_size], solve=solve).hidden,
                            np.float32)
        weights = mask[i : i + batch_size, :, None].astype(np.float32)
        vectors.append((hidden * weights).sum(1) / weights.sum(1))
    return np.concatenate(vectors)

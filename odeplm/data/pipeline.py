"""Token streams packed into fixed-length rows, and batches indexed by step.

The batch at step s depends only on (seed, s, process count, process index):
rows are drawn from a per-epoch permutation of the whole split, each process
takes its contiguous slice of the global batch, and masking is seeded by
(seed, epoch, row). Resuming at step s needs no iterator state.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from odeplm.data.corpus import text_source
from odeplm.data.tokenizer import EOS, MASK, PAD, Tokenizer


def token_stream(texts, tokenizer: Tokenizer, cache_path: str | None = None) -> np.ndarray:
    """Every document's tokens followed by EOS, concatenated; cached as .npy when a path is given."""
    if cache_path and os.path.exists(cache_path):
        return np.load(cache_path, allow_pickle=False)
    pieces = [np.asarray(tokenizer.encode(texts[i]) + [EOS], np.int32) for i in range(len(texts))]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    if cache_path:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        np.save(cache_path + ".tmp.npy", stream)
        os.replace(cache_path + ".tmp.npy", cache_path)
    return stream


def pack(stream: np.ndarray, length: int) -> np.ndarray:
    """Rows of `length + 1` tokens, overlapping by one, so each row gives `length`
    inputs and their next-token targets; the last row is padded."""
    rows = max(1, -(-(len(stream) - 1) // length))
    padded = np.full(rows * length + 1, PAD, np.int32)
    padded[: len(stream)] = stream[: len(padded)]
    index = np.arange(rows)[:, None] * length + np.arange(length + 1)[None]
    return padded[index]


@dataclasses.dataclass(frozen=True)
class Batches:
    """Step-indexed batches over packed rows for a masked or causal objective."""

    rows: np.ndarray  # [num_rows, length + 1]
    global_batch: int
    objective: str
    vocab_size: int
    seed: int = 0
    mask_rate: float = 0.15
    shuffle: bool = True

    def __post_init__(self):
        if self.global_batch < 1:
            raise ValueError(f"global_batch must be positive, got {self.global_batch}")
        if len(self.rows) < 1:
            raise ValueError("no rows to draw batches from")

    def row_ids(self, step: int) -> np.ndarray:
        """Global row ids of the batch at `step` (epochs permuted by seed and epoch)."""
        positions = step * self.global_batch + np.arange(self.global_batch)
        epochs, offsets = np.divmod(positions, len(self.rows))
        ids = np.empty_like(positions)
        for epoch in np.unique(epochs):
            order = (np.random.default_rng([self.seed, int(epoch)]).permutation(len(self.rows))
                     if self.shuffle else np.arange(len(self.rows)))
            ids[epochs == epoch] = order[offsets[epochs == epoch]]
        return np.stack([ids, epochs], axis=1)

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's slice of the global batch at `step`."""
        if self.global_batch % process_count:
            raise ValueError(f"global batch {self.global_batch} does not split over {process_count} processes")
        local = self.global_batch // process_count
        ids = self.row_ids(step)[process_index * local : (process_index + 1) * local]
        rows = self.rows[ids[:, 0]]
        if self.objective == "causal":
            inputs, targets = rows[:, :-1], rows[:, 1:]
            return {"tokens": inputs, "padding_mask": inputs != PAD, "targets": targets,
                    "weights": (targets != PAD).astype(np.float32)}
        tokens = rows[:, :-1]
        masked = [self._mask(row, row_id, epoch) for row, (row_id, epoch) in zip(tokens, ids)]
        inputs, weights = (np.stack(x) for x in zip(*masked))
        return {"tokens": inputs, "padding_mask": tokens != PAD, "targets": tokens, "weights": weights}

    def _mask(self, row: np.ndarray, row_id: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """BERT masking: `mask_rate` of real tokens are targets; of those 80% become
        [MASK], 10% a random token, 10% stay. Padding is never chosen."""
        rng = np.random.default_rng([self.seed, int(epoch), int(row_id), 1])
        chosen = (rng.random(row.shape) < self.mask_rate) & (row != PAD)
        action = rng.random(row.shape)
        random_tokens = rng.integers(MASK + 1, self.vocab_size, row.shape)
        inputs = np.where(chosen & (action < 0.8), MASK, row)
        inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
        return inputs.astype(np.int32), chosen.astype(np.float32)


def split_batches(dataset: str, split: str, data_dir: str, tokenizer: Tokenizer, *, length: int, batch_size: int,
                  objective: str, seed: int = 0, shuffle: bool) -> Batches:
    """Batches over one split of a dataset (see `text_source`), its tokens cached
    under `data_dir` by the tokenizer's fingerprint."""
    texts = text_source(dataset, split, data_dir)
    name = dataset.replace("/", "_").replace(":", "_")
    cache = os.path.join(data_dir, "odeplm_tokens", f"{name}-{split}-{tokenizer.fingerprint}.npy")
    rows = pack(token_stream(texts, tokenizer, cache), length)
    return Batches(rows, batch_size, objective, tokenizer.vocab_size, seed=seed, shuffle=shuffle)

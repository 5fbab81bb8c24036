"""Step-indexed batches of token windows or task examples, read through grain.

The batch at step s depends only on (seed, s): grain's index shuffle gives a
fresh permutation of the records each epoch without materialising it, global
position s * batch + j holds the j-th record of step s, and masking is seeded by
(seed, position). Each process reads only its contiguous slice of a step's
batch, so resuming, or changing the host count, replays the same global batches.

A window of text is the objective's to read (next-token targets, or BERT
masking); an example carries its own targets, loss weights and group, which
every objective keeps as they are (a masked model then reads the whole
unmasked sequence).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grain
import numpy as np

from odeplm.core.config import ConfigError
from odeplm.core.special_ids import MASK, PAD
from odeplm.data import DataError
from odeplm.data.blocks import ShuffledBlocks
from odeplm.data.prepared import ExampleRecords, TokenFiles, TokenWindows, prepare_split
from odeplm.data.sources import builds_locally
from odeplm.data.tokenizer import Symbols, Tokenizer


@dataclasses.dataclass(frozen=True, eq=False)
class Batches:
    """Batches over windows of `length + 1` tokens (`TokenWindows`, or an array of
    rows: anything indexed by an array of window ids; or `ShuffledBlocks`, which
    keeps its own order, indexed by global position) for a masked or causal
    objective, or over a task's examples (`ExampleRecords`); `group_name` says what
    the examples' groups count (None: no groups). A masked objective keeps at most
    `max_targets` targets per row, the first chosen (None: no cap), so that a
    model decoding that many positions (`ModelConfig.masked_positions`) scores them all."""

    windows: TokenWindows | ExampleRecords | ShuffledBlocks | np.ndarray
    global_batch: int
    objective: str
    vocab_size: int
    seed: int = 0
    mask_rate: float = 0.15
    max_targets: int | None = None
    shuffle: bool = True
    group_name: str | None = None

    def __post_init__(self):
        if self.global_batch < 1:
            raise DataError(f"global_batch must be positive, got {self.global_batch}")
        if len(self.windows) < 1:
            raise DataError("no windows to draw batches from")

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's slice of the global batch at `step`."""
        return self._dataset(self._local(process_count))[step * process_count + process_index]

    def iterate(self, start_step: int, process_index: int = 0, process_count: int = 1, *, threads: int = 2,
                prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
        """This process's slices from `start_step` on, read ahead by background threads."""
        dataset = self._dataset(self._local(process_count))[start_step * process_count + process_index::process_count]
        return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))

    def _local(self, process_count: int) -> int:
        if self.global_batch % process_count:
            raise DataError(f"global batch {self.global_batch} does not split over {process_count} processes")
        return self.global_batch // process_count

    def _dataset(self, local: int) -> grain.MapDataset:
        """Element k: the windows at global positions [k * local, (k + 1) * local),
        read in one batched call."""
        order = grain.MapDataset.range(len(self.windows))
        if isinstance(self.windows, ShuffledBlocks):
            return order.repeat().batch(local, batch_fn=np.array).map_with_index(
                lambda k, _: self._finish(self.windows.rows(k * local + np.arange(local)), k * local))
        if self.shuffle:
            order = order.shuffle(seed=self.seed)
        indices = order.repeat().batch(local, batch_fn=np.array)
        return indices.map_with_index(lambda k, ids: self._finish(self.windows[ids], k * local))

    def _finish(self, rows: np.ndarray | dict, first_position: int) -> dict[str, np.ndarray]:
        if isinstance(rows, dict):  # examples with their own targets and weights
            return {**rows, "padding_mask": rows["tokens"] != PAD}
        if self.objective == "causal":
            inputs, targets = rows[:, :-1], rows[:, 1:]
            return {"tokens": inputs, "padding_mask": inputs != PAD, "targets": targets,
                    "weights": (targets != PAD).astype(np.float32)}
        tokens = rows[:, :-1]
        masked = [self._mask(row, first_position + j) for j, row in enumerate(tokens)]
        inputs, weights = (np.stack(x) for x in zip(*masked))
        return {"tokens": inputs, "padding_mask": tokens != PAD, "targets": tokens, "weights": weights}

    def _mask(self, row: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        """BERT masking: `mask_rate` of real tokens are targets; of those 80% become
        [MASK], 10% a random token, 10% stay. Padding is never chosen."""
        rng = np.random.default_rng([self.seed, position, 1])
        chosen = (rng.random(row.shape) < self.mask_rate) & (row != PAD)
        if self.max_targets is not None:
            chosen &= np.cumsum(chosen) <= self.max_targets
        action = rng.random(row.shape)
        random_tokens = rng.integers(MASK + 1, self.vocab_size, row.shape)
        inputs = np.where(chosen & (action < 0.8), MASK, row)
        inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
        return inputs.astype(np.int32), chosen.astype(np.float32)


def split_batches(dataset: str, split: str, data_dir: str, tokenizer: Tokenizer | Symbols, *, length: int,
                  batch_size: int, objective: str, seed: int = 0, shuffle: bool, index: str = "offloaded",
                  shuffle_blocks: int = 0, max_targets: int | None = None) -> Batches:
    """Batches over one prepared split (see `odeplm.data.prepared`); our own
    local datasets are prepared on first use. A shuffled text split is drawn
    `shuffle_blocks` blocks at a time (`odeplm.data.blocks`) when that is
    positive, else uniformly through the record index."""
    files = (prepare_split(dataset, split, data_dir, tokenizer) if builds_locally(dataset)
             else TokenFiles.open(dataset, split, data_dir, tokenizer))
    if shuffle and shuffle_blocks:
        if files.shard_examples:
            raise ConfigError("data.shuffle_blocks", f"applies to text; {dataset!r} is a task of examples, "
                                                     f"drawn one record each")
        windows = ShuffledBlocks(files, length, seed=seed, group=shuffle_blocks)
    else:
        windows = files.records(length, index)
    return Batches(windows, batch_size, objective, tokenizer.vocab_size, seed=seed, max_targets=max_targets,
                   shuffle=shuffle, group_name=files.group_name)

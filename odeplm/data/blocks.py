"""Training windows drawn a few blocks of the token stream at a time, so that a
reader at corpus scale looks no record up and holds no record index beyond the
shard it is reading.

The split's windows (numbered as `TokenWindows` numbers them) are cut into
blocks of `block_tokens` tokens' worth. Each epoch permutes the blocks, takes
them `group` at a time, and permutes the windows within each group; the
permutations are seeded by (seed, epoch) and (seed, epoch, group), so the window
at a global position depends only on (seed, position), and resuming or
changing the process count replays the same batches, as with the uniform order.
A group's blocks are read whole, one sequential read each, and kept while its
windows are served: memory is bounded by the groups held (`KEPT_GROUPS`), not
by the corpus. The price is locality: a batch mixes `group` stretches of the
corpus rather than the whole of it, as a shuffle buffer over interleaved shards
does.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from odeplm.data import DataError
from odeplm.data.prepared import RECORD_TOKENS, TokenFiles

BLOCK_TOKENS = 256 * RECORD_TOKENS  # 1 Mi tokens: 2 MiB of uint16 ids, 256 records read in one sequence
KEPT_GROUPS = 2  # a batch can straddle two groups


class ShuffledBlocks:
    """The windows of `length` tokens (and the next token) of a prepared split, in
    the block-shuffled order: `rows(positions)` gives the windows at global
    positions (position p of epoch e is e * len(self) + p)."""

    def __init__(self, files: TokenFiles, length: int, *, seed: int, group: int, block_tokens: int = BLOCK_TOKENS):
        if group < 1:
            raise DataError(f"a shuffle group needs at least one block, got {group}")
        self.files, self.length, self.seed, self.group = files, length, seed, group
        self.count = files.window_count(length)
        self.block_windows = max(1, block_tokens // length)
        self.blocks = -(-self.count // self.block_windows)
        self._lock, self._loading = threading.Lock(), threading.Lock()  # reader threads share the blocks
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, block order, group starts)
        self._groups: collections.OrderedDict = collections.OrderedDict()  # (epoch, group) -> (starts, tokens)

    def __len__(self) -> int:
        return self.count

    def window_ids(self, positions) -> np.ndarray:
        """The window (in `TokenWindows`' numbering) at each global position."""
        out = np.empty(len(positions), np.int64)
        for epoch, group, where, offsets in self._locate(positions):
            out[where] = self._windows(epoch, group)[offsets]
        return out

    def rows(self, positions) -> np.ndarray:
        """[n, length + 1] int32: the windows at these global positions."""
        out = np.empty((len(positions), self.length + 1), np.int32)
        for epoch, group, where, offsets in self._locate(positions):
            starts, tokens = self._loaded(epoch, group)
            out[where] = tokens[starts[offsets][:, None] + np.arange(self.length + 1)]
        return out

    def _locate(self, positions):
        """(epoch, group, indices into positions, offsets within the group) per group the positions fall in."""
        epochs, within = np.divmod(np.asarray(positions, np.int64), self.count)
        for epoch in np.unique(epochs):
            in_epoch = np.flatnonzero(epochs == epoch)
            starts = self._order(int(epoch))[1]
            groups = np.searchsorted(starts, within[in_epoch], side="right") - 1
            for group in np.unique(groups):
                where = in_epoch[groups == group]
                yield int(epoch), int(group), where, within[where] - starts[group]

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's block order and the first position of each of its groups."""
        with self._lock:
            if self._epoch is None or self._epoch[0] != epoch:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.blocks)
                sizes = np.minimum(self.block_windows, self.count - order * self.block_windows)
                group_sizes = np.add.reduceat(sizes, np.arange(0, self.blocks, self.group))
                self._epoch = (epoch, order, np.concatenate([[0], np.cumsum(group_sizes)]))
            return self._epoch[1], self._epoch[2]

    def _blocks(self, epoch: int, group: int) -> tuple[np.ndarray, np.ndarray]:
        """The first and one-past-last window of each block in the group, in the stream's order."""
        firsts = np.sort(self._order(epoch)[0][group * self.group:(group + 1) * self.group]) * self.block_windows
        return firsts, np.minimum(firsts + self.block_windows, self.count)

    def _windows(self, epoch: int, group: int) -> np.ndarray:
        """The group's windows in their shuffled order."""
        ids = np.concatenate([np.arange(a, b) for a, b in zip(*self._blocks(epoch, group))])
        return ids[np.random.default_rng([self.seed, epoch, group]).permutation(len(ids))]

    def _loaded(self, epoch: int, group: int) -> tuple[np.ndarray, np.ndarray]:
        """(where each of the group's shuffled windows starts in its tokens, the tokens): each block's
        windows and the token after them, read in sequence once and kept while among the last used."""
        with self._loading:
            key = (epoch, group)
            if key not in self._groups:
                while len(self._groups) >= KEPT_GROUPS:  # room first: at most KEPT_GROUPS groups are held
                    self._groups.popitem(last=False)
                firsts, lasts = self._blocks(epoch, group)
                offsets = np.concatenate([[0], np.cumsum((lasts - firsts) * self.length + 1)])
                tokens = np.empty(offsets[-1], self.files.dtype)
                for first, last, offset in zip(firsts, lasts, offsets):
                    tokens[offset:offset + (last - first) * self.length + 1] = self.files.read_tokens(
                        first * self.length, last * self.length + 1)
                ids = self._windows(epoch, group)
                block = np.searchsorted(firsts, ids, side="right") - 1
                self._groups[key] = (offsets[block] + (ids - firsts[block]) * self.length, tokens)
            self._groups.move_to_end(key)
            return self._groups[key]

"""Synthetic tasks made as data: k-hop induction (Sanford, Hsu & Telgarsky 2024,
*Transformers, parallel computation, and logarithmic depth*), a task where
depth pays: an L-layer transformer follows about 2^(L-2) hops.

A sequence is a hop-count token k, then a random string over a small alphabet
with no immediate repeats. The target at each character is the character
reached by following "the character after the previous occurrence of this
character" k times from it, or `~` when the chain runs out. Targets depend on
the sequence up to their own position only, so causal and bidirectional models
learn the same task.

Examples are records with their own targets, per-token loss weights (0 on the
hop token, which has nothing to predict) and a difficulty group (the hop
count), built by a TFDS builder like every corpus. Generation is seeded per
(seed, split, chunk of examples), so a dataset is the same wherever it is made.
The vocabulary is fixed (`VOCABULARY`), so one model reads every alphabet and
hop range up to 26 letters and 15 hops.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import tensorflow_datasets as tfds

from odeplm.core.special_ids import PAD
from odeplm.data import DataError
from odeplm.data.tokenizer import Symbols

NONE = "~"
HOP_DIGITS = "0123456789ABCDEF"  # the hop-count token of k hops is HOP_DIGITS[k]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCABULARY = Symbols(NONE + HOP_DIGITS + LETTERS)
_CHUNK = 4096  # examples generated from one seed each
_SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class KHopOptions:
    alphabet: int = 4
    length: int = 80  # tokens per sequence: the hop token and length - 1 characters
    hops: tuple[int, int] = (1, 4)  # drawn uniformly per sequence, both ends included
    train: int = 131072
    validation: int = 2048
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.alphabet <= len(LETTERS):
            raise DataError(f"khop: alphabet must be 2 to {len(LETTERS)} letters, got {self.alphabet}")
        if self.length < 2:
            raise DataError(f"khop: length must be at least 2 tokens, got {self.length}")
        low, high = self.hops
        if not 1 <= low <= high < len(HOP_DIGITS):
            raise DataError(f"khop: hops must be a range within 1-{len(HOP_DIGITS) - 1}, got {low}-{high}")
        if self.train < 1 or self.validation < 1:
            raise DataError(f"khop: train and validation need at least one example, got {self.train}, "
                            f"{self.validation}")

    @classmethod
    def parse(cls, dataset: str) -> "KHopOptions":
        """`khop` or `khop?alphabet=4&length=80&hops=1-4&train=131072&validation=2048&seed=0`
        (any subset of the options; `hops=3` is one hop count)."""
        name, _, query = dataset.partition("?")
        if name != "khop":
            raise DataError(f"{dataset!r} is not a khop dataset")
        items = [item.partition("=")[::2] for item in query.split("&") if item]
        keys = [key for key, _ in items]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise DataError(f"{dataset!r}: option(s) {repeated} given more than once")
        options = dict(items)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise DataError(f"{dataset!r}: unknown option(s) {unknown}; known: {sorted(fields)}")
        values = {}
        for key, text in options.items():
            pattern = r"(\d+)(?:-(\d+))?" if key == "hops" else r"(\d+)"
            match = re.fullmatch(pattern, text)
            if not match:
                raise DataError(f"{dataset!r}: {key} must be {'N or N-M' if key == 'hops' else 'an integer'}, "
                                f"got {text!r}")
            values[key] = (int(match[1]), int(match[2] or match[1])) if key == "hops" else int(text)
        return cls(**values)

    @property
    def name(self) -> str:
        """The TFDS config name: every option, so two datasets differ in name when they differ at all."""
        return (f"a{self.alphabet}_l{self.length}_h{self.hops[0]}-{self.hops[1]}_n{self.train}-{self.validation}"
                f"_s{self.seed}")


def random_strings(rng: np.random.Generator, count: int, length: int, alphabet: int) -> np.ndarray:
    """[count, length] letter indices, uniform, never the same letter twice in a row."""
    strings = np.empty((count, length), np.int64)
    strings[:, 0] = rng.integers(0, alphabet, count)
    shifts = rng.integers(1, alphabet, (count, length - 1))
    for i in range(1, length):
        strings[:, i] = (strings[:, i - 1] + shifts[:, i - 1]) % alphabet
    return strings


def hop_targets(strings: np.ndarray, hops: np.ndarray) -> np.ndarray:
    """[count, length] letter index reached from each position after hops[row] hops, -1 where the chain runs out.

    One hop from position p moves to the position after the previous occurrence of
    the letter at p (none before p: the chain runs out)."""
    count, length = strings.shape
    rows = np.arange(count)
    previous = np.empty((count, length), np.int64)  # last earlier position holding the same letter, or -1
    last = np.full((count, int(strings.max()) + 1), -1)
    for i in range(length):
        previous[:, i] = last[rows, strings[:, i]]
        last[rows, strings[:, i]] = i
    position = np.broadcast_to(np.arange(length), (count, length)).copy()
    for hop in range(int(hops.max())):
        hopping = (hop < hops)[:, None] & (position >= 0)
        earlier = np.take_along_axis(previous, np.maximum(position, 0), axis=1)
        position = np.where(hopping, np.where(earlier >= 0, earlier + 1, -1), position)
    reached = np.take_along_axis(strings, np.maximum(position, 0), axis=1)
    return np.where(position >= 0, reached, -1)


def khop_examples(options: KHopOptions, split: str, chunk: int) -> dict[str, np.ndarray]:
    """The examples of one chunk of a split, as token ids of `VOCABULARY`: tokens,
    targets and weights [n, length], and the hop count of each row [n]."""
    total = options.train if split == "train" else options.validation
    count = min(_CHUNK, total - chunk * _CHUNK)
    rng = np.random.default_rng([options.seed, _SPLITS.index(split), chunk])
    low, high = options.hops
    hops = rng.integers(low, high + 1, count)
    strings = random_strings(rng, count, options.length - 1, options.alphabet)
    answers = hop_targets(strings, hops)
    letter, none, digit = (VOCABULARY.encode(c)[0] for c in (LETTERS[0], NONE, HOP_DIGITS[0]))
    tokens = np.concatenate([(digit + hops)[:, None], letter + strings], axis=1).astype(np.int32)
    targets = np.concatenate([np.full((count, 1), PAD), np.where(answers >= 0, letter + answers, none)], axis=1)
    weights = np.ones(tokens.shape, np.float32)
    weights[:, 0] = 0.0  # the hop token has nothing to predict
    return {"tokens": tokens, "targets": targets.astype(np.int32), "weights": weights,
            "group": hops.astype(np.int32)}


class KHopConfig(tfds.core.BuilderConfig):
    def __init__(self, options: KHopOptions):
        super().__init__(name=options.name, description="k-hop induction")
        self.options = options


class KHop(tfds.core.GeneratorBasedBuilder):
    """k-hop induction examples with their targets, loss weights and hop counts (the group)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = []  # one config per option set, made from the dataset name
    GROUP_NAME = "hops"
    vocabulary = VOCABULARY

    def _info(self) -> tfds.core.DatasetInfo:
        sequence = lambda dtype: tfds.features.Tensor(shape=(None,), dtype=dtype)  # noqa: E731
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "tokens": sequence(np.int32), "targets": sequence(np.int32), "weights": sequence(np.float32),
            "group": np.int32}), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in _SPLITS}

    def _generate_examples(self, split: str):
        options = self.builder_config.options
        total = options.train if split == "train" else options.validation
        for chunk in range(-(-total // _CHUNK)):
            examples = khop_examples(options, split, chunk)
            for row in range(len(examples["group"])):
                yield chunk * _CHUNK + row, {key: value[row] for key, value in examples.items()}

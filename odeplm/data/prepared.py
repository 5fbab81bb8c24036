"""A dataset tokenized once into sharded array_record token files, read back by
global index: fixed-length windows of a text's token stream, or whole examples
of a task.

Preparing is the one pass over text: a tokenizer trained on a bounded sample of
the training split, then every split's documents (each followed by EOS, in the
split's order) cut into records of `RECORD_TOKENS` tokens, one array_record
file per shard of documents. A task's examples (`odeplm.data.tasks`) are made
as ids already; each becomes one record holding its tokens and, where it
carries them, its targets, loss weights and group (`encode_example`). Shards are written by parallel workers to a
temporary name and renamed, so an interrupted prepare resumes where it stopped;
the manifest is written last and marks the split complete. The layout is

    {data_dir}/odeplm_tokens/{dataset}/tokenizer-{kind}-{vocab}-sample{characters}.json
    {data_dir}/odeplm_tokens/{dataset}/{tokenizer fingerprint}/{split}/manifest.json, shard-*.array_record

so a split is written once per (dataset, split, tokenizer) and never rewritten.
Reading holds O(shards) integers and, by default, an offloaded record index:
memory does not grow with the corpus.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import glob
import json
import multiprocessing
import os
import re

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from odeplm.core.config import ConfigError
from odeplm.core.special_ids import EOS, PAD
from odeplm.data import DataError
from odeplm.data.sources import dataset_builder, example_source, group_name, is_task, task_vocabulary, text_source
from odeplm.data.tokenizer import TOKENIZER_CHARACTERS, Symbols, Tokenizer, tokenizer_from_json

RECORD_TOKENS = 4096
# Random access reads one record at a time (group_size 1); token ids do not compress enough to pay.
WRITER_OPTIONS = "group_size:1,uncompressed"
# Where each shard's record index lives: on disk, so memory does not grow with the corpus
# (each lookup then reads it: slower), or in memory (faster; tens of bytes per record).
INDEX_OPTIONS = {
    "offloaded": {"index_storage_option": "offloaded", "footer_prefetch_bytes": "0"},
    "in_memory": {"index_storage_option": "in_memory"},
}
# A range read in sequence (`TokenFiles.read_tokens`) holds its shard's index only while the shard is open.
SEQUENTIAL_OPTIONS = "index_storage_option:in_memory"
TOKENIZER_DOCUMENTS = 100_000  # documents the tokenizer's sample is spread over


def dataset_root(dataset: str, data_dir: str) -> str:
    return os.path.join(data_dir, "odeplm_tokens", re.sub(r"[^A-Za-z0-9._-]+", "_", dataset).strip("_"))


def split_directory(dataset: str, split: str, data_dir: str, tokenizer: Tokenizer | Symbols) -> str:
    return os.path.join(dataset_root(dataset, data_dir), tokenizer.fingerprint, split)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def dataset_tokenizer(dataset: str, data_dir: str, vocab_size: int, *, sample_characters: int = TOKENIZER_CHARACTERS,
                      kind: str = "bpe", train: bool = True) -> Tokenizer | Symbols:
    """The dataset's tokenizer of `vocab_size` pieces (`kind` bpe or char), trained once
    on a bounded, evenly spread sample of its training split and saved beside its token files
    under a name holding all three (another bound is another tokenizer, not the saved one);
    a task's own vocabulary (`kind` does not apply)."""
    if is_task(dataset):
        vocabulary = task_vocabulary(dataset)
        if vocabulary.vocab_size != vocab_size:
            raise ConfigError("model.vocab_size", f"{dataset!r} has a vocabulary of {vocabulary.vocab_size} ids, "
                                                  f"not {vocab_size}")
        return vocabulary
    name = f"tokenizer-{kind}-{vocab_size}-sample{sample_characters}.json"
    path = os.path.join(dataset_root(dataset, data_dir), name)
    if os.path.exists(path):
        with open(path) as f:
            return tokenizer_from_json(json.load(f))
    if not train:
        dataset_builder(dataset, data_dir)  # an unknown or unbuilt dataset is named as that, not as a tokenizer
        raise DataError(f"{dataset!r} has no {kind} tokenizer of {vocab_size} pieces from {sample_characters} "
                        f"characters under {data_dir}: {path} is missing; run `python -m train.prepare` with this "
                        f"config once")
    texts = text_source(dataset, "train", data_dir)
    sample = np.unique(np.linspace(0, len(texts) - 1, min(len(texts), TOKENIZER_DOCUMENTS)).astype(np.int64))
    try:
        tokenizer = Tokenizer.train((texts[int(i)] for i in sample), vocab_size, max_characters=sample_characters,
                                    kind=kind)
    except RuntimeError as error:  # SentencePiece reports an impossible vocabulary this way
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
        if needed:
            raise ConfigError("model.vocab_size", f"the corpus needs at least {needed[1]} {kind} pieces "
                                                  f"(its characters, bytes and specials), got {vocab_size}") from None
        raise ConfigError("model.vocab_size", f"cannot train a tokenizer of this size: {error}") from None
    if tokenizer.vocab_size != vocab_size:
        raise ConfigError("model.vocab_size", f"the corpus supports a {kind} tokenizer of {tokenizer.vocab_size} "
                                              f"pieces, not {vocab_size}")
    _write_atomically(path, json.dumps(tokenizer.to_json()))
    return tokenizer


@dataclasses.dataclass(frozen=True)
class TokenFiles:
    """One prepared split: its shards, in order, and how many tokens each holds; for a
    task, how many examples each holds and what their groups count."""

    directory: str
    shards: tuple[str, ...]
    shard_tokens: tuple[int, ...]
    dtype: np.dtype
    record_tokens: int
    shard_examples: tuple[int, ...] = ()  # a task's examples per shard (one record each); empty for text
    group_name: str | None = None

    @property
    def tokens(self) -> int:
        return sum(self.shard_tokens)

    @classmethod
    def open(cls, dataset: str, split: str, data_dir: str, tokenizer: Tokenizer | Symbols) -> "TokenFiles":
        """The split as prepared with `tokenizer`; a missing, incomplete or
        differently tokenized split is named, and nothing is written."""
        directory = split_directory(dataset, split, data_dir, tokenizer)
        manifest_path = os.path.join(directory, "manifest.json")
        if not os.path.exists(manifest_path):
            root = dataset_root(dataset, data_dir)
            others = sorted(f for f in (os.listdir(root) if os.path.isdir(root) else ())
                            if os.path.exists(os.path.join(root, f, split, "manifest.json")))
            if others:
                raise DataError(f"{dataset!r} split {split!r} under {root} was prepared with another tokenizer "
                                f"({', '.join(others)}), not this run's ({tokenizer.fingerprint})")
            raise DataError(f"{dataset!r} split {split!r} is not prepared under {directory} (no manifest.json); "
                            f"run `python -m train.prepare` with this config once")
        return cls.read(directory, tokenizer.fingerprint)

    @classmethod
    def read(cls, directory: str, fingerprint: str) -> "TokenFiles":
        """The token files under `directory`, checked against their manifest."""
        manifest_path = os.path.join(directory, "manifest.json")
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest["tokenizer"] != fingerprint:
            raise DataError(f"{manifest_path} was written with tokenizer {manifest['tokenizer']}, not {fingerprint}")
        shards = tuple(os.path.join(directory, shard["file"]) for shard in manifest["shards"])
        missing = [path for path in shards if not os.path.exists(path)]
        if missing:
            raise DataError(f"prepared split {directory} is incomplete: {len(missing)} of {len(shards)} shards "
                            f"missing, first {missing[0]}")
        return cls(directory, shards, tuple(s["tokens"] for s in manifest["shards"]), np.dtype(manifest["dtype"]),
                   manifest["record_tokens"], tuple(s["examples"] for s in manifest["shards"] if "examples" in s),
                   manifest.get("group_name"))

    def window_count(self, length: int) -> int:
        """How many windows of `length` tokens and their next-token targets the stream holds."""
        if self.tokens < length + 1:
            raise DataError(f"{self.directory} holds {self.tokens} tokens, fewer than one window of {length + 1}")
        return (self.tokens - 1) // length

    def read_tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the split's stream, read in sequence: each shard the
        range touches is opened (its record index held only while open), its records in
        the range read in one call, and closed."""
        shard_starts = np.concatenate([[0], np.cumsum(self.shard_tokens)])
        pieces = []
        for shard in range(int(np.searchsorted(shard_starts, start, side="right")) - 1, len(self.shards)):
            low, high = max(start, shard_starts[shard]), min(stop, shard_starts[shard + 1])
            if low >= stop:
                break
            first = (low - shard_starts[shard]) // self.record_tokens
            last = -(-(high - shard_starts[shard]) // self.record_tokens)
            reader = ArrayRecordReader(self.shards[shard], SEQUENTIAL_OPTIONS)
            try:
                records = reader.read(int(first), int(last))
            finally:
                reader.close()
            skip = low - shard_starts[shard] - first * self.record_tokens
            pieces.append(np.frombuffer(b"".join(records), self.dtype)[skip:skip + high - low])
        return np.concatenate(pieces)

    def records(self, length: int, index: str = "offloaded") -> "TokenWindows | ExampleRecords":
        """What batches index: windows of `length` tokens and their targets, or a task's examples cut to `length`."""
        return ExampleRecords(self, length, index) if self.shard_examples else TokenWindows(self, length, index)


class TokenWindows:
    """Window i holds tokens [i * length, (i + 1) * length + 1) of the split's
    stream: `length` inputs and their next-token targets, overlapping by one.
    Indexed like a 2-D array: an int gives one window, an array of ints stacks
    theirs, read from grain's array_record source."""

    def __init__(self, files: TokenFiles, length: int, index: str = "offloaded"):
        self.files, self.length, self.count = files, length, files.window_count(length)
        self.source = grain.sources.ArrayRecordDataSource(list(files.shards), reader_options=INDEX_OPTIONS[index])
        self.shard_starts = np.concatenate([[0], np.cumsum(files.shard_tokens)]).tolist()
        records = [-(-n // files.record_tokens) for n in files.shard_tokens]
        self.record_starts = np.concatenate([[0], np.cumsum(records)]).tolist()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index) -> np.ndarray:
        if np.ndim(index) == 0:
            return self[np.array([index])][0]
        rows = np.asarray(index).tolist()
        spans = [self._records(i * self.length, (i + 1) * self.length + 1) for i in rows]
        keys = list(dict.fromkeys(key for span in spans for key, _, _ in span))
        records = dict(zip(keys, self.source.__getitems__(keys)))  # one batched read: lookups run in parallel
        out = np.empty((len(rows), self.length + 1), np.int32)
        for row, span in zip(out, spans):
            filled = 0
            for key, first, last in span:
                row[filled:filled + last - first] = np.frombuffer(records[key], self.files.dtype)[first:last]
                filled += last - first
        return out

    def _records(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(record key, first, last) pieces covering tokens [start, stop)."""
        pieces = []
        while start < stop:
            shard = bisect.bisect_right(self.shard_starts, start) - 1
            local = start - self.shard_starts[shard]
            record, offset = divmod(local, self.files.record_tokens)
            take = min(stop - start, self.files.record_tokens - offset, self.shard_starts[shard + 1] - start)
            pieces.append((self.record_starts[shard] + record, offset, offset + take))
            start += take
        return pieces


class ExampleRecords:
    """A task's examples by index, one record each, as arrays of `length` tokens:
    indexed by an array of ids, a dict of tokens, targets, weights [n, length] and,
    where the task has groups, group [n]. Longer examples are cut; shorter ones
    are padded with weight 0."""

    def __init__(self, files: TokenFiles, length: int, index: str = "offloaded"):
        self.files, self.length = files, length
        self.source = grain.sources.ArrayRecordDataSource(list(files.shards), reader_options=INDEX_OPTIONS[index])

    def __len__(self) -> int:
        return sum(self.files.shard_examples)

    def __getitem__(self, index) -> dict[str, np.ndarray]:
        ids = np.atleast_1d(np.asarray(index)).tolist()
        examples = [decode_example(record) for record in self.source.__getitems__(ids)]
        out = {"tokens": np.full((len(ids), self.length), PAD, np.int32)}
        out["targets"] = out["tokens"].copy()
        out["weights"] = np.zeros((len(ids), self.length), np.float32)
        for row, example in enumerate(examples):
            for key in ("tokens", "targets", "weights"):
                values = example[key][:self.length]
                out[key][row, :len(values)] = values
        if self.files.group_name is not None:
            out["group"] = np.array([example["group"] for example in examples], np.int32)
        return out


def encode_example(tokens, targets=None, weights=None, group: int = 0) -> bytes:
    """One example as a record: a header (length, group) and its tokens, targets
    (int32) and weights (float32); plain arrays, so reading it runs no code.
    Without targets, each token's target is the next token; without weights, every
    target but padding weighs 1 (a prompt/answer example weighs 0 over its prompt)."""
    tokens = np.asarray(tokens, np.int32)
    if targets is None:
        targets = np.append(tokens[1:], PAD).astype(np.int32)
    if weights is None:
        weights = (np.asarray(targets) != PAD).astype(np.float32)
    if np.shape(targets) != tokens.shape or np.shape(weights) != tokens.shape:
        raise DataError(f"an example's targets {np.shape(targets)} and weights {np.shape(weights)} must match its "
                        f"tokens {tokens.shape}")
    header = np.array([len(tokens), group], np.int32)
    return b"".join(a.tobytes() for a in (header, tokens, np.asarray(targets, np.int32),
                                           np.asarray(weights, np.float32)))


def decode_example(record: bytes) -> dict:
    length, group = np.frombuffer(record, np.int32, 2)
    arrays = np.frombuffer(record, np.int32, 2 * length, offset=8)
    weights = np.frombuffer(record, np.float32, length, offset=8 + 8 * length)
    return {"tokens": arrays[:length], "targets": arrays[length:], "weights": weights, "group": int(group)}


def prepare(dataset: str, data_dir: str, tokenizer: Tokenizer | Symbols | int, *, splits=("train", "validation"),
            shards: int = 16, workers: int = 1, sample_characters: int = TOKENIZER_CHARACTERS,
            kind: str = "bpe") -> dict[str, TokenFiles]:
    """Every split of `dataset` tokenized by `tokenizer`, or by the dataset's own
    `kind` tokenizer of that many pieces (trained first if it has none)."""
    if isinstance(tokenizer, int):
        tokenizer = dataset_tokenizer(dataset, data_dir, tokenizer, sample_characters=sample_characters, kind=kind)
    return {split: prepare_split(dataset, split, data_dir, tokenizer, shards=shards, workers=workers)
            for split in splits}


def prepare_split(dataset: str, split: str, data_dir: str, tokenizer: Tokenizer | Symbols, *, shards: int = 16,
                  workers: int = 1) -> TokenFiles:
    """Tokenizes one split into `shards` files with `workers` processes; shards
    already written are kept, and a complete split is returned as it is."""
    directory = split_directory(dataset, split, data_dir, tokenizer)
    if os.path.exists(os.path.join(directory, "manifest.json")):
        return TokenFiles.open(dataset, split, data_dir, tokenizer)
    if is_task(dataset):
        return _prepare_examples(dataset, split, data_dir, tokenizer, directory)
    documents = len(text_source(dataset, split, data_dir))  # builds our own datasets before workers start
    shards = max(1, min(shards, documents))
    os.makedirs(directory, exist_ok=True)
    for leftover in glob.glob(os.path.join(directory, "shard-*.array_record.tmp-*")):  # from an interrupted run
        os.remove(leftover)
    names = [f"shard-{k:05d}-of-{shards:05d}.array_record" for k in range(shards)]
    tasks = [(dataset, split, data_dir, tokenizer.proto, k * documents // shards, (k + 1) * documents // shards,
              os.path.join(directory, name))
             for k, name in enumerate(names) if not os.path.exists(os.path.join(directory, name))]
    if workers > 1 and len(tasks) > 1:
        context = multiprocessing.get_context("spawn")  # the parent may hold JAX and TFDS threads
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
            list(pool.map(_tokenize_shard, tasks))
    else:
        for task in tasks:
            _tokenize_shard(task)
    dtype = token_dtype(tokenizer.vocab_size)
    shard_tokens = [count_tokens(os.path.join(directory, name), dtype) for name in names]
    write_manifest(directory, names, shard_tokens, dtype, RECORD_TOKENS, tokenizer.fingerprint, documents=documents)
    return TokenFiles.open(dataset, split, data_dir, tokenizer)


def _prepare_examples(dataset: str, split: str, data_dir: str, vocabulary: Symbols, directory: str) -> TokenFiles:
    """A task's split as one shard of example records (tasks are made small)."""
    source = example_source(dataset, split, data_dir)
    name = "shard-00000-of-00001.array_record"
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f"{name}.tmp-{os.getpid()}")
    writer = ArrayRecordWriter(temporary, WRITER_OPTIONS)
    tokens = 0
    for i in range(len(source)):
        example = source[i]
        writer.write(encode_example(example["tokens"], example["targets"], example["weights"], int(example["group"])))
        tokens += len(example["tokens"])
    writer.close()
    os.replace(temporary, os.path.join(directory, name))
    write_manifest(directory, [name], [tokens], np.int32, 0, vocabulary.fingerprint, examples=[len(source)],
                   group_name=group_name(dataset))
    return TokenFiles.open(dataset, split, data_dir, vocabulary)


def _tokenize_shard(task) -> None:
    dataset, split, data_dir, proto, first, last, path = task
    texts, tokenizer = text_source(dataset, split, data_dir), Tokenizer(proto)
    pieces = (np.asarray(tokenizer.encode(texts[i]) + [EOS]) for i in range(first, last))
    write_shard(path, pieces, token_dtype(tokenizer.vocab_size))


def write_shard(path: str, pieces, dtype: np.dtype, record_tokens: int = RECORD_TOKENS) -> int:
    """Writes a token stream (an iterable of arrays) as records of `record_tokens`
    tokens (the last may be shorter) to `path`, atomically; returns its token count."""
    temporary = f"{path}.tmp-{os.getpid()}"
    writer = ArrayRecordWriter(temporary, WRITER_OPTIONS)
    buffer, buffered, total = [], 0, 0
    for piece in pieces:
        buffer.append(np.asarray(piece, dtype))
        buffered += len(piece)
        while buffered >= record_tokens:
            joined = np.concatenate(buffer)
            writer.write(joined[:record_tokens].tobytes())
            buffer, buffered, total = [joined[record_tokens:]], buffered - record_tokens, total + record_tokens
    if buffered:
        writer.write(np.concatenate(buffer).tobytes())
        total += buffered
    writer.close()
    os.replace(temporary, path)
    return total


def count_tokens(path: str, dtype: np.dtype, record_tokens: int = RECORD_TOKENS) -> int:
    """Tokens in one shard: its full records and the length of its last one."""
    reader = ArrayRecordReader(path)
    try:
        records = reader.num_records()
        last = len(reader.read([records - 1])[0]) // np.dtype(dtype).itemsize if records else 0
        return (records - 1) * record_tokens + last if records else 0
    finally:
        reader.close()


def write_manifest(directory: str, names, shard_tokens, dtype: np.dtype, record_tokens: int, fingerprint: str,
                   examples=(), **facts) -> None:
    """The split's manifest, written last; `examples` counts a task's records per shard."""
    shards = [{"file": name, "tokens": int(n)} for name, n in zip(names, shard_tokens)]
    for shard, count in zip(shards, examples):
        shard["examples"] = int(count)
    manifest = {"tokenizer": fingerprint, "dtype": np.dtype(dtype).name, "record_tokens": record_tokens,
                "tokens": int(sum(shard_tokens)), **facts, "shards": shards}
    _write_atomically(os.path.join(directory, "manifest.json"), json.dumps(manifest, indent=1))


def _write_atomically(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)

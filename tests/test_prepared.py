"""Prepared token files: tokenizing local text in parallel into array_record
shards, reading windows back by global index, resuming, and refusing a split
that is missing, incomplete or tokenized differently."""

import os
import subprocess
import sys

import numpy as np
import pytest

from odeplm.core.config import ConfigError
from odeplm.core.special_ids import EOS
from odeplm.data import DataError
from odeplm.data.blocks import ShuffledBlocks
from odeplm.data.pipeline import split_batches
from odeplm.data.prepared import (
    TokenFiles,
    TokenWindows,
    dataset_root,
    dataset_tokenizer,
    prepare_split,
    split_directory,
)
from odeplm.data.sources import text_source
from odeplm.data.tokenizer import TOKENIZER_CHARACTERS


@pytest.fixture(scope="module")
def documents(tmp_path_factory, corpus_dir):
    """Sixty local documents cut from Shakespeare's held-out plays."""
    texts = text_source("shakespeare", "validation", corpus_dir)
    paragraphs = [p for i in range(len(texts)) for p in texts[i].split("\n\n") if p.strip()]
    directory = tmp_path_factory.mktemp("documents")
    for k in range(60):
        (directory / f"doc{k:02d}.txt").write_text("\n\n".join(paragraphs[k::60][:40]))
    return f"files:{directory}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def independent_stream(dataset, split, data_dir, tokenizer) -> np.ndarray:
    texts = text_source(dataset, split, data_dir)
    return np.concatenate([np.array(tokenizer.encode(texts[i]) + [EOS]) for i in range(len(texts))])


def test_windows_match_an_independent_encoding_of_the_split(documents, data_dir, tokenizer):
    files = prepare_split(documents, "train", data_dir, tokenizer, shards=5, workers=2)
    stream = independent_stream(documents, "train", data_dir, tokenizer)
    assert len(files.shards) == 5 and files.tokens == len(stream) and files.dtype == np.uint16
    for length in (32, 4096, 5000):  # windows within a record, across records, across shards
        windows = TokenWindows(files, length)
        assert len(windows) == (len(stream) - 1) // length
        chosen = sorted({0, 1, len(windows) // 2, len(windows) - 1})
        for index, window in zip(chosen, windows[np.array(chosen)]):
            np.testing.assert_array_equal(window, stream[index * length:(index + 1) * length + 1])
    batches = split_batches(documents, "train", data_dir, tokenizer, length=64, batch_size=6, objective="causal",
                            shuffle=False)
    batch = batches.batch(3, 1, 2)  # process 1 of 2 reads global rows 21, 22, 23
    np.testing.assert_array_equal(batch["tokens"], stream[21 * 64:24 * 64].reshape(3, 64))
    np.testing.assert_array_equal(batch["targets"], stream[21 * 64 + 1:24 * 64 + 1].reshape(3, 64))


def test_shuffled_blocks_visit_every_window_once_per_epoch_a_few_blocks_at_a_time(documents, data_dir, tokenizer):
    files = prepare_split(documents, "train", data_dir, tokenizer, shards=5, workers=2)
    stream = independent_stream(documents, "train", data_dir, tokenizer)
    length, block_windows = 32, 50
    blocks = ShuffledBlocks(files, length, seed=3, group=2, block_tokens=length * block_windows)
    n = len(blocks)
    assert n == (len(stream) - 1) // length and n > 8 * block_windows
    epochs = [blocks.window_ids(np.arange(e * n, (e + 1) * n)) for e in (0, 1)]
    for ids in epochs:
        np.testing.assert_array_equal(np.sort(ids), np.arange(n))  # each window once
        assert len(np.unique(ids[:block_windows] // block_windows)) <= 2  # the first group: two blocks
    assert not np.array_equal(*epochs)
    positions = np.arange(n - 70, n + 70)  # across groups and the epoch's end, as two reader threads would
    rows = blocks.rows(positions)
    for row, window in zip(rows, blocks.window_ids(positions)):
        np.testing.assert_array_equal(row, stream[window * length:(window + 1) * length + 1])
    again = ShuffledBlocks(files, length, seed=3, group=2, block_tokens=length * block_windows)
    np.testing.assert_array_equal(again.rows(positions[::-1]), rows[::-1])  # depends on (seed, position) only
    batches = split_batches(documents, "train", data_dir, tokenizer, length=64, batch_size=6, objective="causal",
                            seed=5, shuffle=True, shuffle_blocks=1)
    whole = batches.batch(40)
    halves = [batches.batch(40, p, 2)["tokens"] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), whole["tokens"])
    np.testing.assert_array_equal(next(batches.iterate(40))["targets"], whole["targets"])
    for reader in (TokenWindows, lambda f, n: ShuffledBlocks(f, n, seed=0, group=1)):
        with pytest.raises(DataError, match=f"holds {files.tokens} tokens, fewer than one window of"):
            reader(files, files.tokens)


def test_an_interrupted_prepare_resumes_without_rewriting_finished_shards(documents, data_dir, tokenizer, tmp_path):
    files = prepare_split(documents, "train", data_dir, tokenizer, shards=5, workers=2)
    expected = independent_stream(documents, "train", data_dir, tokenizer)
    os.remove(os.path.join(files.directory, "manifest.json"))  # as if killed before the last shard
    os.remove(files.shards[3])
    (tmp_path / "x").write_text("")
    os.rename(tmp_path / "x", files.shards[3] + ".tmp-12345")  # a half-written shard of a killed worker
    kept = {path: os.stat(path).st_mtime_ns for path in files.shards if os.path.exists(path)}
    again = prepare_split(documents, "train", data_dir, tokenizer, shards=5, workers=1)
    assert again == files
    assert not [f for f in os.listdir(files.directory) if ".tmp-" in f]
    assert {path: os.stat(path).st_mtime_ns for path in kept} == kept
    windows = TokenWindows(again, len(expected) - 1)
    np.testing.assert_array_equal(windows[0], expected)


def test_missing_incomplete_or_differently_tokenized_splits_are_named_and_left_alone(documents, data_dir, tokenizer):
    files = prepare_split(documents, "validation", data_dir, tokenizer, shards=2)
    other = dataset_tokenizer(documents, data_dir, 400, sample_characters=200_000)
    assert other.fingerprint != tokenizer.fingerprint
    with pytest.raises(DataError, match=f"prepared with another tokenizer \\({tokenizer.fingerprint}\\)"):
        TokenFiles.open(documents, "validation", data_dir, other)
    assert not os.path.exists(split_directory(documents, "validation", data_dir, other))
    with pytest.raises(DataError, match="'lm1b' split 'train' is not prepared .* train.prepare"):
        TokenFiles.open("lm1b", "train", data_dir, tokenizer)
    os.rename(files.shards[1], files.shards[1] + ".away")
    before = sorted(os.listdir(files.directory))
    with pytest.raises(DataError, match=f"incomplete: 1 of 2 shards missing, first {files.shards[1]}"):
        TokenFiles.open(documents, "validation", data_dir, tokenizer)
    with pytest.raises(DataError, match="incomplete"):
        prepare_split(documents, "validation", data_dir, tokenizer)  # a finished split is never rewritten
    assert sorted(os.listdir(files.directory)) == before
    missing = f"no bpe tokenizer of 450 pieces from {TOKENIZER_CHARACTERS} characters .* train.prepare"
    with pytest.raises(DataError, match=missing):
        dataset_tokenizer(documents, data_dir, 450, train=False)


def test_the_dataset_tokenizer_is_trained_once_per_sample_bound(documents, data_dir):
    first = dataset_tokenizer(documents, data_dir, 360, sample_characters=50_000)
    path = os.path.join(dataset_root(documents, data_dir), "tokenizer-bpe-360-sample50000.json")
    saved = os.stat(path).st_mtime_ns
    assert dataset_tokenizer(documents, data_dir, 360, sample_characters=50_000).fingerprint == first.fingerprint
    assert os.stat(path).st_mtime_ns == saved  # read back, not trained again
    larger = dataset_tokenizer(documents, data_dir, 360, sample_characters=10**9)
    assert larger.fingerprint != first.fingerprint  # another bound is another tokenizer, not the saved one
    assert dataset_tokenizer(documents, data_dir, 360, sample_characters=50_000).fingerprint == first.fingerprint


def test_a_character_tokenizer_has_one_piece_per_character_and_names_its_size(documents, data_dir):
    texts = text_source(documents, "train", data_dir)
    characters = set("".join(texts[i] for i in range(len(texts))))
    size = len(characters - {"\n", " "}) + 7  # pad, unk, bos, eos, [MASK], newline, SentencePiece's space
    with pytest.raises(ConfigError, match=f"model.vocab_size: the corpus supports a char tokenizer of {size} pieces"):
        dataset_tokenizer(documents, data_dir, 256, kind="char")
    tokenizer = dataset_tokenizer(documents, data_dir, size, kind="char")
    text = texts[0][:300]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) == len(text)  # one piece per character, and no marker SentencePiece would put in front
    assert len(tokenizer.encode("ab")) == 2
    saved = f"tokenizer-char-{size}-sample{TOKENIZER_CHARACTERS}.json"
    assert os.path.exists(os.path.join(dataset_root(documents, data_dir), saved))


@pytest.mark.parametrize("override, message", [
    ("--config.data.dataset=lm1b", "dataset 'lm1b' is not prepared under"),
    ("--config.data.workers=-1", "data.workers: must be an integer >= 0"),
])
def test_train_prepare_refuses_bad_input_in_one_line(tmp_path, override, message):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "train.prepare", "--config", "configs/tiny.py",
                             f"--config.data.data_dir={tmp_path}", override],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.prepare: ") and message in last and "Traceback" not in result.stderr
    assert not os.listdir(tmp_path) or os.listdir(tmp_path) == ["downloads"]  # nothing prepared


@pytest.mark.parametrize("flag, message", [
    ("--sizes=10MB,10XB", "--sizes: '10XB' is not like 10MB or 1GB"),
    ("--shards=16,0", "--shards: '0' is not a positive number of shards"),
    ("--shuffle_blocks=16,-1", "--shuffle_blocks: '-1' is not a number of blocks (0: uniform windows)"),
])
def test_data_speed_refuses_bad_flags_in_one_line_before_writing(tmp_path, flag, message):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "eval.data_speed", flag, f"--corpora={tmp_path / 'corpora'}"],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip() == f"eval.data_speed: {message}", result.stderr[-2000:]
    assert not (tmp_path / "corpora").exists()  # no corpus generated for the good values either

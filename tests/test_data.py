"""Corpus builders, tokenizer, masking and step-indexed batches."""

import json

import numpy as np
import pytest

from odeplm.core.special_ids import MASK, PAD
from odeplm.data import DataError
from odeplm.data.corpus import VALIDATION_WORKS, strip_gutenberg
from odeplm.data.pipeline import Batches
from odeplm.data.sources import text_source
from odeplm.data.tokenizer import Tokenizer


def test_strip_gutenberg_keeps_only_the_work():
    text = ("The Project Gutenberg EBook of X\nlicence...\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n"
            "To be, or not to be.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nMore licence text.")
    assert strip_gutenberg(text) == "To be, or not to be."
    assert strip_gutenberg("No markers here.\n") == "No markers here."


def test_shakespeare_splits_hold_out_whole_plays(corpus_dir):
    train, validation = (text_source("shakespeare", s, corpus_dir) for s in ("train", "validation"))
    assert len(validation) == len(VALIDATION_WORKS) and len(train) >= 30
    train_text = "\n".join(train[i] for i in range(len(train)))
    assert "Gutenberg" not in train_text
    # No paragraph of a held-out play (speech headers aside) appears in training text.
    paragraphs = [p for i in range(len(validation)) for p in validation[i].split("\n\n") if len(p) > 120]
    assert len(paragraphs) > 500
    assert not [p for p in paragraphs if p in train_text]


def test_local_text_files(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"doc{i}.txt").write_text(f"Document number {i}. " * 20)
    (docs / "more.jsonl").write_text("\n".join(json.dumps({"text": f"json line {i}"}) for i in range(20)))
    train, validation = (text_source(f"files:{docs}", s, str(tmp_path / "tfds")) for s in ("train", "validation"))
    titles = lambda source: {source.source[i]["title"] for i in range(len(source))}  # noqa: E731
    assert len(train) + len(validation) == 60 and len(validation) >= 1
    assert not titles(train) & titles(validation)
    (docs / "bad.jsonl").write_text('{"no_text": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: expected a JSON object with a 'text' field"):
        text_source(f"files:{docs}", "train", str(tmp_path / "tfds2"))
    with pytest.raises(DataError, match="no .txt or .jsonl files"):
        text_source(f"files:{tmp_path / 'empty'}", "train", str(tmp_path / "tfds3"))


def test_one_text_file_splits_by_paragraph_at_the_asked_fraction(tmp_path):
    paragraphs = [f"Paragraph {i}: " + "words " * (5 + i % 7) for i in range(400)]
    (tmp_path / "input.txt").write_text("\n\n".join(paragraphs))
    dataset = f"files:{tmp_path / 'input.txt'}?by=paragraph&validation=0.2"
    train, validation = (text_source(dataset, s, str(tmp_path / "tfds")) for s in ("train", "validation"))
    pieces = lambda source: [p.strip() for i in range(len(source)) for p in source[i].split("\n\n")]  # noqa: E731
    held_out = pieces(validation)
    assert sorted(pieces(train) + held_out) == sorted(p.strip() for p in paragraphs)  # each once, on one side
    assert 0.15 < len(held_out) / len(paragraphs) < 0.25
    assert len(validation) < len(held_out)  # neighbouring held-out paragraphs stay one document
    with pytest.raises(DataError, match="cannot be split .* by document .* files:PATH\\?by=paragraph"):
        text_source(f"files:{tmp_path / 'input.txt'}", "train", str(tmp_path / "tfds2"))
    for bad, message in (("validation=1.5", "validation must be a fraction"), ("by=line", "by must be one of"),
                         ("every=2", "unknown option")):
        with pytest.raises(DataError, match=message):
            text_source(f"files:{tmp_path / 'input.txt'}?{bad}", "train", str(tmp_path / "tfds3"))


def test_unknown_or_unprepared_datasets_are_named(tmp_path):
    with pytest.raises(DataError, match="no_such_dataset"):
        text_source("no_such_dataset", "train", str(tmp_path))
    with pytest.raises(DataError, match="not prepared"):
        text_source("lm1b", "train", str(tmp_path))


def test_tokenizer_round_trips_text_and_saves_as_json(tokenizer):
    text = "Ber.\nWho's there?\n\nFran.\nNay, answer me: stand, and unfold yourself."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert MASK not in ids and PAD not in ids
    again = Tokenizer.from_json(json.loads(json.dumps(tokenizer.to_json())))
    assert again.encode(text) == ids and again.fingerprint == tokenizer.fingerprint


def test_masking_statistics_and_never_padding():
    rng = np.random.default_rng(0)
    rows = rng.integers(5, 1000, (2000, 65)).astype(np.int32)
    rows[::4, 40:] = PAD  # a quarter of the rows end in padding
    batches = Batches(rows, global_batch=2000, objective="masked", vocab_size=1000, seed=3)
    batch = batches.batch(0)
    real = batch["padding_mask"]
    chosen = batch["weights"] > 0
    assert not (chosen & ~real).any()
    assert abs(chosen.sum() / real.sum() - 0.15) < 0.005
    original, inputs = batch["targets"][chosen], batch["tokens"][chosen]
    masked, kept = (inputs == MASK).mean(), (inputs == original).mean()
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1 - 0.1 * 1 / 995) < 0.01  # random draws rarely keep
    assert abs(1 - masked - kept - 0.1) < 0.01
    np.testing.assert_array_equal(batch["tokens"][~chosen], batch["targets"][~chosen])


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_batches_depend_only_on_seed_step_and_process_slice(objective):
    rows = np.random.default_rng(1).integers(5, 100, (37, 9)).astype(np.int32)
    batches = Batches(rows, global_batch=8, objective=objective, vocab_size=100, seed=5)
    for step in (0, 3, 4, 11):  # 11 crosses into a later epoch
        whole = batches.batch(step)
        again = Batches(rows, global_batch=8, objective=objective, vocab_size=100, seed=5).batch(step)
        halves = [batches.batch(step, p, 2) for p in range(2)]
        quarters = [batches.batch(step, p, 4) for p in range(4)]
        for key in whole:
            np.testing.assert_array_equal(whole[key], again[key])
            np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
            np.testing.assert_array_equal(whole[key], np.concatenate([q[key] for q in quarters]))
    assert not np.array_equal(batches.batch(0)["targets"], batches.batch(1)["targets"])
    # Read ahead from step 3 on, as process 1 of 2: the same slices as random access.
    reader = batches.iterate(3, 1, 2)
    for step in (3, 4, 5):
        np.testing.assert_array_equal(next(reader)["tokens"], batches.batch(step, 1, 2)["tokens"])
    if objective == "causal":  # an epoch visits every row once, and the next epoch is another order
        drawn = np.concatenate([np.concatenate([b["tokens"], b["targets"][:, -1:]], 1)
                                for b in map(batches.batch, range(10))])
        for epoch in drawn[:37], drawn[37:74]:
            assert sorted(map(tuple, epoch)) == sorted(map(tuple, rows))
        assert not np.array_equal(drawn[:37], drawn[37:74])
    with pytest.raises(DataError, match="does not split over 3 processes"):
        batches.batch(0, 0, 3)


def test_causal_batches_shift_targets_by_one():
    rows = np.arange(5, 41, dtype=np.int32).reshape(4, 9)
    batch = Batches(rows, global_batch=2, objective="causal", vocab_size=64, shuffle=False).batch(1)
    np.testing.assert_array_equal(batch["tokens"], rows[2:, :-1])
    np.testing.assert_array_equal(batch["targets"], rows[2:, 1:])

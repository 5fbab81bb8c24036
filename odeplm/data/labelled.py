"""Labelled sentences for fine-tuning: a task named by where it comes from.

- `shakespeare_genre`: speeches of the bundled corpus, comedy (0) or tragedy
  (1); training speeches come from training plays, test speeches from the
  held-out validation plays, so no play is in both. No download.
- `sample`: the small labelled set that ships with the package, for tests and
  examples: `genre_sample.tsv`, written by
  `save_table(shakespeare_genre(data_dir, per_class=64, max_words=40), path)`.
- a path to a CSV or TSV file with a header holding `text` and `label` columns
  (and optionally `split`: train/test; without it every fifth row is test), or
  a directory holding train and test (or validation) files;
- a TFDS name such as `glue/sst2`, where the user has prepared it under
  `data_dir` (its validation split is the test split: GLUE hides test labels).
"""

from __future__ import annotations

import csv
import os
import re
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from odeplm.data import DataError
from odeplm.data.sources import text_source

SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "genre_sample.tsv")

# Comedies and tragedies of the bundled corpus (histories, romances and poems are left out).
GENRES = {
    "comedy": ("alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost",
               "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
               "much_ado_about_nothing", "taming_of_the_shrew", "two_gentlemen_of_verona", "twelfth_night",
               "winters_tale"),
    "tragedy": ("antony_and_cleopatra", "coriolanus", "hamlet", "lear", "othello", "romeo_and_juliet",
                "timon_of_athens", "tragedy_of_titus_andronicus", "julius_caesar", "macbeth"),
}

_SPEAKER = re.compile(r"^[A-Z][A-Z0-9 .,'&-]+$")  # speaker names and headings: no lower case
_STAGE = re.compile(r"\[[^\]]*\]")


class Labelled(NamedTuple):
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    label_names: tuple[str, ...]


def load_labelled(task: str, data_dir: str, *, per_class: int = 2000, seed: int = 0) -> Labelled:
    """The train and test sets of `task` (see the module docstring)."""
    if task == "shakespeare_genre":
        return shakespeare_genre(data_dir, per_class=per_class, seed=seed)
    if task == "sample":
        return _from_rows(_read_table(SAMPLE_PATH), SAMPLE_PATH)
    if os.path.isdir(task):
        return _from_directory(task)
    if os.path.isfile(task):
        return _from_rows(_read_table(task), task)
    if task.endswith((".csv", ".tsv")):
        raise DataError(f"no such file: {task}")
    return _from_tfds(task, data_dir)


def save_table(data: Labelled, path: str) -> None:
    """Writes a labelled set as TSV (text, label name, split), which `load_labelled(path)` reads back."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["text", "label", "split"])
        for texts, labels, split in ((data.train_texts, data.train_labels, "train"),
                                     (data.test_texts, data.test_labels, "test")):
            writer.writerows([text, data.label_names[label], split] for text, label in zip(texts, labels))


def speeches(text: str, min_words: int = 12, max_words: int = 80) -> list[str]:
    """A play's speeches without speaker names or stage directions, each cut to `max_words`."""
    found = []
    for block in re.split(r"\n\s*\n", text):
        lines = [_STAGE.sub("", line).strip() for line in block.strip().splitlines()]
        lines = [line for line in lines if line and not _SPEAKER.match(line)]
        words = " ".join(lines).split()
        if len(words) >= min_words:
            found.append(" ".join(words[:max_words]))
    return found


def shakespeare_genre(data_dir: str, *, per_class: int = 2000, seed: int = 0, max_words: int = 80) -> Labelled:
    """Comedy-or-tragedy speeches, train from training plays, test from validation plays;
    up to `per_class` train and `per_class // 4` test speeches per class, drawn with `seed`."""
    genre_of = {play: label for label, name in enumerate(GENRES) for play in GENRES[name]}
    split_sets = []
    for split, limit in (("train", per_class), ("validation", max(1, per_class // 4))):
        texts = text_source("shakespeare", split, data_dir)
        titles = text_source("shakespeare", split, data_dir, "title")
        by_label: list[list[str]] = [[] for _ in GENRES]
        for i in range(len(texts)):
            if titles[i] in genre_of:
                by_label[genre_of[titles[i]]].extend(speeches(texts[i], max_words=max_words))
        if not all(by_label):
            raise DataError(f"the {split} split lacks a comedy or a tragedy")
        rng = np.random.default_rng([seed, len(split_sets)])
        chosen = [(text, label) for label, items in enumerate(by_label)
                  for text in rng.permutation(np.array(items, dtype=object))[:limit]]
        order = rng.permutation(len(chosen))
        split_sets.append(([str(chosen[i][0]) for i in order], np.array([chosen[i][1] for i in order], np.int32)))
    (train_texts, train_labels), (test_texts, test_labels) = split_sets
    return Labelled(train_texts, train_labels, test_texts, test_labels, tuple(GENRES))


def _read_table(path: str) -> list[dict]:
    delimiter = "\t" if path.endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        missing = {"text", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: needs a header with 'text' and 'label' columns; missing {sorted(missing)}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path} holds no rows")
    for number, row in enumerate(rows, 2):
        if not row["text"] or row["label"] in (None, ""):
            raise DataError(f"{path}:{number}: empty text or label")
    return rows


def _from_rows(rows: list[dict], source: str, test_rows: list[dict] | None = None) -> Labelled:
    if test_rows is None:
        if "split" in rows[0]:
            unknown = sorted({r["split"] for r in rows} - {"train", "test"})
            if unknown:
                raise DataError(f"{source}: split must be train or test, got {unknown}")
            rows, test_rows = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "test"]
        else:
            rows, test_rows = [r for i, r in enumerate(rows) if i % 5], rows[::5]
    if not rows or not test_rows:
        raise DataError(f"{source}: needs both train and test rows")
    names = tuple(sorted({r["label"] for r in rows + test_rows}, key=_label_order))
    if len(names) < 2:
        raise DataError(f"{source}: needs at least two labels, got {list(names)}")
    index = {name: i for i, name in enumerate(names)}
    return Labelled([r["text"] for r in rows], np.array([index[r["label"]] for r in rows], np.int32),
                    [r["text"] for r in test_rows], np.array([index[r["label"]] for r in test_rows], np.int32), names)


def _label_order(label: str):
    """Integer labels in numeric order, others alphabetically."""
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def _from_directory(directory: str) -> Labelled:
    def find(*stems):
        for stem in stems:
            for ext in (".tsv", ".csv"):
                if os.path.isfile(os.path.join(directory, stem + ext)):
                    return os.path.join(directory, stem + ext)
        raise DataError(f"{directory} holds no {' or '.join(stems)} .tsv/.csv file")

    return _from_rows(_read_table(find("train")), directory, _read_table(find("test", "validation")))


def _from_tfds(name: str, data_dir: str) -> Labelled:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # TFDS raises several types for unknown names
        raise DataError(f"unknown task {name!r}: not shakespeare_genre, sample, a CSV/TSV path or a TFDS name "
                        f"({error})") from None
    if not builder.is_prepared():
        raise DataError(f"TFDS dataset {name!r} is not prepared under {data_dir}; prepare it with "
                        f"`tfds build {name} --data_dir {data_dir}`")
    features = builder.info.features
    text_key = next((k for k in ("sentence", "text", "sentence1") if k in features), None)
    if text_key is None or "label" not in features:
        raise DataError(f"{name} has no sentence/text and label features: {list(features)}")
    sets = []
    for split in ("train", "validation" if "validation" in builder.info.splits else "test"):
        examples = _examples(builder, split)
        sets += [[_text(e[text_key]) for e in examples], np.array([int(e["label"]) for e in examples], np.int32)]
    names = tuple(features["label"].names) if hasattr(features["label"], "names") else ()
    return Labelled(*sets, names or tuple(str(i) for i in range(int(max(sets[1].max(), sets[3].max())) + 1)))


def _examples(builder, split: str) -> list[dict]:
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        source = builder.as_data_source(split=split)
        return [source[i] for i in range(len(source))]
    return list(tfds.as_numpy(builder.as_dataset(split=split)))  # tfrecord: read through tf.data


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)

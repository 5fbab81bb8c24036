"""Datasets by name: the TFDS builder behind a name, and random access to a split.

- `shakespeare` (the bundled corpus), `files:PATH[?options]` (local text) and
  `khop[?options]` (k-hop induction, `odeplm.data.tasks`) are ours, built on
  first use;
- any other name is a TFDS dataset the user has built under `data_dir`
  (`c4/en`, `wikipedia/20230601.en`, `lm1b`).

A text dataset gives texts (`text_source`); a task dataset gives examples that
carry their own targets, weights and group (`example_source`) and brings its
own vocabulary (`task_vocabulary`).
"""

from __future__ import annotations

import contextlib
import io
import sys

import tensorflow_datasets as tfds

from odeplm.data import DataError
from odeplm.data.corpus import Shakespeare, TextFiles, TextFilesConfig
from odeplm.data.tasks import KHop, KHopConfig, KHopOptions
from odeplm.data.tokenizer import Symbols


def builds_locally(dataset: str) -> bool:
    """Our own datasets are small enough to build and prepare on first use; TFDS
    datasets are built by TFDS and prepared once with `train.prepare`."""
    return dataset == "shakespeare" or dataset.startswith("files:") or is_task(dataset)


def is_task(dataset: str) -> bool:
    """Examples made as token ids, with their own targets (not text)."""
    return dataset == "khop" or dataset.startswith("khop?")


def task_vocabulary(dataset: str) -> Symbols:
    if not is_task(dataset):
        raise DataError(f"{dataset!r} is text, not a task: it has no vocabulary of its own")
    KHopOptions.parse(dataset)  # names a bad option before anything is built
    return KHop.vocabulary


def dataset_builder(dataset: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of `dataset`, built first if it is ours."""
    if dataset.startswith("files:"):
        builder = TextFiles(config=TextFilesConfig.parse(dataset), data_dir=data_dir)
    elif dataset == "shakespeare":
        builder = Shakespeare(data_dir=data_dir)
    elif is_task(dataset):
        builder = KHop(config=KHopConfig(KHopOptions.parse(dataset)), data_dir=data_dir)
    else:
        try:
            builder = tfds.builder(dataset, data_dir=data_dir)
        except Exception as error:  # TFDS raises several types for unknown names, with a page of advice
            lines = str(error).splitlines()
            hints = [line for line in lines if line.startswith("Did you mean")]
            said = " ".join(line.strip() for line in lines[:1] + hints)
            raise DataError(f"unknown dataset {dataset!r}: {said}") from None
        if not builder.is_prepared():
            raise DataError(f"dataset {dataset!r} is not prepared under {data_dir}; prepare it with "
                            f"`tfds build {dataset} --data_dir {data_dir} --file_format array_record`")
        return builder
    if not builder.is_prepared():
        try:
            import tensorflow  # noqa: F401  (TFDS serialises examples with it)
        except ImportError:
            raise DataError(f"building {dataset!r} needs TensorFlow: pip install 'odeplm[corpus]'") from None
        # TFDS prints "Downloading and preparing dataset Unknown size" and progress bars for
        # what downloads nothing and takes seconds: one line says it instead
        print(f"building {dataset!r} into {data_dir} (once)", file=sys.stderr)
        tfds.disable_progress_bar()
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(file_format="array_record")
    return builder


def text_source(dataset: str, split: str, data_dir: str, text_key: str = "text") -> "TextColumn":
    """Random-access texts of a split of a text dataset."""
    if is_task(dataset):
        raise DataError(f"{dataset!r} is a task of token ids, not text")
    return TextColumn(dataset_builder(dataset, data_dir).as_data_source(split=split), text_key)


def example_source(dataset: str, split: str, data_dir: str):
    """Random-access examples of a split of a task: dicts of tokens, targets, weights (arrays) and group."""
    if not is_task(dataset):
        raise DataError(f"{dataset!r} is text, not a task of examples")
    return dataset_builder(dataset, data_dir).as_data_source(split=split)


def group_name(dataset: str) -> str | None:
    """What a task's example groups count (`hops`); None for text."""
    return KHop.GROUP_NAME if is_task(dataset) else None


class TextColumn:
    """One text field of a TFDS data source, decoded to str."""

    def __init__(self, source, key: str):
        self.source, self.key = source, key

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> str:
        value = self.source[index][self.key]
        return value.decode("utf-8") if isinstance(value, bytes) else value

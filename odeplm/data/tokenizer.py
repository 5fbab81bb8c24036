"""SentencePiece tokenizer trained on the training split and saved with checkpoints.

Two kinds: `bpe` (byte fallback, so any text encodes; at least 262 pieces) and
`char`, one piece per character of the sample (rarer characters would be
`<unk>`), whose size is what the corpus holds plus the specials.

Special ids are fixed: pad 0, unk 1, bos 2, eos 3, [MASK] 4. Newlines are
pieces of their own and normalisation is the identity, so decoding returns the
text (verse lines included) exactly. `Symbols` is the third kind: a fixed list
of one-character pieces for data that is made as ids (tasks), not trained.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from odeplm.core.inputs import InputError
from odeplm.core.special_ids import BOS, EOS, MASK, PAD, UNK
from odeplm.data import DataError

SPECIAL_COUNT = MASK + 1  # pad, unk, bos, eos, [MASK]

KINDS = ("bpe", "char")
# Characters of text a tokenizer learns from, unless told otherwise; a saved tokenizer's name holds its bound.
TOKENIZER_CHARACTERS = 50_000_000


class Tokenizer:
    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        if self.processor.piece_to_id("[MASK]") != MASK or self.processor.pad_id() != PAD:
            raise DataError("tokenizer: not an odeplm SentencePiece model (pad 0, [MASK] 4 expected)")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, max_characters: int = TOKENIZER_CHARACTERS,
              kind: str = "bpe") -> "Tokenizer":
        """BPE or characters over paragraphs of `texts`, deterministic (no sampling or
        shuffling). A `char` tokenizer holds every character seen, up to `vocab_size` pieces."""
        if kind not in KINDS:
            raise DataError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=_paragraphs(texts, max_characters),
            model_writer=buffer,
            vocab_size=vocab_size,
            model_type=kind,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            user_defined_symbols=["[MASK]", "\n"],
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            character_coverage=1.0,
            byte_fallback=kind == "bpe",
            add_dummy_prefix=kind == "bpe",  # a character tokenizer adds no piece that is not in the text
            hard_vocab_limit=kind == "bpe",
            max_sentence_length=16384,
            num_threads=1,
            minloglevel=2,
        )
        return cls(buffer.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha1(self.proto).hexdigest()[:12]

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in ids if int(i) not in (PAD, BOS, EOS)])

    def to_json(self) -> dict:
        return {"sentencepiece_model": base64.b64encode(self.proto).decode("ascii")}

    @classmethod
    def from_json(cls, values: dict) -> "Tokenizer":
        return cls(base64.b64decode(values["sentencepiece_model"]))


class Symbols:
    """A fixed vocabulary of one-character pieces after the special ids, for data made
    as token ids rather than text (`odeplm.data.tasks`): every character is one id, so
    `encode` and `decode` show a task's sequences as strings."""

    def __init__(self, symbols: str):
        if len(set(symbols)) != len(symbols):
            raise DataError(f"symbols must be distinct, got {symbols!r}")
        self.symbols = symbols
        self._ids = {symbol: SPECIAL_COUNT + i for i, symbol in enumerate(symbols)}

    @property
    def vocab_size(self) -> int:
        return SPECIAL_COUNT + len(self.symbols)

    @property
    def fingerprint(self) -> str:
        return "symbols-" + hashlib.sha1(self.symbols.encode()).hexdigest()[:12]

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            raise InputError(f"characters {unknown} are not in this vocabulary ({self.symbols!r})")
        return [self._ids[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.symbols[i - SPECIAL_COUNT] if i >= SPECIAL_COUNT else "?" if i == UNK else ""
                       for i in map(int, ids))

    def to_json(self) -> dict:
        return {"symbols": self.symbols}


def tokenizer_from_json(values: dict) -> Tokenizer | Symbols:
    """The tokenizer a checkpoint or a dataset saved with `to_json()`."""
    if "symbols" in values:
        return Symbols(values["symbols"])
    return Tokenizer.from_json(values)


def _paragraphs(texts: Iterable[str], max_characters: int):
    total = 0
    for text in texts:
        for paragraph in text.split("\n\n"):
            paragraph = paragraph.strip()
            if paragraph:
                total += len(paragraph)
                yield paragraph
                if total >= max_characters:
                    return

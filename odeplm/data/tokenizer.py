"""SentencePiece tokenizer trained on the training split and saved with checkpoints.

Special ids are fixed: pad 0, unk 1, bos 2, eos 3, [MASK] 4. Newlines are
pieces of their own and normalisation is the identity, so decoding returns the
text (verse lines included) exactly.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterable, Sequence

import sentencepiece as spm

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4


class Tokenizer:
    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        if self.processor.piece_to_id("[MASK]") != MASK or self.processor.pad_id() != PAD:
            raise ValueError("tokenizer: not an odeplm SentencePiece model (pad 0, [MASK] 4 expected)")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, max_characters: int = 50_000_000) -> "Tokenizer":
        """BPE over paragraphs of `texts`, deterministic (no sampling or shuffling)."""
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=_paragraphs(texts, max_characters),
            model_writer=buffer,
            vocab_size=vocab_size,
            model_type="bpe",
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            user_defined_symbols=["[MASK]", "\n"],
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            character_coverage=1.0,
            byte_fallback=True,
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

"""Data: TFDS corpora, the SentencePiece tokenizer, packing, masking and step-indexed batches."""

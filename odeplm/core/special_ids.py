"""The special token ids every odeplm tokenizer has, in one dependency-free place:
decoding and batching need them without loading SentencePiece."""

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4

"""Tokenizes a run's dataset once, before training: the tokenizer (trained on a
bounded sample of the training split), then every split as sharded
array_record token files, by parallel workers. Run it on one host (its workers
use that host's cores); run it again to resume an interrupted prepare; a
finished split is left as it is.

    python -m train.prepare --config configs/demo.py
    python -m train.prepare --config configs/gpt2_small_shared.py --config.data.dataset=c4/en \\
        --config.data.data_dir=/mnt/data --config.data.shards=1024 --config.data.workers=64

TFDS datasets are first built by TFDS itself (`tfds build c4/en --data_dir ...
--file_format array_record`). Exit status 2 for bad input.
"""

from __future__ import annotations

import time

from absl import flags

from odeplm.cli import config_flag, run

flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from odeplm.data.prepared import prepare
    from odeplm.runs.settings import TrainSettings

    config = FLAGS.config
    start = time.perf_counter()
    settings = TrainSettings.from_config(config)
    prepared = prepare(settings.dataset, settings.data_dir, config.model.vocab_size, shards=settings.shards,
                       workers=settings.workers, sample_characters=settings.tokenizer_characters,
                       kind=settings.tokenizer)
    for split, files in prepared.items():
        print(f"{settings.dataset} {split}: {files.tokens:,} tokens in {len(files.shards)} shards at {files.directory}")
    print(f"prepared in {time.perf_counter() - start:.1f} s")


def entry():
    run(main, flags_parser=config_flag.parse)

"""Data-pipeline throughput and memory at corpus scale: tokens/s one process
reads, and its peak RSS, from a small and a large generated token corpus, set
against what training consumes per host.

    python -m eval.data_speed --out results/data_speed.json
    python -m eval.data_speed --sizes 10MB,1GB,10GB --rounds 3
    python -m eval.data_speed --sizes 1GB --shards 16,1024   # records per shard set an offloaded lookup's cost
    python -m eval.data_speed --shuffle_blocks 16,0          # 16 blocks at a time, read in sequence, or uniform

Each corpus is written once under --corpora with the library's own shard
writer (random token ids, gpt2_small_shared's vocabulary), in each of the
--shards counts. Every read runs in a fresh process, corpora and readers
interleaved round by round, through the Trainer's
reader: `Batches.iterate` over `TokenWindows` (or `ShuffledBlocks`, timed over
at least three groups so that their reads are counted), with this host's slice of
gpt2_small_shared's global batch. Training's consumption per host is
chips per host x bf16 peak x the assumed MFU / training FLOPs per token, at
the recipe's fewest steps (the fastest step eats tokens fastest).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import flags

from odeplm.cli import fail, run

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "write the figures as JSON here")
flags.DEFINE_string("sizes", "10MB,1GB", "corpus sizes (token bytes)")
flags.DEFINE_string("shards", "16", "shard counts each corpus is written in")
flags.DEFINE_integer("rounds", 3, "interleaved rounds of reads")
flags.DEFINE_integer("steps", 40, "batches timed per read")
flags.DEFINE_string("corpora", os.path.join(os.path.expanduser("~"), ".cache", "odeplm_data_speed"),
                    "where the generated corpora are written (kept for the next run)")
flags.DEFINE_string("topology", "v5e:4x4", "the pod whose per-host batch and chips set the consumption")
flags.DEFINE_float("mfu", 0.5, "model-FLOPs utilisation assumed for training's consumption")
flags.DEFINE_integer("threads", None, "reader threads per process (default: the config's data.read_threads)")
flags.DEFINE_enum("index", None, ["offloaded", "in_memory"], "record index (default: the config's data.record_index)")
flags.DEFINE_string("shuffle_blocks", None, "readers to compare: windows drawn K blocks at a time, each read in "
                    "sequence, or 0: uniformly through the record index (default: the config's data.shuffle_blocks)")
flags.DEFINE_string("read", None, "internal: read this corpus directory and print one JSON line")

FINGERPRINT = "generated"
UNITS = {"MB": 10**6, "GB": 10**9}


def parse_size(text: str) -> int:
    number, unit = text[:-2], text[-2:].upper()
    if unit not in UNITS or not number.isdigit():
        fail(f"--sizes: {text!r} is not like 10MB or 1GB")
    return int(number) * UNITS[unit]


def parse_blocks(text: str) -> int:
    if not text.strip().isdigit():
        fail(f"--shuffle_blocks: {text!r} is not a number of blocks (0: uniform windows)")
    return int(text)


def parse_shards(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        fail(f"--shards: {text!r} is not a positive number of shards")
    return int(text)


def training_demand(topology_name: str, mfu: float) -> dict:
    """gpt2_small_shared's per-host batch, and the tokens/s one host consumes."""
    from configs import gpt2_small_shared
    from odeplm.core.config import ModelConfig
    from odeplm.core.flops import training_flops_per_token
    from odeplm.runs.settings import TrainSettings
    from odeplm.training.topology import Topology

    config = gpt2_small_shared.get_config()
    model, settings = ModelConfig.from_dict(config.model), TrainSettings.from_config(config)
    topology = Topology.parse(topology_name)
    chips_per_host = int(np.prod(topology.generation.chips_per_host))
    hosts = max(1, topology.chips // chips_per_host)
    nfe = min(settings.discretisation.nfe(model.depth, steps) for steps in settings.discretisation.steps or (None,))
    flops_per_token = training_flops_per_token(model, nfe, model.max_length)
    tokens_per_second = chips_per_host * topology.generation.peak_bf16_flops * mfu / flops_per_token
    return {"config": "gpt2_small_shared", "topology": topology.name, "hosts": hosts,
            "host_batch": settings.batch_size // hosts, "length": model.max_length, "vocab_size": model.vocab_size,
            "read_threads": settings.read_threads, "record_index": settings.record_index,
            "shuffle_blocks": settings.shuffle_blocks, "nfe": nfe,
            "mfu": mfu,
            "training_tokens_per_second_per_host": tokens_per_second}


def generate(directory: str, size: int, shards: int, vocab_size: int) -> None:
    """A corpus of `size` bytes of uint16 token ids in `shards` shards, written piece by piece."""
    from odeplm.data.prepared import RECORD_TOKENS, count_tokens, write_manifest, write_shard

    if os.path.exists(os.path.join(directory, "manifest.json")):
        return
    os.makedirs(directory, exist_ok=True)
    dtype = np.dtype(np.uint16)
    per_shard = size // dtype.itemsize // shards
    rng = np.random.default_rng(0)

    def pieces(count):
        for start in range(0, count, 1 << 20):
            yield rng.integers(5, vocab_size, min(1 << 20, count - start), dtype=np.uint16)

    names = [f"shard-{k:05d}-of-{shards:05d}.array_record" for k in range(shards)]
    for name in names:
        write_shard(os.path.join(directory, name), pieces(per_shard), dtype)
    counts = [count_tokens(os.path.join(directory, name), dtype) for name in names]
    write_manifest(directory, names, counts, dtype, RECORD_TOKENS, FINGERPRINT)


def read(directory: str, steps: int, host_batch: int, length: int, vocab_size: int, threads: int,
         index: str, shuffle_blocks: int) -> dict:
    """Reads `steps` batches as process 0 of a host would; tokens/s and peak RSS."""
    from odeplm.data.blocks import ShuffledBlocks
    from odeplm.data.pipeline import Batches
    from odeplm.data.prepared import TokenFiles, TokenWindows

    files = TokenFiles.read(directory, FINGERPRINT)
    if shuffle_blocks:
        windows = ShuffledBlocks(files, length, seed=0, group=shuffle_blocks)
        group_windows = min(len(windows), shuffle_blocks * windows.block_windows)
        steps = max(steps, -(-3 * group_windows // host_batch))
    else:
        windows = TokenWindows(files, length, index)
    batches = Batches(windows, host_batch, "causal", vocab_size, seed=0)
    reader = batches.iterate(0, threads=threads)
    for _ in range(3):  # threads started, first records read
        next(reader)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(reader)
    seconds = time.perf_counter() - start
    assert batch["tokens"].shape == (host_batch, length)
    return {"tokens_per_second": steps * host_batch * length / seconds, "windows": len(windows), "steps": steps,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv):
    del argv
    demand = training_demand(FLAGS.topology, FLAGS.mfu)
    threads = FLAGS.threads or demand["read_threads"]
    index = FLAGS.index or demand["record_index"]
    readers = [parse_blocks(k) for k in (FLAGS.shuffle_blocks or str(demand["shuffle_blocks"])).split(",")]
    if FLAGS.read:
        print(json.dumps(read(FLAGS.read, FLAGS.steps, demand["host_batch"], demand["length"],
                              demand["vocab_size"], threads, index, readers[0])))
        return
    # every flag checked before anything is written
    sizes = {size.strip(): parse_size(size.strip()) for size in FLAGS.sizes.split(",")}
    corpora = [(size, parse_shards(shards)) for size in sizes for shards in FLAGS.shards.split(",")]
    directories = {(size, shards): os.path.join(FLAGS.corpora, f"{size}-{shards}shards") for size, shards in corpora}
    for (size, shards), directory in directories.items():
        generate(directory, sizes[size], shards, demand["vocab_size"])
    cases = [(blocks, corpus) for blocks in readers for corpus in corpora]
    runs = {case: [] for case in cases}
    for _ in range(FLAGS.rounds):
        for blocks, corpus in cases:
            command = [sys.executable, "-m", "eval.data_speed", f"--read={directories[corpus]}",
                       f"--steps={FLAGS.steps}", f"--topology={FLAGS.topology}", f"--mfu={FLAGS.mfu}",
                       f"--threads={threads}", f"--index={index}", f"--shuffle_blocks={blocks}"]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[blocks, corpus].append(json.loads(out.strip().splitlines()[-1]))
    need = demand["training_tokens_per_second_per_host"]
    print(f"{demand['config']} on {demand['topology']}: {demand['host_batch']} x {demand['length']} tokens per host "
          f"per step; training consumes {need:,.0f} tokens/s per host at NFE {demand['nfe']} and "
          f"{demand['mfu']:.0%} MFU; {threads} reader threads, {os.cpu_count()} cores")
    print("| reader | corpus | shards | windows | tokens/s per process (median) | x training's need | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for blocks, (size, shards) in cases:
        found = runs[blocks, (size, shards)]
        speed = float(np.median([r["tokens_per_second"] for r in found]))
        rss = max(r["peak_rss_bytes"] for r in found)
        reader = f"{blocks} blocks at a time" if blocks else f"uniform, {index} index"
        rows.append({"reader": reader, "shuffle_blocks": blocks, "size": size, "shards": shards,
                     "windows": found[0]["windows"], "tokens_per_second": speed, "ratio_to_training": speed / need,
                     "peak_rss_bytes": rss, "runs": found})
        print(f"| {reader} | {size} | {shards} | {rows[-1]['windows']:,} | {speed:,.0f} | {speed / need:.1f} | "
              f"{rss / 2**20:.0f} |")
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            json.dump({"demand": demand, "threads": threads, "record_index": index, "cores": os.cpu_count(),
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    run(main)

"""Training throughput: tokens/s and model-FLOPs utilisation (MFU) against the
matmul peak of this machine, measured in the same run.

    python -m eval.train_speed --out results/train_speed.json
    python -m eval.train_speed --dtype bfloat16      # on an accelerator

The step is the trainer's own jitted `train_step` (AdamW, clipping) on random
tokens, so data loading is not timed. Defaults: width 512, 6 steps of one
shared block, batch 16 x 128 tokens.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

import odeplm
from odeplm.cli import run
from odeplm.core.flops import training_flops_per_token
from odeplm.evaluation.timing import compile_timed, measure
from odeplm.training.metrics import measure_matmul_peak
from odeplm.training.optim import learning_rate_schedule, make_optimizer
from odeplm.training.program import train_step

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 512, "model width")
flags.DEFINE_integer("layers", 6, "training steps of the shared block")
flags.DEFINE_integer("batch", 16, "sequences per step")
flags.DEFINE_integer("seq", 128, "tokens per sequence")
flags.DEFINE_integer("vocab", 2048, "vocabulary size")
flags.DEFINE_string("dtype", "float32", "compute dtype (float32 or bfloat16)")
flags.DEFINE_integer("rounds", 10, "timed steps")
flags.DEFINE_string("out", "results/train_speed.json", "where to write the JSON figures")


def main(argv):
    del argv
    config = odeplm.ModelConfig(
        vocab_size=FLAGS.vocab, width=FLAGS.width, heads=FLAGS.width // 64, mlp_width=4 * FLAGS.width,
        max_length=FLAGS.seq, depth=str(FLAGS.layers), objective="causal", dtype=FLAGS.dtype,
    )
    graphdef, params = nnx.split(odeplm.LanguageModel(config, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(params)
    schedule = learning_rate_schedule(1e-3, 10, 1000)
    optimizer = make_optimizer(schedule, weight_decay=0.01, clip_norm=1.0)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}
    tokens = np.random.default_rng(0).integers(5, FLAGS.vocab, (FLAGS.batch, FLAGS.seq + 1)).astype(np.int32)
    batch = {"tokens": tokens[:, :-1], "padding_mask": np.ones((FLAGS.batch, FLAGS.seq), bool),
             "targets": tokens[:, 1:], "weights": np.ones((FLAGS.batch, FLAGS.seq), np.float32)}
    step = functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, schedule=schedule,
                             solves=odeplm.plan_solves(config.depth), accum=1, dropout=False)
    compiled = compile_timed(step, state, batch, jax.random.key(0))
    peak = measure_matmul_peak(dtype=jnp.dtype(FLAGS.dtype))
    timing = measure({"step": compiled}, FLAGS.rounds)["step"]
    tokens_per_step = FLAGS.batch * FLAGS.seq
    flops_per_step = training_flops_per_token(config, config.layers, FLAGS.seq) * tokens_per_step
    report = {
        "shape": {"width": FLAGS.width, "layers": FLAGS.layers, "batch": FLAGS.batch, "seq": FLAGS.seq,
                  "vocab": FLAGS.vocab, "dtype": FLAGS.dtype},
        "backend": jax.default_backend(), "devices": jax.device_count(), "cpus": os.cpu_count(),
        "step_seconds": timing.latency_s, "tokens_per_second": tokens_per_step / timing.latency_s,
        "model_flops_per_step": flops_per_step, "achieved_flops": flops_per_step / timing.latency_s,
        "matmul_peak_flops": peak, "mfu": flops_per_step / timing.latency_s / peak,
    }
    print(f"{FLAGS.dtype} width {FLAGS.width}: {report['tokens_per_second']:.0f} tokens/s, "
          f"{report['achieved_flops'] / 1e9:.1f} GFLOP/s of a measured matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s: MFU {report['mfu']:.1%}")
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    run(main)

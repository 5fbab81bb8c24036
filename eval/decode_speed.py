"""Decode throughput with the KV cache per (solver, steps): time per token
against function evaluations per token.

    python -m eval.decode_speed --out results/decode_speed.json

Times one cached decode step (batch x 1 new token, a cache of `slots`) per
solve, interleaved; reports tokens/s and time per token over NFE, relative to
Euler at the training steps.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

import odeplm
from odeplm.cli import run
from odeplm.core.solvers import fixed_nfe
from odeplm.evaluation.timing import Compiled, measure, paired_ratio
from odeplm.inference.generate import decode, empty_cache

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 256, "model width")
flags.DEFINE_integer("layers", 12, "training steps of the shared block")
flags.DEFINE_integer("batch", 8, "sequences decoded together")
flags.DEFINE_integer("slots", 256, "cache length (prompt plus generated tokens)")
flags.DEFINE_integer("rounds", 20, "timed rounds (medians reported)")
flags.DEFINE_string("out", "results/decode_speed.json", "where to write the JSON figures")

SOLVES = ["euler:1", "euler:2", "euler:3", "euler:4", "euler:6", "euler:12", "midpoint:3", "heun:3", "rk4:2",
          "bosh3:2"]


def decode_step(model, token, positions, valid, index, solves) -> Compiled:
    """One cached decode step whose (donated) cache is threaded from call to call, as in generation."""
    cache = {"value": empty_cache(model, solves, token.shape[0], valid.shape[1])}
    start = time.perf_counter()
    step = jax.jit(decode, static_argnums=(6,), donate_argnums=(4,)).lower(
        model, token, positions, valid, cache["value"], index, solves).compile()
    compile_s = time.perf_counter() - start

    def run():
        logits, cache["value"] = step(model, token, positions, valid, cache["value"], index)
        return jax.block_until_ready(logits)

    return Compiled(run, compile_s)


def main(argv):
    del argv
    config = odeplm.ModelConfig(vocab_size=1024, width=FLAGS.width, heads=FLAGS.width // 64,
                                mlp_width=4 * FLAGS.width, max_length=FLAGS.slots, depth=str(FLAGS.layers))
    model = odeplm.LanguageModel(config, rngs=nnx.Rngs(0))
    token = jnp.full((FLAGS.batch, 1), 7, jnp.int32)
    index = FLAGS.slots // 2  # half the cache filled
    valid = jnp.asarray(np.arange(FLAGS.slots)[None].repeat(FLAGS.batch, 0) <= index)
    positions = jnp.full((FLAGS.batch, 1), index, jnp.int32)
    compiled, nfe = {}, {}
    for text in SOLVES:
        solves = odeplm.plan_solves(config.depth, text)
        compiled[text] = decode_step(model, token, positions, valid, index, solves)
        nfe[text] = fixed_nfe(config.depth, solves, cached=True)
    times = measure(compiled, FLAGS.rounds)
    reference = f"euler:{FLAGS.layers}"
    rows = []
    print(f"{'solve':<12}{'NFE':>5}{'ms/token':>10}{'tokens/s':>10}{'(t/NFE) / (t_L/L)':>20}")
    for text in SOLVES:
        per_nfe = paired_ratio(times[text], times[reference]) * nfe[reference] / nfe[text]
        row = {"solve": text, "nfe": nfe[text], "seconds_per_step": times[text].latency_s,
               "tokens_per_second": FLAGS.batch / times[text].latency_s, "time_per_nfe_ratio": per_nfe}
        rows.append(row)
        print(f"{text:<12}{nfe[text]:>5}{row['seconds_per_step'] * 1e3:>10.2f}{row['tokens_per_second']:>10.0f}"
              f"{per_nfe:>20.3f}")
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump({"shape": {"width": FLAGS.width, "layers": FLAGS.layers, "batch": FLAGS.batch,
                             "slots": FLAGS.slots}, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    run(main)

"""Forward latency, NFE and compile time per (solver, steps); diffrax against a
hand-written lax.scan Euler of the same block.

    python -m eval.speed --out results/speed.json

Every ratio compares functions timed interleaved within one run. Flags set the
shape; defaults are a width-256, 12-step fully shared causal LM on 8 x 128 tokens.
"""

from __future__ import annotations

import json
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

import odeplm
from odeplm.cli import run
from odeplm.core.block import attention_mask
from odeplm.evaluation.timing import compile_timed, measure, paired_ratio

FLAGS = flags.FLAGS
flags.DEFINE_integer("width", 256, "model width")
flags.DEFINE_integer("layers", 12, "training steps of the fully shared block (L)")
flags.DEFINE_integer("batch", 8, "batch size")
flags.DEFINE_integer("seq", 128, "sequence length")
flags.DEFINE_integer("rounds", 20, "timed rounds over the grid (medians reported)")
flags.DEFINE_integer("reference_rounds", 40, "timed rounds of diffrax against scan")
flags.DEFINE_string("out", "results/speed.json", "where to write the JSON figures")

EULER_STEPS = (1, 2, 3, 4, 6, 12, 24, 48)
GRID = (
    [f"euler:{n}" for n in EULER_STEPS]
    + [f"{s}:{n}" for s in ("midpoint", "heun", "ralston") for n in (3, 6)]
    + ["bosh3:2", "bosh3:4", "rk4:3", "tsit5:2", "dopri5:2"]
    + [f"{s}:rtol=1e-2:atol=1e-2" for s in ("heun", "bosh3", "tsit5", "dopri5")]
)


def scan_euler(block, h, mask, steps: int, span: float):
    """The reference loop: h <- h + dt * (Phi(h) - h), written with lax.scan."""
    dt = span / steps

    def step(h, _):
        return h + dt * (block(h, mask) - h), None

    return jax.lax.scan(step, h, None, length=steps)[0]


def diffrax_euler(block, h, mask, steps: int, span: float):
    return odeplm.integrate(block, h, mask, span=span, solve=odeplm.Solve("euler", steps))[0]


def main(argv):
    del argv
    layers = FLAGS.layers
    config = odeplm.ModelConfig(
        vocab_size=1024, width=FLAGS.width, heads=FLAGS.width // 64, mlp_width=4 * FLAGS.width,
        max_length=FLAGS.seq, depth=str(layers), objective="causal",
    )
    model = odeplm.LanguageModel(config, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (FLAGS.batch, FLAGS.seq)))
    block = model.encoder.blocks[0]
    h = model.encoder.embeddings(tokens)
    mask = attention_mask(jnp.ones(tokens.shape, bool), causal=True)
    weights = jax.random.normal(jax.random.key(1), h.shape, h.dtype)

    # Whole model at every grid point.
    forward = lambda model, tokens, solves: model(tokens, solve=solves)  # noqa: E731
    models = {text: compile_timed(forward, model, tokens, odeplm.plan_solves(config.depth, text), static_argnums=(2,))
              for text in GRID}
    # The solve alone (no embeddings or vocabulary head), Euler at every step count.
    solves = {n: compile_timed(lambda b, h, n=n: diffrax_euler(b, h, mask, n, float(layers)), block, h)
              for n in EULER_STEPS}
    # diffrax against lax.scan, forward and forward+backward, at N = L.
    forwards, backwards = {}, {}
    for name, integrate in (("diffrax", diffrax_euler), ("scan", scan_euler)):
        run = lambda b, h, integrate=integrate: integrate(b, h, mask, layers, float(layers))  # noqa: E731
        loss = lambda b, h, run=run: jnp.sum(run(b, h) * weights)  # noqa: E731
        forwards[name] = compile_timed(run, block, h)
        backwards[name] = compile_timed(jax.grad(loss, argnums=(0, 1)), block, h)

    model_times = measure(models, FLAGS.rounds)
    solve_times = measure({str(n): c for n, c in solves.items()}, FLAGS.rounds)
    forward_times = measure(forwards, FLAGS.reference_rounds)
    backward_times = measure(backwards, FLAGS.reference_rounds)

    rows = []
    print(f"{'solve':<28}{'NFE':>5}{'latency ms':>12}{'spread':>8}{'compile s':>11}")
    for text, compiled in models.items():
        out = compiled.run()
        timing = model_times[text]
        rows.append({"solve": text, "nfe": int(out.nfe), "ok": bool(out.ok), **timing._asdict()})
        print(f"{text:<28}{int(out.nfe):>5}{timing.latency_s * 1e3:>12.1f}{timing.spread:>8.2f}"
              f"{timing.compile_s:>11.2f}")

    scaling = [
        {
            "steps": n,
            "nfe_ratio": n / layers,
            "solve_latency_ratio": paired_ratio(solve_times[str(n)], solve_times[str(layers)]),
            "model_latency_ratio": paired_ratio(model_times[f"euler:{n}"], model_times[f"euler:{layers}"]),
        }
        for n in EULER_STEPS
    ]
    against_scan = {
        "forward_ratio": paired_ratio(forward_times["diffrax"], forward_times["scan"]),
        "forward_backward_ratio": paired_ratio(backward_times["diffrax"], backward_times["scan"]),
        "seconds": {
            **{f"{name}_forward": t.latency_s for name, t in forward_times.items()},
            **{f"{name}_forward_backward": t.latency_s for name, t in backward_times.items()},
        },
    }
    compile_ratio = solves[48].compile_s / solves[6].compile_s

    print(f"\nEuler latency(N) / latency(L={layers}) against N / L (solve alone; whole model):")
    for item in scaling:
        print(f"  N={item['steps']:>2}  {item['nfe_ratio']:.3f}   solve {item['solve_latency_ratio']:.3f} "
              f"({item['solve_latency_ratio'] / item['nfe_ratio'] - 1:+.1%})   model {item['model_latency_ratio']:.3f}")
    print(f"diffrax / scan Euler at N=L: forward {against_scan['forward_ratio']:.3f}, "
          f"forward+backward {against_scan['forward_backward_ratio']:.3f}")
    print(f"solve compile time at N=48 / N=6: {compile_ratio:.2f}")

    report = {
        "shape": {"batch": FLAGS.batch, "seq": FLAGS.seq, "width": FLAGS.width, "layers": layers},
        "machine": {"backend": jax.default_backend(), "devices": jax.device_count(), "cpus": os.cpu_count(),
                    "processor": platform.processor(), "jax": jax.__version__},
        "rounds": FLAGS.rounds,
        "grid": rows,
        "euler_scaling": scaling,
        "diffrax_over_scan": against_scan,
        "solve_compile_ratio_48_over_6": compile_ratio,
    }
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    run(main)

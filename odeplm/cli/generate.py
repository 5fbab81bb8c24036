"""Generates text from a causal checkpoint with a KV cache, at any fixed-step solve.

    python -m eval.generate --checkpoint runs/demo --prompt "ROMEO." --solver euler --steps 2
    python -m eval.generate --checkpoint runs/demo --prompt "KING." --prompt "Enter" --temperature 0.8 --top_p 0.9
"""

from __future__ import annotations

from absl import flags

from odeplm.cli import run

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "pre-training workdir or checkpoint directory")
flags.DEFINE_multi_string("prompt", ["ROMEO.\n"], "prompt text (repeat for a batch)")
flags.DEFINE_string("solver", "euler", "fixed-step solver")
flags.DEFINE_integer("steps", None, "steps per segment (default: the training steps)")
flags.DEFINE_integer("max_new_tokens", None, "tokens to generate per prompt (default: as many as the model's "
                     "context leaves after the longest prompt, at most 64)")
flags.DEFINE_float("temperature", 0.0, "0 for greedy")
flags.DEFINE_integer("top_k", 0, "sample from the k most likely tokens (0: all)")
flags.DEFINE_float("top_p", 1.0, "sample from the smallest set with this probability")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
    del argv
    import odeplm
    from odeplm.core.solvers import fixed_nfe, plan_label
    from odeplm.evaluation.checkpoint_grid import load_with_tokenizer
    from odeplm.inference.generate import Sampling, generate

    loaded = load_with_tokenizer(FLAGS.checkpoint)
    prompts = [text.replace("\\n", "\n") for text in FLAGS.prompt]
    depth = loaded.model.config.depth
    plan = odeplm.plan_solves(depth, odeplm.Solve(FLAGS.solver, FLAGS.steps))
    encoded = [loaded.tokenizer.encode(p) for p in prompts]
    room = loaded.model.config.max_length - max(map(len, encoded))
    outputs = generate(
        loaded.model, encoded, max_new_tokens=FLAGS.max_new_tokens or max(1, min(64, room)),
        solve=plan, sampling=Sampling(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p), seed=FLAGS.seed,
    )
    label = f"{plan_label(plan)} (NFE {fixed_nfe(depth, plan)})"
    for prompt, ids in zip(prompts, outputs):
        print(f"--- {label}\n{prompt}{loaded.tokenizer.decode(ids)}")


def entry():
    run(main)

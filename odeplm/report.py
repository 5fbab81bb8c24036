"""What pre-training prints at the end: the accuracy-versus-speed table and a
look at the model's output (a sample, or masked-token predictions)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from odeplm.evaluate import evaluate
from odeplm.model import forward
from odeplm.generate import Sampling, cacheable, generate
from odeplm.solvers import fixed_nfe, parse_plan, plan_solves


def validation_table(trainer, solves: str) -> tuple[list[dict], str]:
    """Validation metrics for each comma-separated solve in `solves`, one applied to every segment."""
    config = trainer.model_config
    params = trainer.state["params"]
    rows = []
    for solve in parse_plan(solves):
        plan = plan_solves(config.depth, solve)
        metrics = evaluate(trainer.graphdef, params, trainer.validation_batches, plan, trainer.settings.eval_batches)
        rows.append({"solve": str(plan[0]) if len(plan) == 1 else ",".join(map(str, plan)), **metrics})
    base = rows[0]
    lines = [f"validation ({config.objective} LM, L = {config.layers}, {trainer.settings.eval_batches} batches)",
             f"{'solve':<12}{'NFE':>6}{'loss':>9}{'Δ loss':>9}{'accuracy':>10}{'ms/batch':>10}{'speed-up':>10}"]
    for row in rows:
        lines.append(f"{row['solve']:<12}{row['nfe']:>6.0f}{row['loss']:>9.4f}{row['loss'] - base['loss']:>+9.4f}"
                     f"{row['accuracy']:>10.3f}{row['seconds_per_batch'] * 1e3:>10.1f}"
                     f"{base['seconds_per_batch'] / row['seconds_per_batch']:>9.2f}x")
    return rows, "\n".join(lines)


def show_outputs(trainer, solves: str, prompt: str = "ROMEO.\n") -> str:
    """Continuations of `prompt` sampled at temperature 0.7 (causal) or predictions for masked tokens of a
    validation passage (masked), at the full depth and the cheapest listed solve."""
    model = nnx.merge(trainer.graphdef, trainer.state["params"])
    tokenizer = trainer.tokenizer
    plans = parse_plan(solves)
    fixed = [s for s in plans if not s.adaptive]
    cheapest = min(fixed, key=lambda s: fixed_nfe(model.config.depth, s)) if fixed else plans[0]
    lines = []
    for solve in dict.fromkeys((plans[0], cheapest)):
        plan = plan_solves(model.config.depth, solve)
        label = ",".join(map(str, plan)) + ("" if solve.adaptive else f" (NFE {fixed_nfe(model.config.depth, plan)})")
        if model.config.objective == "causal":
            prompt_ids = tokenizer.encode(prompt)
            (ids,) = generate(model, [prompt_ids], max_new_tokens=min(48, model.config.max_length - len(prompt_ids)),
                              solve=plan, sampling=Sampling(temperature=0.7), cached=cacheable(plan))
            lines.append(f"--- sample at {label}\n{prompt}{tokenizer.decode(ids)}")
        else:
            batch = trainer.validation_batches.batch(0)
            tokens, targets, chosen = batch["tokens"][:1], batch["targets"][0], batch["weights"][0] > 0
            predicted = np.asarray(forward(model, tokens, batch["padding_mask"][:1], solve=solve).logits[0].argmax(-1))
            shown = [tokenizer.decode([t]) if not c else f"[{tokenizer.decode([p])}|{tokenizer.decode([t])}]"
                     for t, p, c in zip(targets[:48], predicted[:48], chosen[:48])]
            lines.append(f"--- masked predictions at {label} ([predicted|original]):\n" + "".join(shown))
    return "\n".join(lines)

"""The accuracy-versus-speed table printed after pre-training."""

from __future__ import annotations

from odeplm.evaluate import evaluate
from odeplm.solvers import parse_plan, plan_solves


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

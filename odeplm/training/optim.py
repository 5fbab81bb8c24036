"""AdamW with linear warm-up and cosine decay, global-norm clipping, and no
weight decay on biases, norms and other vectors."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=max(warmup_steps, 1),
        decay_steps=max(total_steps, warmup_steps + 1), end_value=peak * 0.1,
    )


def make_optimizer(schedule: optax.Schedule, *, weight_decay: float, clip_norm: float,
                   b1: float = 0.9, b2: float = 0.98) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                    mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)),
    )

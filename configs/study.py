"""The models of the study in docs/results.md, one per name:

    python -m train.pretrain --config configs/study.py:causal_random --workdir runs/study/causal_random

All share one size (width 128, L = 8 layer applications, batch 16 x 128 tokens,
vocabulary 1024) and one number of optimizer steps; they differ in depth plan,
objective, layer norm placement and training discretisation:

- recipes (`causal_*`, fully shared): `plain` (tau = 1, N = L), `fine` (N = 2L,
  tau = 1/2), `random` (N drawn uniformly from {2, 3, 4, 6, 8} per batch) and
  `mix` (ours: N drawn from the served speeds {2, 4, 8} only, full depth twice
  as often, so the block learns exactly the coarse steps it will run at without
  losing full-depth quality);
- dedicated-depth baselines `*_depth4`, `*_depth2`: plain models of N layers;
- sharing: `seg4_*`, four blocks of two steps each (`seg4_depth4`: four
  unshared layers, its dedicated baseline at 4 evaluations);
- objectives: `masked_post_*` (ALBERT-style Post-LN) and `masked_pre_*` (Pre-LN).
"""

from configs import base

_RECIPES = {"plain": ("", ""), "fine": ("", ""), "random": ("2,3,4,6,8", ""), "mix": ("2,4,8", "1,1,2")}

MODELS = {
    "causal_plain": ("causal", "pre", "8", "plain"),
    "causal_fine": ("causal", "pre", "16@8", "fine"),
    "causal_random": ("causal", "pre", "8", "random"),
    "causal_mix": ("causal", "pre", "8", "mix"),
    "causal_depth4": ("causal", "pre", "4", "plain"),
    "causal_depth2": ("causal", "pre", "2", "plain"),
    "seg4_plain": ("causal", "pre", "4x2", "plain"),
    "seg4_mix": ("causal", "pre", "4x2", "seg_mix"),
    "seg4_depth4": ("causal", "pre", "4x1", "plain"),
    "masked_post_plain": ("masked", "post", "8", "plain"),
    "masked_post_mix": ("masked", "post", "8", "mix"),
    "masked_post_depth4": ("masked", "post", "4", "plain"),
    "masked_post_depth2": ("masked", "post", "2", "plain"),
    "masked_pre_plain": ("masked", "pre", "8", "plain"),
    "masked_pre_mix": ("masked", "pre", "8", "mix"),
}

STEPS = 1200


def get_config(name: str = "causal_plain"):
    if name not in MODELS:
        raise ValueError(f"unknown study model {name!r}; known: {sorted(MODELS)}")
    objective, norm, depth, recipe = MODELS[name]
    # four segments serve 4 and 8 evaluations with 1 or 2 steps each, full depth twice as often
    step_counts, step_weights = ("1,2", "1,2") if recipe == "seg_mix" else _RECIPES[recipe]
    config = base.get_config()
    config.model.update(vocab_size=1024, width=128, heads=4, mlp_width=512, max_length=128, embedding_size=128,
                        depth=depth, objective=objective, norm=norm)
    config.train.update(steps=STEPS, batch_size=16, learning_rate=2e-3, warmup_steps=60, log_every=50,
                        eval_batches=16, step_counts=step_counts, step_weights=step_weights)
    config.checkpoint.update(every=STEPS, keep=1)
    config.eval.solves = "euler"
    return config

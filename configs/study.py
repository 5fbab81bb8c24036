"""The models of the study in docs/results.md, one per name:

    python -m train.pretrain --config configs/study.py:sandwich --workdir runs/study/sandwich

The regime (chosen by the search in docs/results.md): character-level tokens
of the bundled Shakespeare (89 pieces), width 64, context 128, batches of
32 x 128 characters, 2000 AdamW steps at 2e-3 (8.2 M characters); every model
is fully shared (one block) and causal unless its name says otherwise, with
L = 8 block applications. The names:

- dedicated depths `depth8`, `depth4`, `depth2`: plain models trained at the
  depth they serve (tau = 1, N = L);
- the k-hop study's winner for deep shared models, a depth curriculum (2, 3, ..., L layers, each for an equal
  share of the first 1000 steps, then L): `depth8_curriculum`, `depth4_curriculum` (at L = 2 the curriculum
  is the plain model);
- today's recipes: `random` (N drawn uniformly from {2, 4, 8} per batch);
- the sandwich rule (`odeplm.runs.recipe.Distillation`): every batch trains full
  depth on the labels and N = 2 and 4 on half labels, half the full-depth
  model's detached predictions (`sandwich`); variants weight the coarse terms
  more heavily (`sandwich_heavy`), add hidden-state distillation
  (`sandwich_hidden`), make the field time-aware (`sandwich_time`), or both
  weight the coarse terms and make the field time-aware (`sandwich_time_heavy`),
  or train the coarse terms with the midpoint method at 1 and 2 steps (NFE 2
  and 4) on the time-aware field (`sandwich_time_midpoint`);
- masked models, Post-LN (ALBERT) and Pre-LN: `masked_post_depth{8,4,2}`,
  `masked_pre_depth{8,4,2}`, `masked_post_sandwich`, and `masked_post_ln_euler`,
  trained with the step inside the LayerNorms (solver `ln_euler`) on the
  sandwich rule. Post-LN models train at 1e-3 with 200 warm-up steps.

`NAME_seedK` is model NAME trained with seed K (initialisation and data order).
"""

from odeplm.runs.settings import default_config

_SANDWICH = dict(distill_steps="2,4")
_POST_LN = dict(learning_rate=1e-3, warmup_steps=200)  # Post-LN's gradients near the output are large early on
MODELS = {
    "depth8": ({}, {}),
    "depth4": (dict(depth="4"), {}),
    "depth2": (dict(depth="2"), {}),
    "depth8_curriculum": ({}, dict(step_counts="2,3,4,5,6,7,8", step_weights="0,0,0,0,0,0,1", step_mode="depth",
                                   curriculum_steps=1000)),
    "depth4_curriculum": (dict(depth="4"), dict(step_counts="2,3,4", step_weights="0,0,1", step_mode="depth",
                                                curriculum_steps=1000)),
    "random": ({}, dict(step_counts="2,4,8")),
    "sandwich": ({}, _SANDWICH),
    "sandwich_heavy": ({}, dict(_SANDWICH, distill_weights="2,1")),
    "sandwich_hidden": ({}, dict(_SANDWICH, distill_hidden_weight=1.0)),
    "sandwich_time": (dict(time_features=16), _SANDWICH),
    "sandwich_time_heavy": (dict(time_features=16), dict(_SANDWICH, distill_weights="2,1")),
    "sandwich_time_midpoint": (dict(time_features=16), dict(distill_steps="1,2", distill_weights="2,1",
                                                            distill_solver="midpoint")),
    **{f"masked_{norm}_depth{n}": (dict(objective="masked", norm=norm, depth=str(n)),
                                   _POST_LN if norm == "post" else {})
       for norm in ("post", "pre") for n in (8, 4, 2)},
    "masked_post_sandwich": (dict(objective="masked", norm="post"), dict(_SANDWICH, **_POST_LN)),
    "masked_post_ln_euler": (dict(objective="masked", norm="post"), dict(_SANDWICH, solver="ln_euler", **_POST_LN)),
}

STEPS = 2000


def get_config(name: str = "depth8"):
    model_name, marker, seed = name.rpartition("_seed")
    if not (marker and seed.isdigit()):
        model_name, seed = name, "0"
    if model_name not in MODELS:
        raise ValueError(f"unknown study model {model_name!r}; known: {sorted(MODELS)}, each optionally _seedK")
    model, train = MODELS[model_name]
    config = default_config()
    config.seed = int(seed)
    config.data.tokenizer = "char"
    config.model.update(vocab_size=89, width=64, heads=4, mlp_width=256, max_length=128, embedding_size=64,
                        depth="8", objective="causal", norm="pre")
    config.model.update(model)
    config.train.update(steps=STEPS, batch_size=32, learning_rate=2e-3, warmup_steps=100, log_every=100,
                        eval_batches=16)
    config.train.update(train)
    config.checkpoint.update(every=500, keep=1)
    config.eval.solves = "euler"
    return config

"""The models of the k-hop study in docs/results.md (issue "Depth that pays"), one per name:

    python -m train.pretrain --config configs/khop.py:depth8 --workdir runs/khop/depth8
    python -m eval.study --evaluate depth8 --study khop

The task (`odeplm.data.tasks`): a hop-count token, then 79 letters of a
4-letter alphabet; the target at every letter is the letter reached after k
hops (k from 1 to 4, drawn per sequence), every position scored. Every model
is a causal Pre-LN transformer of width 128 (4 heads, MLP 512, context 80),
fully shared unless its name says otherwise, trained for 2000 AdamW steps of
32 sequences at 1e-3 (100 warm-up steps, cosine decay), validated every
100 steps on 256 held-out sequences (the result files score all 2048). `NAME_seedK` is NAME trained with seed K
(initialisation and batch order; the data stay the same).

- dedicated depths `depth8`, `depth4`, `depth2`, `depth1`: plain models
  trained at the depth they serve (tau = 1, N = L);
- what might make deep shared models learn reliably, each at L = 8: a shorter
  span (`depth8_span2`: tau = 1/4; `depth8_span1`: tau = 1/8, the 1/L branch
  scaling), depth-muP's branch multiplier 1/sqrt(L) (`depth8_mup`: span
  sqrt(8), with its learning-rate rule for Adam, lr proportional to
  1/sqrt(L): 1e-3 at L = 2 gives 5e-4 at L = 8), ReZero gates (`depth8_rezero`),
  a depth curriculum (`depth8_curriculum`: 2, 3, ..., 8 layers, each for an
  equal share of the first 1000 steps, then 8; `depth4_curriculum`: 2, 3, 4;
  at L = 2 the curriculum is the plain model), random depth per batch as Huginn draws its recurrence
  (`depth8_random_depth`: 2 to 8 layers), and a lower learning rate
  (`depth8_lr5e-4`);
- time-aware dedicated models, the control for the time-aware recipe below: `depth4_curriculum_time`
  and `depth2_time` (16 features of t; at one layer the field's time is constant);
- one model at every speed, starting from the curriculum: random N over 1-4
  layers after the climb (`depth4_curriculum_random`), and the sandwich rule
  with its coarse terms (the first N layers, in-place distillation) joining at
  step 1200, once full depth has formed its circuit
  (`depth4_curriculum_sandwich_late`: N = 1, 2; `depth8_curriculum_sandwich_late`: N = 2, 4); the same with
  the coarse terms on the labels alone, since a coarse solve cannot reach the hops full depth predicts
  (`depth4_curriculum_sandwich_late_labels`), with those terms weighted 2 (`..._labels_heavy`), and on a
  time-aware field, so that the shared block knows which layer it is (`..._labels_time`: 16 features of t);
  and the heavy label-only terms joining at step 1500, once hops 1-3 are learned at full depth (at step 1400
  in `depth4_curriculum`; step 1200 is before that transition), `depth4_curriculum_sandwich_after_transition`;
- the paper's smaller training step: 4 layers of tau = 1/2 (`depth4_span2`), served at N = 2 and 1 over its
  span (steps of 1 and 2);
- the ODE reading of the time-aware late sandwich: the same curriculum and labels-alone coarse terms from
  step 1200, but the coarse terms take 1 and 2 steps over the whole span (tau = 4 and 2) instead of the
  first 1 and 2 layers (`depth4_curriculum_sandwich_span_time`; at L = 8, 2 and 4 steps,
  `depth8_curriculum_sandwich_span_time`); with state matching, each coarse step's
  state against the full-depth state where it lands (`..._span_time_states`: weight 1; `..._states_light`:
  0.1); and at the midpoint method, 1 and 2 steps (NFE 2 and 4; `..._midpoint_time`: served at N = 2 by
  midpoint:1, at N = 1 by Euler); on a field that reads its solver's step as well as t
  (`depth4_curriculum_sandwich_span_stride`: 16 features of the stride, the step in training steps, as
  shortcut models condition on the step size); and that field with its coarse terms from the first step,
  beside the curriculum's climb, so that the one-step term trains as long as a dedicated 1-layer model
  and the whole costs what the dedicated models cost (`depth4_curriculum_sandwich_span_stride_early`;
  on the time-aware field alone, `depth4_curriculum_sandwich_span_time_early`);
- the same span reading trained for the compute of the dedicated models it is measured against
  (`ladder_steps`): at 2514 steps, full depth throughout and coarse terms of L/2 and L/4 from step 1200 cost
  as many block evaluations as dedicated L-, L/2- and L/4-layer models at 2000 steps each
  (`depth4_curriculum_sandwich_span_time_matched`, `depth8_curriculum_sandwich_span_time_matched`); and the
  two halves joined, each term with its own start: the one-step term from the first step on the stride-aware
  field, the two-step term from step 1200 (`depth4_curriculum_sandwich_span_stride_staggered`, 2343 steps);
  and, for more compute than that, the coarse terms from step 1200 each trained for 2000 steps, as long as
  their dedicated models (`depth4_curriculum_sandwich_span_time_long`, `depth8_curriculum_sandwich_span_time_long`:
  3200 steps), at L = 4 also with the one-step term weighted 3 (`..._long_heavy`);
- a partially shared plan, two blocks of two steps each (`depth2x2_curriculum_sandwich_span_time`: the
  curriculum at 1 then 2 steps per block, coarse terms of 1 step per block over its span, N = 2; a plan of
  two blocks cannot be served at N = 1);
- a masked (bidirectional) model on the same task, each letter attending to the whole string and scored on
  the same targets: dedicated `depth4_curriculum_masked`, `depth2_masked`, `depth1_masked`.
"""

from odeplm.runs.recipe import Distillation
from odeplm.runs.settings import default_config

DATASET = "khop"  # alphabet 4, length 80, hops 1-4, 131072 training and 2048 validation sequences
_LADDER = dict(step_counts="2,3,4,5,6,7,8", step_mode="depth")


def climb(depth: int) -> dict:
    """The depth curriculum of a dedicated `depth`-layer model: 2, 3, ..., depth layers, each for an equal
    share of the first 1000 steps, then `depth` layers."""
    return dict(step_counts=",".join(map(str, range(2, depth + 1))), step_mode="depth", curriculum_steps=1000,
                step_weights=",".join(["0"] * (depth - 2) + ["1"]))


_CLIMB4 = climb(4)
_LATE4 = dict(_CLIMB4, distill_steps="1,2", distill_start="1200")  # the coarse terms join after the climb
_TIME = dict(time_features=16)
_MASKED = dict(objective="masked")  # attends both ways; scored on the task's own targets, nothing masked
_SPAN4 = dict(_LATE4, distill_label_weight=1.0, distill_mode="span")  # coarse steps over the span, labels alone
_SPAN8 = dict(climb(8), distill_steps="2,4", distill_start="1200", distill_label_weight=1.0, distill_mode="span")
_STAGGERED4 = dict(_SPAN4, distill_start="0,1200")  # the one-step term from the first step, the two-step late
STEPS = 2000
_LONG4 = dict(_SPAN4, steps=int(_SPAN4["distill_start"]) + STEPS)  # each coarse term trains STEPS steps
_LONG8 = dict(_SPAN8, steps=int(_SPAN8["distill_start"]) + STEPS)


def any_speed(depth: int, midpoint: float = 1.0, finer: float = 0.25, start: int = 1200) -> dict:
    """One coarse solve a batch beside full depth, from step `start` (after the climb, once full depth has formed
    its circuit), drawn from every Euler step count from 1 to 2L but L and the midpoint method up to L
    evaluations, over the span, on the labels. The fewest steps learn slowest, so they are drawn most: Euler
    weight 3 at one step, 2 up to L/2 steps, 1 below L, `finer` above L (steps finer than trained); the midpoint
    method `midpoint` up to L/2 evaluations, half that above. The whole costs about 1.3 dedicated models."""
    euler = [n for n in range(1, 2 * depth + 1) if n != depth]
    midpoints = range(1, depth // 2 + 1)
    solves = [f"euler:{n}" for n in euler] + [f"midpoint:{n}" for n in midpoints]
    weights = ([3 if n == 1 else 2 if 2 * n <= depth else 1 if n < depth else finer for n in euler]
               + [midpoint if 4 * n <= depth else midpoint / 2 for n in midpoints])
    return dict(climb(depth), distill_draw=",".join(solves), distill_draw_weights=",".join(map(str, weights)),
                distill_start=str(start), distill_label_weight=1.0, distill_mode="span")


def ladder_steps(depth: int, train: dict) -> int:
    """Training steps at which one model of `depth` layers (full depth throughout, the coarse terms of
    `train` from their `distill_start`) costs the block evaluations of the dedicated models of its speeds
    (L and each coarse step count) at STEPS each: S L + sum_n n (S - start_n) = (L + sum_n n) STEPS,
    counting full depth at every step (the depth curriculum's first steps cost less, in the recipe as in
    the dedicated L-layer model; at L = 8 the dedicated 4-layer model's curriculum makes the ladder a
    little cheaper still)."""
    terms = Distillation.parse(train["distill_steps"], "", 1.0, 0.0, start=train["distill_start"])
    late = sum(n * start for n, start in zip(terms.steps, terms.starts()))
    return round(STEPS + late / (depth + sum(terms.steps)))


MODELS = {
    **{f"depth{n}": (dict(depth=str(n)), {}) for n in (8, 4, 2, 1)},
    "depth8_span2": (dict(depth="8@2"), {}),
    "depth8_span1": (dict(depth="8@1"), {}),
    "depth8_mup": (dict(depth="8@2.8284271247461903"), dict(learning_rate=5e-4)),
    "depth8_rezero": (dict(depth="8", residual_gate="rezero"), {}),
    # the dedicated curriculum models, one per depth: the ladder every step count is held against
    **{f"depth{n}_curriculum": (dict(depth=str(n)), climb(n)) for n in (3, 4, 5, 6, 7, 8)},
    "depth8_random_depth": (dict(depth="8"), _LADDER),
    "depth4_curriculum_time": (dict(_TIME, depth="4"), _CLIMB4),
    "depth2_time": (dict(_TIME, depth="2"), {}),
    # one model at every speed, from the curriculum: random N after the climb, and the sandwich's coarse terms
    # (the first N layers, with in-place distillation) joining once full depth has formed its circuit
    "depth4_curriculum_random": (dict(depth="4"), dict(step_counts="1,2,3,4", step_mode="depth",
                                                       curriculum_steps=1000)),
    "depth4_curriculum_sandwich_late": (dict(depth="4"), _LATE4),
    "depth4_curriculum_sandwich_late_labels": (dict(depth="4"), dict(_LATE4, distill_label_weight=1.0)),
    "depth4_curriculum_sandwich_late_labels_heavy": (dict(depth="4"), dict(_LATE4, distill_label_weight=1.0,
                                                                            distill_weights="2,2")),
    "depth4_curriculum_sandwich_late_labels_time": (dict(_TIME, depth="4"), dict(_LATE4, distill_label_weight=1.0)),
    "depth4_curriculum_sandwich_after_transition": (dict(depth="4"), dict(_LATE4, distill_start="1500",
                                                                           distill_label_weight=1.0,
                                                                           distill_weights="2,2")),
    "depth8_curriculum_sandwich_late": (dict(depth="8"), dict(climb(8), distill_steps="2,4", distill_start="1200")),
    "depth8_curriculum_sandwich_span_time": (dict(_TIME, depth="8"), _SPAN8),
    "depth8_lr5e-4": (dict(depth="8"), dict(learning_rate=5e-4)),
    "depth4_span2": (dict(depth="4@2"), {}),
    # the ODE reading of the best recipe: coarse terms of 1 and 2 steps over the whole span (tau = 4 and 2)
    "depth4_curriculum_sandwich_span_time": (dict(_TIME, depth="4"), _SPAN4),
    "depth4_curriculum_sandwich_span_time_states": (dict(_TIME, depth="4"), dict(_SPAN4, distill_state_weight=1.0)),
    "depth4_curriculum_sandwich_span_time_states_light": (dict(_TIME, depth="4"),
                                                          dict(_SPAN4, distill_state_weight=0.1)),
    "depth4_curriculum_sandwich_midpoint_time": (dict(_TIME, depth="4"), dict(_SPAN4, distill_solver="midpoint")),
    # the same for the compute of the dedicated models it is measured against
    "depth4_curriculum_sandwich_span_time_matched": (dict(_TIME, depth="4"),
                                                      dict(_SPAN4, steps=ladder_steps(4, _SPAN4))),
    "depth8_curriculum_sandwich_span_time_matched": (dict(_TIME, depth="8"),
                                                      dict(_SPAN8, steps=ladder_steps(8, _SPAN8))),
    # the span reading on a field that also reads its step (stride 1, 2, 4 at N = 4, 2, 1), so that a coarse
    # step need not be the fine one scaled
    "depth4_curriculum_sandwich_span_stride": (dict(_TIME, stride_features=16, depth="4"), _SPAN4),
    "depth4_curriculum_sandwich_span_stride_early": (dict(_TIME, stride_features=16, depth="4"),
                                                      dict(_SPAN4, distill_start="0")),
    "depth4_curriculum_sandwich_span_time_early": (dict(_TIME, depth="4"), dict(_SPAN4, distill_start="0")),
    # the two halves joined: the one-step term, which learns as if from scratch, from the first step, the
    # two-step term once full depth has formed its circuit; at the dedicated models' cost
    "depth4_curriculum_sandwich_span_stride_staggered": (dict(_TIME, stride_features=16, depth="4"),
                                                          dict(_STAGGERED4, steps=ladder_steps(4, _STAGGERED4))),
    # the coarse terms joining late, each trained for as many steps as its dedicated model: more compute;
    # at L = 4 also with the one-step term weighted 3, spending the deeper speeds' margin on the shallowest
    "depth4_curriculum_sandwich_span_time_long": (dict(_TIME, depth="4"), _LONG4),
    "depth4_curriculum_sandwich_span_time_long_heavy": (dict(_TIME, depth="4"), dict(_LONG4, distill_weights="3,1")),
    "depth8_curriculum_sandwich_span_time_long": (dict(_TIME, depth="8"), _LONG8),
    # one model at every step count and order (issue "An ODE in fact"): a field that reads t and its step
    # (as shortcut models and LoopFormer condition on the step size) and one drawn coarse solve a batch
    "depth4_curriculum_draw_stride": (dict(_TIME, stride_features=16, depth="4"), any_speed(4)),
    # the same rebalanced after its first seed: the midpoint method drawn as often as Euler at its NFE, finer
    # steps twice as often, and the draw joining at the end of the climb (step 1000)
    **{f"depth{n}_curriculum_draw_stride_balanced": (dict(_TIME, stride_features=16, depth=str(n)),
                                                     any_speed(n, midpoint=2.0, finer=0.5, start=1000))
       for n in (4, 8)},
    # a partially shared plan: two blocks of two steps each, the same curriculum (1 then 2 steps per block)
    # and span-reading coarse terms (1 step per block: N = 2)
    "depth2x2_curriculum_sandwich_span_time": (dict(_TIME, depth="2x2"), dict(
        _SPAN4, step_counts="1,2", step_weights="0,1", distill_steps="1")),
    # the same task read by a masked (bidirectional) model: its dedicated depths
    "depth4_curriculum_masked": (dict(_MASKED, depth="4"), _CLIMB4),
    "depth2_masked": (dict(_MASKED, depth="2"), {}),
    "depth1_masked": (dict(_MASKED, depth="1"), {}),
}


def get_config(name: str = "depth8"):
    model_name, marker, seed = name.rpartition("_seed")
    if not (marker and seed.isdigit()):
        model_name, seed = name, "0"
    if model_name not in MODELS:
        raise ValueError(f"unknown k-hop model {model_name!r}; known: {sorted(MODELS)}, each optionally _seedK")
    model, train = MODELS[model_name]
    config = default_config()
    config.seed = int(seed)
    config.data.update(dataset=DATASET, record_index="in_memory")  # a 1 MB index: read fast
    config.model.update(vocab_size=48, width=128, heads=4, mlp_width=512, max_length=80, embedding_size=128,
                        depth="8", objective="causal", norm="pre")
    config.model.update(model)
    config.train.update(steps=STEPS, batch_size=32, learning_rate=1e-3, warmup_steps=100, log_every=50,
                        eval_batches=8, eval_every=100)
    config.train.update(train)
    config.checkpoint.update(every=500, keep=1)
    config.eval.solves = "euler"
    return config

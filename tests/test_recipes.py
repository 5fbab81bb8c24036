"""The study's recipes: a time-aware field, Post-LN with the step inside the
LayerNorm, and the sandwich objective, each against an independent computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import odeplm
from odeplm.core.block import attention_mask
from odeplm.core.config import ConfigError, parse_depth
from odeplm.core.model import forward
from odeplm.core.solvers import Solve, SolverError, plan_solves
from odeplm.inference.generate import generate
from odeplm.runs.recipe import Discretisation, Distillation, landings
from odeplm.training.objectives import training_loss
from tests.conftest import tiny_model


def _time_aware_copy(model, seed=1, scale=0.0, features=(("time_features", 8),)):
    """The model's parameters in a time-aware (by default) model of the same config;
    with scale > 0 its modulation is drawn at random instead of zero."""
    config = model.config.__class__(**{**model.config.to_dict(), **dict(features)})
    aware = tiny_model(**config.to_dict())
    nnx.update(aware, nnx.state(model))
    for block in aware.encoder.blocks:
        kernel = block.time.project.kernel
        kernel[...] = scale * jax.random.normal(jax.random.key(seed), kernel.shape)
    return aware


@pytest.mark.parametrize("norm,objective", [("pre", "causal"), ("post", "masked")])
def test_time_aware_field_equals_the_time_blind_one_at_initialisation(norm, objective, rng):
    blind = tiny_model(norm=norm, objective=objective, depth="2x2")
    aware = _time_aware_copy(blind)
    tokens = rng.integers(5, 64, (2, 16))
    for solve in ("midpoint:1",):  # t = 0 and t = 1/2; equal up to float32 rounding (XLA fuses the norms otherwise)
        np.testing.assert_allclose(forward(aware, tokens, solve=solve).logits,
                                   forward(blind, tokens, solve=solve).logits, rtol=0, atol=1e-6)
    # once trained away from zero the field depends on t: the same steps give other outputs
    moved = _time_aware_copy(blind, scale=0.3)
    assert np.abs(forward(moved, tokens).logits - forward(blind, tokens).logits).max() > 1e-2


def test_time_aware_cached_generation_equals_recomputation():
    model = _time_aware_copy(tiny_model(objective="causal", depth="2x2", max_length=32, initializer_range=0.2),
                             scale=0.5)
    for solve in ("midpoint:2",):  # stages at t = 0, 1/4, 1/2, 3/4
        (expected,) = generate(model, [[7, 21, 5, 40]], max_new_tokens=12, solve=solve, end_token=None, cached=False)
        (cached,) = generate(model, [[7, 21, 5, 40]], max_new_tokens=12, solve=solve, end_token=None)
        assert cached == expected


STRIDE_AWARE = (("time_features", 8), ("stride_features", 8))


def _euler_by_hand(model, tokens, steps, read_stride=True):
    """`steps` Euler steps over each segment's span, the block called with the stride each step spans
    (or, without `read_stride`, always with stride 1)."""
    encoder = model.encoder
    h = encoder.embeddings(jnp.asarray(tokens))
    mask = attention_mask(jnp.ones(tokens.shape, bool), causal=True)
    for block, segment in zip(encoder.blocks, model.config.depth):
        dt = segment.span / steps
        for n in range(steps):
            stride = dt / segment.tau if read_stride else 1.0
            h = h + dt * (block(h, mask, time=n * dt / segment.span, stride=stride) - h)
    return model.head(encoder.final_norm(h), encoder.embeddings)


def test_stride_aware_field_reads_each_step_in_training_steps(rng):
    blind = tiny_model(objective="causal", depth="2x2,4@2", initializer_range=0.2)
    tokens = rng.integers(5, 64, (2, 16))
    at_init = _time_aware_copy(blind, features=STRIDE_AWARE)
    np.testing.assert_allclose(forward(at_init, tokens, solve="euler:1").logits,
                               forward(blind, tokens, solve="euler:1").logits, rtol=0, atol=1e-6)
    aware = _time_aware_copy(blind, scale=0.3, features=STRIDE_AWARE)
    # strides 1 and 2 in the segments of span 2 and tau 1, 2 and 4 in the last (tau 1/2)
    for steps in (2, 1):
        np.testing.assert_allclose(forward(aware, tokens, solve=f"euler:{steps}").logits,
                                   _euler_by_hand(aware, tokens, steps), rtol=0, atol=2e-5)
    # the stride is read: the field at stride 1 steps otherwise
    assert np.abs(forward(aware, tokens, solve="euler:1").logits
                  - _euler_by_hand(aware, tokens, 1, read_stride=False)).max() > 1e-2
    with pytest.raises(ConfigError, match="stride_features"):
        tiny_model(stride_features=3)


def test_an_adaptive_solve_reads_the_stride_of_each_step_it_attempts(rng):
    """With a tolerance so loose that its first step (the whole span, stride 4) is accepted, an adaptive solve
    is the fixed one-step solve of the same method, stride included; read at stride 1, as adaptive solves
    once were, it would land elsewhere."""
    aware = _time_aware_copy(tiny_model(objective="causal", depth="4", initializer_range=0.2), scale=0.3,
                             features=STRIDE_AWARE)
    tokens = rng.integers(5, 64, (2, 16))
    one_step = forward(aware, tokens, solve="bosh3:1")
    loose = forward(aware, tokens, solve="bosh3:rtol=1e3:atol=1e3")
    assert int(loose.nfe) == int(one_step.nfe) == 4 and bool(loose.ok)
    np.testing.assert_array_equal(loose.logits, one_step.logits)


def test_stride_aware_cached_generation_equals_recomputation():
    model = _time_aware_copy(tiny_model(objective="causal", depth="2x2", max_length=32, initializer_range=0.2),
                             scale=0.5, features=STRIDE_AWARE)
    for solve in ("midpoint:1", "euler:2@4"):  # strides 2, and 2 over a longer span
        (expected,) = generate(model, [[7, 21, 5, 40]], max_new_tokens=12, solve=solve, end_token=None, cached=False)
        (cached,) = generate(model, [[7, 21, 5, 40]], max_new_tokens=12, solve=solve, end_token=None)
        assert cached == expected


def _layer_norm_step_by_hand(model, tokens, steps):
    """h <- LN(h + tau F(h)) per sub-layer, written out with the model's own modules."""
    encoder = model.encoder
    h = encoder.embeddings(jnp.asarray(tokens))
    mask = jnp.ones((tokens.shape[0], tokens.shape[1], tokens.shape[1]), bool)
    for block, segment in zip(encoder.blocks, model.config.depth):
        tau = segment.span / steps
        for _ in range(steps):
            for layer in block.layers:
                h = layer.attention_norm(h + tau * layer.attention(h, mask))
                h = layer.mlp_norm(h + tau * layer.mlp(h))
    return model.head(h, encoder.embeddings)


def test_layer_norm_euler_is_the_layer_at_unit_steps_and_the_formula_at_any(rng):
    model = tiny_model(norm="post", objective="masked", depth="2x2", initializer_range=0.2)
    tokens = rng.integers(5, 64, (2, 16))
    np.testing.assert_allclose(forward(model, tokens, solve="ln_euler").logits,  # h + (Phi(h) - h) rounds
                               forward(model, tokens, solve="euler").logits, rtol=0, atol=1e-5)
    for steps in (1, 3):
        out = forward(model, tokens, solve=f"ln_euler:{steps}")
        np.testing.assert_allclose(out.logits, _layer_norm_step_by_hand(model, tokens, steps), atol=2e-5, rtol=2e-5)
        assert int(out.nfe) == 2 * steps  # two segments
    assert np.abs(forward(model, tokens, solve="ln_euler:3").logits
                  - forward(model, tokens, solve="euler:3").logits).max() > 1e-2
    with pytest.raises(SolverError, match="Pre-LN"):
        forward(tiny_model(norm="pre"), tokens, solve="ln_euler:2")
    with pytest.raises(SolverError, match="Runge-Kutta method; use a fixed-step solve, or cached=False"):
        generate(tiny_model(norm="post"), [[5]], max_new_tokens=2, solve="ln_euler:2")


def test_sandwich_gradient_equals_the_objective_written_out(rng):
    """Full depth on the labels plus weighted coarse terms on labels mixed with the
    teacher's predictions, which are constants: gradients must not reach them."""
    model = tiny_model(depth="4", initializer_range=0.1)
    graphdef, params = nnx.split(model)
    tokens = rng.integers(5, 64, (2, 16))
    batch = {"tokens": jnp.asarray(tokens), "padding_mask": jnp.ones((2, 16), bool),
             "targets": jnp.asarray(np.roll(tokens, -1, axis=1)), "weights": jnp.asarray(rng.random((2, 16)) > 0.3,
                                                                                        jnp.float32)}
    label_weight, hidden_weight = 0.25, 0.7
    distillation = Distillation(steps=(1, 2), weights=(2.0, 0.5), label_weight=label_weight,
                                hidden_weight=hidden_weight, solver="midpoint")  # coarse terms at midpoint:1, :2
    depth = model.config.depth
    coarse = distillation.coarse_solves(depth, Discretisation())

    def ours(params):
        return training_loss(nnx.merge(graphdef, params), batch, solves=plan_solves(depth), coarse=coarse,
                             distillation=distillation)

    teacher_out = forward(model, tokens)
    teacher = jax.nn.softmax(teacher_out.logits, axis=-1)  # outside the gradient: constants
    w = batch["weights"]

    def written_out(params):
        m = nnx.merge(graphdef, params)
        full = m(batch["tokens"], solve=plan_solves(depth))
        total = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(full.logits, batch["targets"]) * w)
        for steps, weight in zip((1, 2), distillation.weights):
            out = m(batch["tokens"], solve=f"midpoint:{steps}")
            labels = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["targets"])
            soft = optax.softmax_cross_entropy(out.logits, teacher)
            hidden = jnp.mean((out.hidden - teacher_out.hidden) ** 2, axis=-1)
            total += weight * jnp.sum((label_weight * labels + (1 - label_weight) * soft + hidden_weight * hidden) * w)
        return total

    (objective, sums), grads = jax.jit(jax.value_and_grad(ours, has_aux=True))(params)
    expected, expected_grads = jax.jit(jax.value_and_grad(written_out))(params)
    np.testing.assert_allclose(objective, expected, rtol=1e-5)
    for ours_leaf, expected_leaf in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(ours_leaf, expected_leaf, atol=1e-5, rtol=1e-4)
    assert int(sums["nfe"]) == 4 + 2 + 4
    coarse_logits = forward(model, tokens, solve="midpoint:1").logits
    coarse_loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(coarse_logits, batch["targets"]) * w)
    np.testing.assert_allclose(sums["coarse_losses"][0], coarse_loss, rtol=1e-5)


def test_depth_mode_and_curriculum_draw_shallower_models_first():
    """A curriculum grows N through the step counts over its steps, then draws them; in depth
    mode a drawn N runs N steps of the trained step size (a shallower model), in span mode
    N steps over the whole span."""
    recipe = Discretisation(steps=(2, 4, 6, 8), weights=(0, 0, 0, 1), mode="depth", curriculum=600)
    drawn = [recipe.draw(0, step) for step in range(0, 1000, 50)]
    assert drawn[:2] == [2, 2] and drawn == sorted(drawn) and drawn[-1] == 8
    assert [recipe.draw(0, step) for step in range(600)] == [2] * 150 + [4] * 150 + [6] * 150 + [8] * 150
    assert {recipe.draw(0, step) for step in range(600, 700)} == {8}
    depth = parse_depth("8@4")
    assert recipe.solves(depth, 2) == (Solve("euler", 2, span=1.0),)
    assert Discretisation(steps=(2, 8)).solves(depth, 2) == (Solve("euler", 2),)
    assert recipe.solves(depth, None) == (Solve("euler", 8),)
    for bad, message in ((dict(mode="layers"), "train.step_mode"), (dict(curriculum=5, steps=(8,)), "two"),
                         (dict(curriculum=-1), "train.curriculum_steps")):
        with pytest.raises(ConfigError, match=message):
            Discretisation(**bad)


def test_coarse_terms_follow_the_step_mode_and_join_at_their_start():
    depth = parse_depth("4")
    distillation = Distillation(steps=(1, 2), start=(300,))
    span = distillation.coarse_solves(depth, Discretisation())
    assert span == ((Solve("euler", 1),), (Solve("euler", 2),))  # steps of size 4 and 2 over the span
    layers = distillation.coarse_solves(depth, Discretisation(steps=(2, 3, 4), mode="depth"))
    assert layers == ((Solve("euler", 1, span=1.0),), (Solve("euler", 2, span=2.0),))  # the first 1 and 2 layers
    assert [distillation.active(s).steps for s in (0, 299, 300)] == [(), (), (1, 2)]
    assert Distillation().active(10**6).coarse_solves(depth, Discretisation()) == ()
    each = Distillation.parse("2,1", "0.5,3", 1.0, 0.0, start="300,0")  # the one-step term first, its own weight
    assert [each.active(s).terms() for s in (0, 299, 300)] == [((1, 3.0),), ((1, 3.0),), ((2, 0.5), (1, 3.0))]
    assert each.active(0).coarse_solves(depth, Discretisation()) == ((Solve("euler", 1),),)
    for start, message in (("-1", ">= 0"), ("0,1,2", "one per step count"), ("", ">= 0"), ("a", "integers")):
        with pytest.raises(ConfigError, match=f"train.distill_start.*{message}"):
            Distillation.parse("1,2", "", 1.0, 0.0, start=start)


def test_drawn_coarse_solve_follows_its_weights_and_replays_from_seed_and_step():
    """One drawn term a batch from the last start on, each solve at its own solver over the span, drawn in
    proportion to its weight and the same on every call (a resumed run draws what the uninterrupted one drew);
    the fixed terms keep their places and weights."""
    depth = parse_depth("4")
    recipe = Distillation.parse("2", "0.5", 1.0, 0.0, start="100", mode="span", draw="euler:1,midpoint:1,euler:8",
                                draw_weights="2,1,1")
    assert recipe.active(99, seed=3).steps == ()
    drawn = [recipe.active(step, seed=3) for step in range(100, 4100)]
    assert drawn == [recipe.active(step, seed=3) for step in range(100, 4100)]
    assert drawn != [recipe.active(step, seed=4) for step in range(100, 4100)]
    counts = {}
    for active in drawn:
        assert active.terms()[0] == (2, 0.5) and active.terms()[1][1] == 1.0
        solves = active.coarse_solves(depth, Discretisation(steps=(2, 3, 4), mode="depth"))
        assert solves[0] == (Solve("euler", 2),)
        counts[solves[1]] = counts.get(solves[1], 0) + 1
    assert set(counts) == {(Solve("euler", 1),), (Solve("midpoint", 1),), (Solve("euler", 8),)}
    assert counts[(Solve("euler", 1),)] / 4000 == pytest.approx(0.5, abs=0.03)
    assert counts[(Solve("midpoint", 1),)] / 4000 == pytest.approx(0.25, abs=0.03)
    assert drawn[0].term_labels()[0] == "2_steps" and set(a.term_labels()[1] for a in drawn) == {
        "1_euler_steps", "1_midpoint_steps", "8_euler_steps"}
    for draw, weights, field in (("rk5:1", "", "train.distill_draw"), ("euler", "", "train.distill_draw"),
                                 ("euler:0", "", "train.distill_draw"), ("euler:1", "1,2", "draw_weights"),
                                 ("euler:1", "-1", "draw_weights"), ("euler:1", "nan", "draw_weights")):
        with pytest.raises(ConfigError, match=field):
            Distillation.parse("", "", 1.0, 0.0, draw=draw, draw_weights=weights)
    with pytest.raises(ConfigError, match="train.distill_draw: a drawn coarse solve cannot match states"):
        Distillation.parse("", "", 1.0, 0.0, state_weight=1.0, draw="euler:1")


def test_state_matching_equals_the_distance_written_out(rng):
    """Coarse steps over the span (two steps of size 2 on a 4-layer model, the curriculum's depth mode
    notwithstanding) matched with the full-depth states where they land, at layers 2 and 4: the term
    equals the relative squared distance computed from separate solves, and its gradient treats the
    full-depth states as constants."""
    model = tiny_model(depth="4", initializer_range=0.1)
    graphdef, params = nnx.split(model)
    tokens = rng.integers(5, 64, (2, 16))
    weights = jnp.asarray(rng.random((2, 16)) > 0.3, jnp.float32)
    batch = {"tokens": jnp.asarray(tokens), "padding_mask": jnp.ones((2, 16), bool),
             "targets": jnp.asarray(np.roll(tokens, -1, axis=1)), "weights": weights}
    discretisation = Discretisation(steps=(2, 3, 4), weights=(0, 0, 1), mode="depth", curriculum=10)
    depth, fine = model.config.depth, discretisation.solves(model.config.depth, 4)
    matched = Distillation(steps=(2,), label_weight=1.0, mode="span", state_weight=0.8)
    (coarse,) = matched.coarse_solves(depth, discretisation)
    assert coarse == (Solve("euler", 2),) and landings(depth, coarse, fine) == ((1, 3),)

    def term(params):  # the objective with state matching less the same without it
        m = nnx.merge(graphdef, params)
        with_states, _ = training_loss(m, batch, solves=fine, coarse=(coarse,), distillation=matched)
        without, _ = training_loss(m, batch, solves=fine, coarse=(coarse,),
                                   distillation=Distillation(steps=(2,), label_weight=1.0, mode="span"))
        return with_states - without

    mask = attention_mask(batch["padding_mask"], causal=True)

    def state(m, steps, span):
        h = m.encoder.embeddings(batch["tokens"], None, None)
        return odeplm.integrate(m.encoder.blocks[0], h, mask, span=span, solve=Solve("euler", steps))[0]

    targets = [state(model, 2, 2.0), state(model, 4, 4.0)]  # layers 2 and 4 of full depth: constants

    def written_out(params):
        m = nnx.merge(graphdef, params)
        distances = [jnp.sum((state(m, j, 2.0 * j) - target) ** 2, -1) / (jnp.sum(target ** 2, -1) + 1e-6)
                     for j, target in zip((1, 2), targets)]
        return 0.8 * jnp.sum((distances[0] + distances[1]) / 2 * weights)

    value, grads = jax.jit(jax.value_and_grad(term))(params)
    expected, expected_grads = jax.jit(jax.value_and_grad(written_out))(params)
    assert float(expected) > 1e-3
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    for ours_leaf, expected_leaf in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(ours_leaf, expected_leaf, atol=1e-5, rtol=1e-3)
    with pytest.raises(SolverError, match="fixed step count"):
        odeplm.integrate(model.encoder.blocks[0], jnp.zeros((1, 16, 32)), mask[:1], span=4.0,
                         solve=Solve("tsit5", rtol=1e-3, atol=1e-3), states=True)


def test_coarse_steps_that_land_between_fine_steps_are_named():
    depth = parse_depth("4")
    with pytest.raises(ConfigError, match=r"train.distill_state_weight: step 1 of the coarse solve euler:3 .* "
                                          r"t = 1.33333, where the training solve euler:4 has no step"):
        landings(depth, (Solve("euler", 3),), (Solve("euler", 4),))
    with pytest.raises(ConfigError, match="t = 2, where the training solve euler:1@1 has no step"):
        landings(depth, (Solve("euler", 2),), (Solve("euler", 1, span=1.0),))
    assert landings(depth, (Solve("euler", 1, span=1.0),), (Solve("euler", 4),)) == ((0,),)
    recipe = Discretisation(steps=(2, 3, 4), weights=(0, 0, 1), mode="depth", curriculum=100)
    assert recipe.counts_from(0) == (2, 3, 4) and recipe.counts_from(100) == (4,)
    assert Discretisation().counts_from(0) == (None,)
    for bad, message in ((dict(mode="layers"), "train.distill_mode"), (dict(state_weight=-1.0),
                                                                        "train.distill_state_weight")):
        with pytest.raises(ConfigError, match=message):
            Distillation(steps=(1,), **bad)

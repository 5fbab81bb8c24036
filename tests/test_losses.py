"""The loss that never holds a batch's logits: chunked and gathered losses against the
plain loss on full logits (values and gradients, float64), the data's cap on masked
targets, the logits' dtype, and the compiled step's memory falling with the chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import odeplm
from odeplm.core.losses import batch_rows
from odeplm.data.pipeline import Batches
from tests.conftest import tiny_model


def plain_loss(model, batch, solve=None):
    """Summed cross-entropy from the full logits, written out with log_softmax."""
    return -jnp.sum(_picked(_log_p(model, batch, solve), batch["targets"]) * batch["weights"])


def plain_soft_loss(model, batch, solve, teacher_solve):
    """Cross-entropy of the predictions at `solve` against the detached ones at `teacher_solve`."""
    teacher = jax.lax.stop_gradient(jnp.exp(_log_p(model, batch, teacher_solve)))
    return -jnp.sum(jnp.sum(teacher * _log_p(model, batch, solve), -1) * batch["weights"])


def _log_p(model, batch, solve):
    return jax.nn.log_softmax(model(batch["tokens"], batch["padding_mask"], solve=solve).logits, axis=-1)


def _picked(log_p, targets):
    return jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]


def causal_batch(rng, batch=3, length=13, vocab=64):
    tokens = jnp.asarray(rng.integers(1, vocab, (batch, length)))
    padding = jnp.asarray(np.arange(length)[None] < np.array([[length], [9], [4]]))
    weights = jnp.asarray(rng.random((batch, length)), jnp.float64) * padding
    return {"tokens": tokens, "padding_mask": padding, "targets": jnp.roll(tokens, -1, axis=1), "weights": weights}


def with_config(model, **changes):
    """The same weights under other runtime fields (chunking, gathering)."""
    graphdef, state = nnx.split(odeplm.LanguageModel(
        odeplm.ModelConfig(**{**model.config.to_dict(), **changes}), rngs=nnx.Rngs(0)))
    return nnx.merge(graphdef, nnx.state(model))


@pytest.mark.parametrize("chunk", [5, 64])
def test_chunked_loss_and_its_gradients_equal_the_plain_loss(chunk, rng):
    with jax.enable_x64(True):
        plain = tiny_model(depth="2x2", dtype="float64", param_dtype="float64")
        model = with_config(plain, loss_chunk=chunk)
        batch = causal_batch(rng)

        def chunked(model):
            return jnp.sum(batch_rows(model, batch, solves=None)[0].loss)

        value, grads = jax.value_and_grad(chunked)(model)
        expected, expected_grads = jax.value_and_grad(lambda m: plain_loss(m, batch))(plain)
        np.testing.assert_allclose(value, expected, rtol=1e-12)
        for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
            np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)


def test_chunked_distillation_term_equals_the_plain_one(rng):
    """The sandwich rule's soft term: coarse predictions against the detached full-depth ones, chunked."""
    with jax.enable_x64(True):
        plain = tiny_model(dtype="float64", param_dtype="float64")
        model = with_config(plain, loss_chunk=5)
        batch = causal_batch(rng)

        def soft(model):
            teacher = jax.lax.stop_gradient(model.encode(batch["tokens"], batch["padding_mask"]).hidden)
            return jnp.sum(batch_rows(model, batch, solves="euler:2", teacher=teacher)[0].soft_loss)

        value, grads = jax.value_and_grad(soft)(model)
        expected, expected_grads = jax.value_and_grad(lambda m: plain_soft_loss(m, batch, "euler:2", None))(plain)
        assert value > 0.01 * jnp.sum(batch["weights"])  # the coarse solve differs from full depth
        np.testing.assert_allclose(value, expected, rtol=1e-12)
        for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
            np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)


def test_masked_loss_decoded_at_the_targets_only_equals_the_full_loss(rng):
    with jax.enable_x64(True):
        plain = tiny_model(norm="post", objective="masked", dtype="float64", param_dtype="float64")
        model = with_config(plain, masked_positions=3, loss_chunk=2)
        batch = causal_batch(rng)
        weights = np.zeros((3, 13))
        weights[0, [1, 5, 12]] = 1.0  # as many targets as decoded positions
        weights[1, [0, 8]] = 0.5  # fewer
        batch.update(targets=batch["tokens"], weights=jnp.asarray(weights))
        rows, _ = batch_rows(model, batch, solves=None)
        full_rows, _ = batch_rows(plain, batch, solves=None)
        np.testing.assert_allclose(rows.loss, full_rows.loss, rtol=1e-12)
        np.testing.assert_allclose(rows.weight, [3.0, 1.0, 0.0])
        np.testing.assert_allclose(rows.correct, full_rows.correct)
        np.testing.assert_allclose(jnp.sum(rows.loss), plain_loss(plain, batch), rtol=1e-12)
        gathered = jax.make_jaxpr(lambda: batch_rows(model, batch, solves=None))()
        logits_shapes = {tuple(v.aval.shape) for eqn in gathered.eqns for v in eqn.outvars
                         if getattr(v.aval, "shape", ())[-1:] == (64,)}
        assert (3, 13, 64) not in logits_shapes  # no logits at every position


def test_masked_data_keeps_at_most_max_targets_per_row_the_first_chosen():
    rows = np.random.default_rng(0).integers(5, 100, (64, 41))
    free = Batches(rows, global_batch=64, objective="masked", vocab_size=100, seed=3).batch(0)
    capped = Batches(rows, global_batch=64, objective="masked", vocab_size=100, seed=3, max_targets=6).batch(0)
    counts = free["weights"].sum(-1)
    assert counts.max() > 6 and capped["weights"].sum(-1).max() == 6  # the cap binds on some rows
    for free_w, capped_w, count in zip(free["weights"], capped["weights"], counts):
        kept = np.flatnonzero(capped_w)
        np.testing.assert_array_equal(kept, np.flatnonzero(free_w)[:6])
        assert len(kept) == min(count, 6)


@pytest.mark.parametrize("dtype, logits_dtype, expected", [("bfloat16", None, jnp.bfloat16),
                                                            ("bfloat16", "float32", jnp.float32),
                                                            ("float32", "bfloat16", jnp.bfloat16)])
def test_logits_dtype_is_a_config_choice(dtype, logits_dtype, expected, rng):
    model = tiny_model(dtype=dtype, logits_dtype=logits_dtype)
    out = odeplm.forward(model, rng.integers(0, 64, (2, 8)))
    assert out.logits.dtype == expected
    reference = odeplm.forward(with_config(model, dtype="float32", logits_dtype=None), rng.integers(0, 64, (2, 8)))
    assert reference.logits.dtype == jnp.float32


def test_chunking_shrinks_the_compiled_training_step():
    """The gradient of the loss at a large vocabulary: the compiled program's temporaries fall with the chunk."""
    plain = tiny_model(vocab_size=8192, max_length=64, depth="2")
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 8192, (8, 64)))
    batch = {"tokens": tokens, "padding_mask": tokens > 0, "targets": tokens, "weights": jnp.ones((8, 64))}

    def temp_bytes(chunk):
        graphdef, params = nnx.split(with_config(plain, loss_chunk=chunk))

        def loss(params):
            return jnp.sum(batch_rows(nnx.merge(graphdef, params), batch, solves=None)[0].loss)

        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = 8 * 64 * 8192 * 4
    full, chunked = temp_bytes(None), temp_bytes(8)
    assert full > 2 * logits_bytes  # logits and their gradient
    assert chunked < full - 1.5 * logits_bytes

"""The model against independent computations: the layer loop, causality,
padding, compilation reuse, finite-difference gradients and input checks."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import odeplm
from odeplm.core.block import attention_mask
from odeplm.core.model import _forward
from tests.conftest import tiny_model


def layer_loop_logits(model, tokens, padding_mask):
    """The model as an ordinary stack: each segment's block applied `steps` times,
    relaxed by tau when the span is not the step count. No diffrax involved."""
    config = model.config
    encoder = model.encoder
    mask = attention_mask(padding_mask, causal=config.objective == "causal")
    h = encoder.embeddings(tokens)
    for block, segment in zip(encoder.blocks, config.depth):
        for _ in range(segment.steps):
            h = block(h, mask) if segment.tau == 1.0 else h + segment.tau * (block(h, mask) - h)
    if encoder.final_norm is not None:
        h = encoder.final_norm(h)
    return model.head(h, encoder.embeddings)


@pytest.mark.parametrize("depth", ["4", "2x2", "1,2,1", "6@3"])
@pytest.mark.parametrize("norm, objective", [("pre", "causal"), ("post", "masked")])
def test_euler_at_training_steps_is_the_layer_stack(norm, objective, depth, rng):
    model = tiny_model(norm=norm, objective=objective, depth=depth, embedding_size=16, type_vocab_size=2)
    tokens = rng.integers(0, 64, (3, 12))
    padding = np.arange(12)[None] < np.array([[12], [9], [5]])
    out = odeplm.forward(model, tokens, padding)
    expected = layer_loop_logits(model, jnp.asarray(tokens), jnp.asarray(padding))
    real = padding[..., None]
    np.testing.assert_allclose(np.where(real, out.logits, 0), np.where(real, expected, 0), rtol=1e-5, atol=1e-5)
    assert int(out.nfe) == model.config.layers and bool(out.ok)


def test_a_solve_over_another_span_is_a_shallower_or_deeper_stack(rng):
    """Euler steps of size 1 over a span other than the trained one run the shared
    block that many times: the first layers only, or more layers than trained."""
    model = tiny_model(depth="4", initializer_range=0.2)
    tokens = jnp.asarray(rng.integers(0, 64, (2, 12)))
    padding = jnp.ones(tokens.shape, bool)
    for layers in (2, 7):
        deeper = tiny_model(depth=str(layers), initializer_range=0.2)  # the same parameters (seed), other depth
        out = odeplm.forward(model, tokens, solve=f"euler:{layers}@{layers}")
        np.testing.assert_allclose(out.logits, layer_loop_logits(deeper, tokens, padding), rtol=1e-5, atol=1e-5)
        assert int(out.nfe) == layers


def test_rezero_gates_start_as_the_identity_and_learn(rng):
    """With zero gates every block is the identity, so any depth gives the model
    without blocks; the gates are the parameters that move first."""
    model = tiny_model(depth="2x3", residual_gate="rezero")
    tokens = jnp.asarray(rng.integers(0, 64, (2, 12)))
    encoder = model.encoder
    h = encoder.final_norm(encoder.embeddings(tokens))
    no_blocks = model.head(h, encoder.embeddings)
    for solve in ("euler", "rk4:1", "euler:5@9"):
        np.testing.assert_allclose(odeplm.forward(model, tokens, solve=solve).logits, no_blocks, atol=1e-6)
    graphdef, params = nnx.split(model)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens).logits[..., 0]))(params)
    blocks = nnx.to_pure_dict(grads)["encoder"]["blocks"]
    gate_grads = [layer["gates"] for block in blocks.values() for layer in block["layers"].values()]
    assert len(gate_grads) == 2
    assert all(float(jnp.abs(g).min()) > 0 for g in gate_grads)


@pytest.mark.parametrize("solve", ["euler", "euler:2", "midpoint:3", "rk4:2"])
def test_causal_outputs_do_not_see_later_tokens(solve, rng):
    model = tiny_model(objective="causal", norm="pre")
    tokens = rng.integers(0, 64, (2, 12))
    changed = tokens.copy()
    changed[:, 7] = (changed[:, 7] + 1) % 64
    before, after = (odeplm.forward(model, t, solve=solve).logits for t in (tokens, changed))
    np.testing.assert_allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert np.abs(before[:, 7:] - after[:, 7:]).max() > 1e-4


@pytest.mark.parametrize(
    "solve", ["euler", "euler:2", "rk4:2", "bosh3:rtol=1e-2:atol=1e-2", "tsit5:rtol=1e-3:atol=1e-3"]
)
def test_masked_outputs_at_real_tokens_ignore_pad_content(solve, rng):
    """Exactly: masked keys contribute exact zeros, and adaptive step sizes see
    only real tokens."""
    model = tiny_model(objective="masked", norm="post")
    tokens = rng.integers(0, 64, (2, 12))
    padding = np.arange(12)[None] < np.array([[12], [8]])
    other = np.where(padding, tokens, rng.integers(0, 64, tokens.shape))
    a, b = (odeplm.forward(model, t, padding, solve=solve) for t in (tokens, other))
    np.testing.assert_array_equal(a.logits[1, :8], b.logits[1, :8])
    np.testing.assert_array_equal(a.logits[0], b.logits[0])
    assert int(a.nfe) == int(b.nfe)


def test_each_solve_and_shape_compiles_once(monkeypatch, rng):
    traces = []
    call = odeplm.LanguageModel.__call__

    def counted(self, *args, **kwargs):
        traces.append(kwargs["solve"])
        return call(self, *args, **kwargs)

    monkeypatch.setattr(odeplm.LanguageModel, "__call__", counted)
    model = tiny_model(vocab_size=61)  # a config no other test compiles
    tokens = rng.integers(0, 61, (2, 10))
    odeplm.forward(model, tokens, solve="rk4:2")
    odeplm.forward(model, tokens + 1, solve="rk4:2")
    assert len(traces) == 1
    odeplm.forward(model, tokens, solve="rk4:3")
    assert len(traces) == 2
    odeplm.forward(model, tokens, solve=odeplm.Solve("rk4", 2))
    odeplm.forward(tiny_model(seed=1, vocab_size=61), tokens, solve="rk4:2")  # new weights, same shapes
    assert len(traces) == 2
    odeplm.forward(model, tokens[:, :9], solve="rk4:2")
    assert len(traces) == 3


@pytest.mark.parametrize("solve", ["euler", "rk4:3", "tsit5:rtol=1e-4:atol=1e-4"])
def test_gradients_through_the_solve_match_finite_differences(solve):
    with jax.enable_x64(True):
        model = tiny_model(width=16, heads=2, mlp_width=32, depth="2x2", dtype="float64", param_dtype="float64")
        tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 6)))
        weights = jax.random.normal(jax.random.key(2), (2, 6, 64), jnp.float64)

        @jax.jit
        def loss(model):
            return jnp.sum(model(tokens, solve=solve).logits * weights)

        grads = jax.grad(loss)(model)
        leaves, treedef = jax.tree.flatten(model)
        keys = jax.random.split(jax.random.key(3), len(leaves))
        direction = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        eps = 1e-6
        shifted = [jax.tree.map(lambda p, d, s=s: p + s * eps * d, model, direction) for s in (1, -1)]
        numeric = (loss(shifted[0]) - loss(shifted[1])) / (2 * eps)
        assert abs(float(analytic)) > 1e-3
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-5)


@pytest.mark.parametrize(
    "tokens, extra, message",
    [
        (np.full((2, 8), 64), {}, r"token ids must lie in \[0, 64\)"),
        (np.full((2, 8), -1), {}, r"token ids must lie in \[0, 64\)"),
        (np.zeros((2, 17), int), {}, "sequence length 17 exceeds max_length 16"),
        (np.zeros(8, int), {}, r"shape \[batch, seq\]"),
        (np.zeros((0, 8), int), {}, "the batch is empty"),
        ([[1, 2, 3], [4, 5]], {}, "rows of different lengths need padding"),
        (np.zeros((2, 8)), {}, "must be integers"),
        (np.zeros((2, 8), int), {"padding_mask": np.ones((2, 7), bool)}, "padding_mask has shape"),
        (np.zeros((2, 8), int), {"token_types": np.zeros((2, 8), int)}, "no token-type embeddings"),
    ],
)
def test_bad_inputs_fail_before_any_compilation(tokens, extra, message):
    model = tiny_model()
    compiled = _forward._cache_size()
    with pytest.raises(odeplm.InputError, match=message):
        odeplm.forward(model, tokens, **extra)
    with pytest.raises(odeplm.SolverError, match="unknown solver"):
        odeplm.forward(model, np.zeros((2, 8), int), solve="rk45")
    assert _forward._cache_size() == compiled


def test_dropout_follows_the_key_and_is_off_without_one(rng):
    model = tiny_model(dropout=0.2, attention_dropout=0.1)
    tokens = jnp.asarray(rng.integers(0, 64, (2, 10)))
    run = jax.jit(lambda key: model(tokens, key=key).logits)
    plain = model(tokens).logits
    a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 and np.abs(a - plain).max() > 1e-3


def test_classifier_pools_the_last_real_token_of_causal_models(rng):
    config = tiny_model().config
    classifier = odeplm.SequenceClassifier(config, num_labels=3, rngs=nnx.Rngs(0))
    tokens = rng.integers(0, 64, (2, 10))
    padding = np.arange(10)[None] < np.array([[10], [6]])
    out = odeplm.forward(classifier, tokens, padding)
    changed = tokens.copy()
    changed[1, 6:] = 0  # pad content
    assert out.logits.shape == (2, 3)
    np.testing.assert_allclose(odeplm.forward(classifier, changed, padding).logits, out.logits, atol=1e-6)
    changed[1, 5] = (changed[1, 5] + 1) % 64  # the last real token
    assert np.abs(odeplm.forward(classifier, changed, padding).logits[1] - out.logits[1]).max() > 1e-4


def test_import_odeplm_brings_the_model_core_only_and_load_on_first_use():
    code = ("import sys, odeplm\n"
            "heavy = lambda: sorted({m.split('.')[0] for m in sys.modules} & "
            "{'orbax', 'sentencepiece', 'tensorflow', 'tensorflow_datasets', 'grain', 'matplotlib', 'tqdm'})\n"
            "print(heavy())\n"
            "assert callable(odeplm.load) and issubclass(odeplm.CheckpointError, ValueError)\n"
            "print(heavy())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert "orbax" in out[1] and "sentencepiece" in out[1]


def test_fewer_solve_checkpoints_give_the_same_gradients_in_less_memory():
    """Binomial checkpointing of the loop: 2 of 8 states kept, the rest recomputed; gradients equal (float64)
    and the compiled backward pass's temporaries fall by at least the states not kept. (With the block's
    internals rematerialised: otherwise a recomputed step keeps its residuals and memory rises.)"""
    with jax.enable_x64(True):
        model = tiny_model(width=16, heads=2, mlp_width=32, max_length=64, depth="8", dtype="float64",
                           param_dtype="float64", remat="full")
        tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (4, 64)))

        def gradients(checkpoints):
            config = odeplm.ModelConfig(**{**model.config.to_dict(), "solve_checkpoints": checkpoints})
            graphdef, _ = nnx.split(odeplm.LanguageModel(config, rngs=nnx.Rngs(0)))
            params = nnx.state(model)

            def loss(params):
                return jnp.sum(nnx.merge(graphdef, params)(tokens).logits[..., 0] ** 2)

            compiled = jax.jit(jax.grad(loss)).lower(params).compile()
            return jax.tree.leaves(compiled(params)), compiled.memory_analysis().temp_size_in_bytes

        every, every_bytes = gradients(None)
        two, two_bytes = gradients(2)
        for a, b in zip(every, two):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
        state_bytes = 4 * 64 * 16 * 8
        assert two_bytes <= every_bytes - 5 * state_bytes, (two_bytes, every_bytes)

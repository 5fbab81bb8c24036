"""Cached generation against recomputing the whole sequence with the diffrax solve."""

import numpy as np
import pytest

import odeplm
from odeplm.core.solvers import SolverError
from odeplm.inference.generate import Sampling, generate
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(objective="causal", norm="pre", depth="2x2", max_length=48, initializer_range=0.2)


@pytest.mark.parametrize("solve", ["euler", "euler:1", "midpoint:2", "rk4:1"])
def test_greedy_cached_generation_equals_recomputation(model, solve):
    prompt = [7, 21, 3 + 2, 40, 11]
    (expected,) = generate(model, [prompt], max_new_tokens=20, solve=solve, end_token=None, cached=False)
    (cached,) = generate(model, [prompt], max_new_tokens=20, solve=solve, end_token=None)
    assert len(cached) == 20
    assert cached == expected


def test_sampled_batches_equal_recomputation_token_for_token(model):
    prompts = [[9, 8, 7, 6, 5], [30], [12, 40, 41]]
    sampling = Sampling(temperature=1.0, top_k=16)
    kwargs = dict(max_new_tokens=10, solve="rk4:1", sampling=sampling, seed=3, end_token=None)
    assert generate(model, prompts, **kwargs) == generate(model, prompts, cached=False, **kwargs)


def test_recomputation_serves_the_solves_the_cache_cannot(model):
    (adaptive,) = generate(model, [[5, 6, 7]], max_new_tokens=6, solve="tsit5:rtol=1e-6:atol=1e-6", end_token=None,
                           cached=False)
    (fine,) = generate(model, [[5, 6, 7]], max_new_tokens=6, solve="rk4:8", end_token=None)
    assert adaptive == fine


def test_batched_prompts_of_different_lengths_decode_as_each_alone(model):
    prompts = [[9, 8, 7, 6, 5, 4, 3 + 10], [30], [12, 40, 41]]
    batched = generate(model, prompts, max_new_tokens=12, solve="midpoint:2", end_token=None)
    alone = [generate(model, [p], max_new_tokens=12, solve="midpoint:2", end_token=None)[0] for p in prompts]
    assert batched == alone


def test_sampling_follows_the_seed_and_stops_at_the_end_token(model):
    sampling = Sampling(temperature=1.0, top_k=8, top_p=0.9)
    a, b, c = (generate(model, [[5, 6, 7]] * 2, max_new_tokens=10, sampling=sampling, seed=s, end_token=None)
               for s in (0, 0, 1))
    assert a == b and a != c
    greedy = generate(model, [[5, 6, 7]], max_new_tokens=10, end_token=None)[0]
    stopped = generate(model, [[5, 6, 7]], max_new_tokens=10, end_token=greedy[3])[0]
    assert stopped == greedy[: greedy.index(greedy[3])]


def test_bad_generation_requests_are_refused(model):
    with pytest.raises(SolverError, match="fixed evaluation schedule.*cached=False"):
        generate(model, [[5]], max_new_tokens=2, solve="tsit5:rtol=1e-3:atol=1e-3")
    with pytest.raises(odeplm.InputError, match="exceeds max_length 48"):
        generate(model, [[5] * 40], max_new_tokens=9)
    assert len(generate(model, [[5] * 40, [6] * 30], max_new_tokens=8, end_token=None)[1]) == 8  # rows, not their sum
    with pytest.raises(odeplm.InputError, match=r"ids must lie in \[0, 64\)"):
        generate(model, [[64]], max_new_tokens=2)
    with pytest.raises(odeplm.InputError, match="at least one token"):
        generate(model, [[]], max_new_tokens=2)
    with pytest.raises(odeplm.InputError, match="max_new_tokens must be a positive integer, got -3"):
        generate(model, [[5]], max_new_tokens=-3)


@pytest.mark.parametrize("solve", ["euler", "midpoint:2", "bosh3:1", "rk4:1"])
def test_cached_logits_match_recomputation_at_every_position(model, solve):
    import jax
    import jax.numpy as jnp

    from odeplm.core.solvers import plan_solves
    from odeplm.inference.generate import decode, empty_cache

    solves = plan_solves(model.config.depth, solve)
    sequence = np.random.default_rng(0).integers(5, 64, 16).astype(np.int32)
    buffer = np.zeros((1, 48), np.int32)
    buffer[0, :16] = sequence
    valid = np.zeros((1, 48), bool)
    valid[0, :4] = True
    decode_jit = jax.jit(decode, static_argnames=("solves",))
    recomputed = jax.jit(lambda model, tokens, mask: model(tokens, mask, solve=solves).logits)
    logits, caches = decode_jit(model, jnp.asarray(sequence[None, :4]), jnp.arange(4)[None], jnp.asarray(valid),
                                empty_cache(model, solves, 1, 48), 0, solves)
    for slot in range(4, 16):
        expected = recomputed(model, jnp.asarray(buffer), jnp.arange(48)[None] < slot)[0, slot - 1]
        np.testing.assert_allclose(logits[0], expected, atol=1e-4, rtol=1e-4)
        valid[0, slot] = True
        logits, caches = decode_jit(model, jnp.asarray(sequence[None, slot:slot + 1]), jnp.asarray([[slot]]),
                                    jnp.asarray(valid), caches, slot, solves)

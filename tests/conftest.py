"""Shared fixtures: tiny models that compile in seconds on CPU."""

import jax
import numpy as np
import pytest
from flax import nnx

import odeplm

jax.config.update("jax_numpy_rank_promotion", "raise")


def tiny_config(**overrides) -> odeplm.ModelConfig:
    values = dict(vocab_size=64, width=32, heads=4, mlp_width=64, max_length=16, depth="4")
    values.update(overrides)
    return odeplm.ModelConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> odeplm.LanguageModel:
    return odeplm.LanguageModel(tiny_config(**overrides), rngs=nnx.Rngs(seed))


@pytest.fixture
def rng():
    return np.random.default_rng(0)

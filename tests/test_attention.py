"""Attention through `jax.nn.dot_product_attention` against the softmax written
out in numpy (float64), with padding and causal masks. Cached decoding is
checked against recomputation in test_generate."""

import jax
import numpy as np
import pytest
from flax import nnx

from odeplm.core.block import Attention, attention_mask
from odeplm.core.config import ConfigError
from tests.conftest import tiny_config


def numpy_attention(attention: Attention, h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    def project(layer, x):
        return x @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)

    batch, length, width = h.shape
    heads = attention.config.heads
    split = lambda x: x.reshape(batch, length, heads, width // heads)  # noqa: E731
    q, k, v = (split(project(layer, h)) for layer in (attention.query, attention.key, attention.value))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads)
    logits = np.where(mask[:, None], logits, -1e30)  # fully masked rows are excluded below
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return project(attention.output, np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])  # float64 takes the explicit-softmax path
def test_attention_matches_the_softmax_written_out(causal, dtype, rng):
    with jax.enable_x64(dtype == "float64"):
        attention = Attention(tiny_config(width=32, heads=4, dtype=dtype, param_dtype=dtype), rngs=nnx.Rngs(0))
        h = rng.normal(size=(3, 10, 32)).astype(dtype)
        padding = np.ones((3, 10), bool)
        padding[1, 6:] = False  # right padding
        padding[2, :3] = False  # left padding
        mask = np.asarray(attention_mask(padding, causal))
        got = np.asarray(attention(h, mask))
    expected = numpy_attention(attention, h.astype(np.float64), mask)
    seen = mask.any(-1)  # queries with at least one visible key
    tolerance = {"float32": 1e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(got[seen], expected[seen], rtol=10 * tolerance, atol=tolerance)


def test_an_unknown_attention_implementation_is_named():
    with pytest.raises(ConfigError, match="attention"):
        tiny_config(attention="flash")

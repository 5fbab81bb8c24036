"""Solver registry, NFE accounting against a real count, and convergence order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import odeplm
from odeplm import Solve, SolverError
from odeplm.core.block import attention_mask


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Solve("rk5"), "unknown solver 'rk5'"),
        (lambda: Solve("euler", 0), "steps must be a positive integer"),
        (lambda: Solve("euler", -3), "steps must be a positive integer"),
        (lambda: Solve("rk4", rtol=1e-3, atol=1e-3), "no error estimate"),
        (lambda: Solve("tsit5", 4, rtol=1e-3, atol=1e-3), "not both"),
        (lambda: Solve("tsit5", rtol=1e-3), "both rtol and atol"),
        (lambda: Solve.parse("rk4:three"), "cannot parse"),
        (lambda: Solve.parse("tsit5:tol=1"), "unknown solve option"),
        (lambda: Solve.parse("euler:2:3"), "gives steps twice"),
        (lambda: Solve.parse("tsit5:rtol=inf:atol=inf"), "positive and finite"),
        (lambda: Solve.parse("euler:4@x"), "cannot parse the span"),
        (lambda: Solve("euler", 4, span=0), "span must be a positive number"),
        (lambda: odeplm.plan_solves(odeplm.parse_depth("6"), 123), "one per segment; got 123"),
        (lambda: odeplm.plan_solves(odeplm.parse_depth("2x3"), ["euler", "rk4", "heun"]), "3 solves given"),
    ],
)
def test_bad_solves_are_rejected(make, message):
    with pytest.raises(SolverError, match=message):
        make()


def test_parse_and_plan():
    assert Solve.parse("rk4:3") == Solve("rk4", 3)
    assert Solve.parse("tsit5:rtol=1e-3:atol=1e-4") == Solve("tsit5", rtol=1e-3, atol=1e-4)
    plan = odeplm.plan_solves(odeplm.parse_depth("1,4,1"), odeplm.parse_plan("euler,rk4:2,euler"))
    assert plan == (Solve("euler", 1), Solve("rk4", 2), Solve("euler", 1))
    assert odeplm.plan_solves(odeplm.parse_depth("6")) == (Solve("euler", 6),)
    assert Solve.parse("euler:16@16") == Solve("euler", 16, span=16.0)
    assert str(Solve("euler", 16, span=16)) == "euler:16@16"
    assert Solve.parse(str(Solve("tsit5", rtol=1e-3, atol=1e-4, span=2.5))) == Solve("tsit5", rtol=1e-3, atol=1e-4,
                                                                                      span=2.5)


@pytest.mark.parametrize(
    "solve",
    [Solve(name, 3) for name in odeplm.SOLVERS if name != "ln_euler"]  # it steps a Post-LN block: test_recipes
    + [Solve(name, rtol=1e-4, atol=1e-6, max_steps=512) for name, info in odeplm.SOLVERS.items() if info.adaptive]
    + [Solve("heun", rtol=1e-6, atol=1e-6, max_steps=4)],  # runs out of steps
    ids=str,
)
def test_reported_nfe_equals_evaluations_counted_at_run_time(solve):
    """A host callback inside the vector field counts evaluations as they run."""
    calls = []

    def field(h, mask, key, time, stride):
        jax.debug.callback(lambda: calls.append(1), ordered=True)
        return jnp.sin(3.0 * h) + mask.sum() * 0.0  # nonlinear, so adaptive solves reject steps

    h = jnp.linspace(-1.0, 1.0, 8).reshape(1, 2, 4)
    _, nfe, ok = jax.jit(lambda h: odeplm.integrate(field, h, jnp.ones((1, 2, 2), bool), span=4.0, solve=solve))(h)
    jax.effects_barrier()
    assert bool(ok) == (solve.max_steps > 4)
    assert int(nfe) == len(calls) > 0


# Step counts in the asymptotic range of each method on the model below (orders come from the registry).
ASYMPTOTIC_STEPS = {
    "euler": [16, 32, 64, 128],
    "midpoint": [8, 16, 32, 64],
    "heun": [8, 16, 32, 64],
    "ralston": [8, 16, 32, 64],
    "bosh3": [8, 16, 32, 64],
    "rk4": [4, 8, 16, 32],
}


def test_convergence_order():
    """Error of the final state against a fine reference falls as N^-order (float64)."""
    with jax.enable_x64(True):
        config = odeplm.ModelConfig(
            vocab_size=8, width=16, heads=2, mlp_width=32, max_length=8, depth="4",
            dtype="float64", param_dtype="float64", initializer_range=0.2,
        )
        block = odeplm.LanguageModel(config, rngs=nnx.Rngs(0)).encoder.blocks[0]
        h0 = jax.random.normal(jax.random.key(1), (2, 6, 16), jnp.float64)
        mask = attention_mask(jnp.ones((2, 6), bool), causal=True)
        solve = jax.jit(lambda s: odeplm.integrate(block, h0, mask, span=4.0, solve=s)[0], static_argnums=0)
        reference = solve(Solve("rk4", 1024))
        assert float(jnp.abs(reference - h0).max()) > 1.0  # the flow moves the state a lot
        for name, steps in ASYMPTOTIC_STEPS.items():
            errors = [float(jnp.abs(solve(Solve(name, n)) - reference).max()) for n in steps]
            slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
            assert abs(-slope - odeplm.SOLVERS[name].order) <= 0.3, (name, errors, slope)

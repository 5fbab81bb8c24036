"""A shared block read as an ODE, integrated with diffrax.

The vector field is f(t, h) = Phi(h) - h, so one explicit Euler step of size 1
is exactly the layer, and L shared layers are Euler with L steps over [0, L].
The block travels through the solve as diffrax `args` (NNX modules are
pytrees), so gradients reach its parameters through the solver loop. A
time-aware block reads t as the fraction t / span of its segment, and a
stride-aware one the solver's step in training steps (its stride).

The block's arguments travel as (block, mask, key, span, stride); `ln_euler`
(`odeplm.core.solvers.LayerNormEuler`) steps the block itself with the same ones.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from odeplm.core.block import Block
from odeplm.core.solvers import ReadsItsStep, Solve, SolverError, time_key


def vector_field(t, h, args):
    """f(t, h) = Phi(h) - h."""
    block, mask, key, span, stride = args
    return block(h, mask, time_key(key, t), t / span, stride=stride) - h


TERM = diffrax.ODETerm(vector_field)


def real_token_rms(weights: Float[Array, "batch seq 1"], error: Float[Array, "batch seq width"]) -> Float[Array, ""]:
    """RMS of the scaled local error over real tokens only, so that the content of
    padding cannot steer adaptive step sizes (and through them real outputs)."""
    squares = jnp.sum(jnp.square(error.astype(jnp.float32)) * weights)
    return jnp.sqrt(squares / jnp.maximum(jnp.sum(weights) * error.shape[-1], 1.0))


def integrate(
    block: Block,
    h: Float[Array, "batch seq width"],
    mask: Bool[Array, "batch seq seq"],
    *,
    span: float,
    solve: Solve,
    key: PRNGKeyArray | None = None,
    padding_mask: Bool[Array, "batch seq"] | None = None,
    checkpoints: int | None = None,
    states: bool = False,
    tau: float = 1.0,
) -> tuple[Float[Array, "*steps batch seq width"], Int[Array, ""], Bool[Array, ""]]:
    """Integrates dh/dt = f(t, h) over [0, span]; returns (h(span), NFE, success), or with
    `states` (fixed steps only) the state after every step, stacked, in place of h(span):
    what state matching compares a coarse solve's steps with (`odeplm.runs.recipe`).

    Fixed-step solves lower to one loop of exactly `steps` iterations and keep
    every step for the backward pass (as a scan would), or only `checkpoints`
    of them (`ModelConfig.solve_checkpoints`), recomputing the rest from the nearest one
    (diffrax's binomial checkpointing: the remat of the loop, where a shared
    model's activation memory lives); adaptive solves use a PID
    controller starting from one step over the whole span, so every evaluation
    is counted in NFE. A step of size dt has the stride dt / tau, in training
    steps of size `tau`, which a stride-aware block reads: a fixed solve's one
    step size, or each step an adaptive solve attempts (`ReadsItsStep`). First-same-as-last solvers
    start from f(0, h) evaluated here once; diffrax would otherwise re-evaluate it
    after every rejected first step, uncounted in its statistics. Failure (max_steps
    reached) is reported, not raised, to keep the compiled loop free of host callbacks.
    """
    if solve.adaptive:
        dt0 = span
        weights = jnp.ones(h.shape[:2], jnp.float32) if padding_mask is None else padding_mask.astype(jnp.float32)
        norm = jax.tree_util.Partial(real_token_rms, weights[..., None])
        controller = diffrax.PIDController(rtol=solve.rtol, atol=solve.atol, norm=norm)
        max_steps = solve.max_steps
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    else:
        dt0 = span / solve.steps
        controller = diffrax.ConstantStepSize()
        max_steps = solve.steps
        kept = min(solve.steps, checkpoints or solve.steps)
        adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=kept)
    if states and solve.adaptive:
        raise SolverError(f"the state after every step needs a fixed step count, got the adaptive solve {solve}")
    if solve.solver == "ln_euler" and block.norm != "post":
        raise SolverError("ln_euler steps inside a Post-LN block's LayerNorms; this model is Pre-LN")
    args = (block, mask, key, span, dt0 / tau)
    solver_state = (jnp.array(False), vector_field(0.0, h, args)) if solve.info.fsal else None
    solution = diffrax.diffeqsolve(
        TERM,
        ReadsItsStep(solve.info.make(), tau) if solve.adaptive else solve.info.make(),
        t0=0.0,
        t1=span,
        dt0=dt0,
        y0=h,
        args=args,
        saveat=diffrax.SaveAt(steps=True) if states else diffrax.SaveAt(t1=True),
        stepsize_controller=controller,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
        solver_state=solver_state,
    )
    nfe = solve.info.nfe(solution.stats["num_steps"])
    return solution.ys if states else solution.ys[0], nfe, solution.result == diffrax.RESULTS.successful

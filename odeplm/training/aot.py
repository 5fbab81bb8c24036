"""Ahead-of-time proof that a run fits a TPU topology, on a machine without one.

The Trainer's own `TrainProgram` is built over the topology's compile-only
devices and compiled for every step count the recipe draws; XLA's
`memory_analysis()` then gives per-device arguments, outputs and temporaries,
the figures that decide whether the pod runs out of HBM.

Each step count also gets a roofline bound on its step time, before any chip is
booked: model FLOPs over the chips' peak, and HBM bytes over the chips'
bandwidth. XLA's `cost_analysis()` counts a diffrax loop body once, so FLOPs are
our own count and the bytes are XLA's (everything once, one evaluation of each
segment's block included) plus our count of the block's repeated evaluations
(`odeplm.core.flops.block_traffic_bytes`). A bound, not a measurement: the step
takes at least the larger of the two.
"""

from __future__ import annotations

import dataclasses
import re
import time

from ml_collections import ConfigDict

from odeplm.core.config import ModelConfig
from odeplm.core.flops import block_traffic_bytes, training_flops_per_token
from odeplm.core.sharding import make_mesh
from odeplm.runs.settings import TrainSettings
from odeplm.training.program import TrainProgram
from odeplm.training.topology import GIB, Topology

_HBM_EXHAUSTED = re.compile(r"RESOURCE_EXHAUSTED.*?([0-9.]+)([GMK])\b.*exceeds available HBM", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """One compiled train step's per-device memory, or the compiler's refusal."""

    steps: int  # step count per segment (the depth plan's own when the recipe draws none)
    nfe: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    per_device_bytes: int  # arguments + outputs - donated aliases + temporaries
    hbm_bytes: int
    compile_seconds: float
    model_flops: float  # per step, whole global batch, forward and backward
    hbm_traffic_bytes: float = 0.0  # per device and step: XLA's bytes accessed plus our estimate of the block's repeats
    compute_bound_s: float = 0.0  # model FLOPs over the topology's peak
    memory_bound_s: float = 0.0  # HBM traffic over one chip's bandwidth
    error: str = ""

    @property
    def fits(self) -> bool:
        return not self.error and self.per_device_bytes <= self.hbm_bytes

    @property
    def bound_s(self) -> float:
        """The roofline bound on the step time: no step runs faster."""
        return max(self.compute_bound_s, self.memory_bound_s)


def compile_for_topology(config: ConfigDict, topology: Topology) -> tuple[dict[str, int], list[CompiledStep]]:
    """Compiles the run's train step for `topology`, once per step count it can
    draw; returns the mesh it resolved (data=-1 filled in) and one result per count."""
    settings = TrainSettings.from_config(config)
    model_config = ModelConfig.from_dict(config.model)
    mesh = make_mesh(*settings.mesh, devices=topology.devices())
    program = TrainProgram(model_config, settings, mesh)
    hbm = topology.generation.hbm_bytes
    tokens = settings.batch_size * model_config.max_length
    results = []
    for steps in program.step_counts():
        nfe = settings.discretisation.nfe(model_config.depth, steps)
        flops = training_flops_per_token(model_config, nfe, model_config.max_length) * tokens
        start = time.perf_counter()
        try:
            compiled = program.lower(steps).compile()
            memory = compiled.memory_analysis()
        except Exception as error:  # XLA refuses programs that exceed HBM at compile time
            match = _HBM_EXHAUSTED.search(str(error))
            if not match:
                raise
            temp = int(float(match.group(1)) * {"G": GIB, "M": 2**20, "K": 2**10}[match.group(2)])
            results.append(CompiledStep(
                steps or model_config.layers, nfe, 0, 0, 0, temp, temp, hbm, time.perf_counter() - start, flops,
                error=f"compiler: temporaries {temp / GIB:.2f} GiB exceed HBM {hbm / GIB:.2f} GiB"))
            continue
        seconds = time.perf_counter() - start
        total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                 + memory.temp_size_in_bytes)
        repeats = nfe - len(model_config.depth)  # evaluations beyond the loop body XLA counts once per segment
        traffic = compiled.cost_analysis()["bytes accessed"] + block_traffic_bytes(
            model_config, repeats, tokens // (mesh.shape["data"] * mesh.shape["fsdp"]))
        results.append(CompiledStep(
            steps or model_config.layers, nfe, memory.argument_size_in_bytes, memory.output_size_in_bytes,
            memory.alias_size_in_bytes, memory.temp_size_in_bytes, total, hbm, seconds, flops, traffic,
            flops / (topology.chips * topology.generation.peak_bf16_flops),
            traffic / topology.generation.hbm_bytes_per_s))
    return dict(mesh.shape), results


def format_table(results: list[CompiledStep]) -> str:
    lines = [f"{'N':>4}{'NFE':>5}{'arguments':>11}{'outputs':>9}{'temps':>9}{'total':>9}{'HBM':>8}"
             f"{'fits':>6}{'compile s':>11}{'TFLOP/step':>12}{'FLOP bound':>12}{'HBM bound':>11}{'step >=':>9}"]
    for r in results:
        lines.append(f"{r.steps:>4}{r.nfe:>5}{r.argument_bytes / GIB:>11.2f}{r.output_bytes / GIB:>9.2f}"
                     f"{r.temp_bytes / GIB:>9.2f}{r.per_device_bytes / GIB:>9.2f}{r.hbm_bytes / GIB:>8.2f}"
                     f"{'yes' if r.fits else 'NO':>6}{r.compile_seconds:>11.1f}{r.model_flops / 1e12:>12.1f}"
                     f"{r.compute_bound_s * 1e3:>10.0f}ms{r.memory_bound_s * 1e3:>9.0f}ms{r.bound_s * 1e3:>7.0f}ms")
    lines.append("(GiB per device; total = arguments + outputs - donated aliases + temporaries; the bounds are a "
                 "roofline estimate, not a measurement: model FLOPs over the chips' bf16 peak, HBM traffic over "
                 "the chip's bandwidth)")
    return "\n".join(lines)

"""TPU topologies and their compile-only devices, for proving memory before a pod is booked.

libtpu (`pip install "odeplm[tpu]"`) compiles for any TPU topology on a CPU
machine; `jax.experimental.topologies` hands out devices that can be compiled
for but never run. Each chip's HBM comes from the generation's public spec.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from odeplm.core.errors import OdeplmError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str
    hbm_bytes: int  # per chip, as XLA reports it available to one program
    dims: int  # torus dimensions in a topology name: v5e is 2D, v4 and v5p 3D
    chips_per_host: tuple[int, ...]  # host bounds, as libtpu wants them
    peak_bf16_flops: float  # per chip
    hbm_bytes_per_s: float  # per chip


GENERATIONS = {
    "v4": Generation("v4", 32 * GIB, 3, (2, 2, 1), 275e12, 1200e9),
    "v5e": Generation("v5e", int(15.75 * GIB), 2, (2, 2, 1), 197e12, 819e9),
    "v5p": Generation("v5p", 95 * GIB, 3, (2, 2, 1), 459e12, 2765e9),
}


class TopologyError(OdeplmError):
    """An unknown topology name, or libtpu missing."""


@dataclasses.dataclass(frozen=True)
class Topology:
    generation: Generation
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.generation.name}:{'x'.join(map(str, self.shape))}"

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def parse(cls, name: str) -> "Topology":
        """`v5e:4x4`, `v4:2x2x2`, `v5p:4x4x4`; v5e also takes its chip count (`v5e-16`)."""
        known = ", ".join(f"{g.name}:{'x'.join(['N'] * g.dims)}" for g in GENERATIONS.values())
        match = re.fullmatch(r"(v\w+?)[:-]([0-9x]+)", name.strip())
        generation = GENERATIONS.get(match.group(1)) if match else None
        if generation is None:
            raise TopologyError(f"unknown topology {name!r}; known generations and forms: {known} "
                                f"(v5e also as v5e-CHIPS: v5e-8, v5e-16, v5e-256)")
        text = match.group(2)
        if "x" not in text and generation.name == "v5e" and text in _V5E_BY_CHIPS:
            shape = _V5E_BY_CHIPS[text]
        else:
            shape = tuple(int(x) for x in text.split("x") if x)
        if len(shape) != generation.dims or min(shape) < 1:
            raise TopologyError(f"topology {name!r}: {generation.name} takes {generation.dims} dimensions; "
                                f"known forms: {known}")
        return cls(generation, shape)

    def devices(self) -> list:
        """This topology's compile-only devices (JAX must run on CPU, with libtpu installed)."""
        try:
            import libtpu  # noqa: F401
        except ImportError:
            raise TopologyError('compiling for a TPU topology needs libtpu: pip install "odeplm[tpu]" '
                                '(or pip install "jax[tpu]" at this jax version; about 700 MB)') from None
        from jax.experimental import topologies

        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server: this is not a TPU VM
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip is claimed
        host = self.generation.chips_per_host
        bounds = tuple(min(h, s) for h, s in zip(host, self.shape + (1,) * (3 - len(self.shape))))
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=self.name, chip_config_name="default", chips_per_host_bounds=bounds,
            num_slices=1, wrap=(False, False, False))
        return list(description.devices)


_V5E_BY_CHIPS = {"1": (1, 1), "4": (2, 2), "8": (2, 4), "16": (4, 4), "32": (4, 8), "64": (8, 8),
                 "128": (8, 16), "256": (16, 16)}

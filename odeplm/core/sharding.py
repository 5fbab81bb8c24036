"""Device mesh (data, fsdp, tensor) and the logical-axis rules that place
parameters, batches and activations on it.

Parameters carry logical axis names from `odeplm.core.block.logical`; activations
are constrained inside the model with `constrain`. The rules map each name onto
mesh axes. A dimension that does not divide evenly over its mesh axes stays
replicated, so any model runs on any mesh. Without the activation constraints
XLA is free to follow the fsdp-sharded weights and gather activations instead,
and memory then grows with the fsdp degree.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from odeplm.core.errors import OdeplmError

AXES = ("data", "fsdp", "tensor")
RULES: dict[str, tuple[str, ...]] = {
    # parameters: fsdp shards the model width, tensor the heads, MLP and vocabulary
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "mlp": ("tensor",),
    # activations: the batch over data and fsdp; features over tensor
    "batch": ("data", "fsdp"),
    "act_embed": ("tensor",),
    "act_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
}


class MeshError(OdeplmError):
    """A mesh shape that does not fit the devices, or a batch that does not fit the mesh."""


def make_mesh(data: int, fsdp: int, tensor: int, devices=None) -> Mesh:
    """A mesh over all devices (or the given ones, such as a TPU topology's
    compile-only devices); `data=-1` takes whatever the other axes leave."""
    devices = jax.devices() if devices is None else list(devices)
    count = len(devices)
    if data == -1:
        if fsdp < 1 or tensor < 1 or count % (fsdp * tensor):
            raise MeshError(f"fsdp={fsdp} x tensor={tensor} does not divide {count} devices")
        data = count // (fsdp * tensor)
    if min(data, fsdp, tensor) < 1 or data * fsdp * tensor != count:
        raise MeshError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} = {data * fsdp * tensor} "
                        f"does not match the {count} available devices")
    # Devices ordered by process, so each process's devices hold a contiguous batch slice.
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(ordered).reshape(data, fsdp, tensor), AXES)


def spec_for(names: tuple[str | None, ...] | None, shape: tuple[int, ...],
             mesh: Mesh | AbstractMesh) -> PartitionSpec:
    """Mesh placement of one array from its logical axis names."""
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        axes = tuple(a for a in RULES.get(name, ()) if a not in used and mesh.shape[a] > 1)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes if len(axes) > 1 else axes[0])
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Pins an activation's sharding by logical axis names under the abstract mesh
    in effect (`TrainProgram` traces its step under one); without a mesh
    (single-device inference) it changes nothing."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec_for(names, x.shape, mesh))


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> dict:
    """NamedShardings shaped like `abstract_state.to_pure_dict()`."""
    def sharding(variable):
        names = variable.get_metadata().get("out_sharding")
        return NamedSharding(mesh, spec_for(names, variable.shape, mesh))

    shardings = jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(RULES["batch"]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from each process's slice of the batch."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

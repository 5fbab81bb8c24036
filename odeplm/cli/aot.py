"""Proves that a run fits a TPU topology before the pod is booked: compiles the
Trainer's own sharded, donated train step for the topology's compile-only
devices (libtpu, on this CPU machine) for every step count the recipe draws,
and reports per-device memory against the chip's HBM.

    python -m train.aot --config configs/gpt2_small_shared.py --topology v5e:4x4 --out aot.json
    python -m train.aot --config configs/gpt2_small_shared.py --topology v5e:16x16 \\
        --config.mesh.fsdp=16 --config.model.remat=full

Exit status: 0 if every step fits, 1 if one does not (the message names the
config, topology, mesh and shortfall), 2 for bad input.
"""

from __future__ import annotations

import dataclasses
import json

import jax
from absl import flags
from ml_collections import config_flags

from odeplm.cli import config_flag, fail, run

flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:4x4, v4:2x2x4, v5p:4x4x4")
flags.DEFINE_string("out", None, "write the figures as JSON here")
flags.mark_flags_as_required(["config", "topology"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from etils import epath

    from odeplm.training.aot import compile_for_topology, format_table
    from odeplm.training.topology import GIB, Topology

    config, name = FLAGS.config, config_flags.get_config_filename(FLAGS["config"])
    topology = Topology.parse(FLAGS.topology)
    mesh_shape, results = compile_for_topology(config, topology)
    mesh = " x ".join(f"{axis}={size}" for axis, size in mesh_shape.items())
    print(f"{name} on {topology.name} ({topology.chips} chips), mesh {mesh}, "
          f"global batch {config.train.batch_size} x {config.model.max_length}, remat {config.model.remat}")
    print(format_table(results))
    if FLAGS.out:
        record = {"config": name, "topology": topology.name, "chips": topology.chips,
                  "mesh": mesh_shape, "batch_size": config.train.batch_size, "length": config.model.max_length,
                  "remat": config.model.remat,
                  "steps": [dataclasses.asdict(r) for r in results]}
        out = epath.Path(FLAGS.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
    failing = [r for r in results if not r.fits]
    if failing:
        worst = max(failing, key=lambda r: r.per_device_bytes)
        over = (worst.per_device_bytes - worst.hbm_bytes) / GIB
        fail(f"{name} does not fit {topology.name} with mesh {mesh}: step count {worst.steps} needs "
             f"{worst.per_device_bytes / GIB:.2f} GiB per device, {over:.2f} GiB over the "
             f"{worst.hbm_bytes / GIB:.2f} GiB HBM", status=1)


def entry():
    jax.config.update("jax_platforms", "cpu")  # compile-only TPU devices: nothing runs on an accelerator
    run(main, flags_parser=config_flag.parse)

"""The pod memory table of docs/pods.md: `train.aot` for each (config, topology, mesh,
remat policy), at the largest step count the config's recipe draws (the one
that binds memory), collected into one markdown table with each step's roofline bound.
Compiles already written under --out are read back, not redone.

    python -m eval.aot_table --out results/aot
    python -m eval.aot_table --configs gpt2_small_shared --meshes 2x8 --set model.max_length=2048 --out results/aot
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import flags

from odeplm.cli import run
from odeplm.training.topology import Topology

flags.DEFINE_string("out", "results/aot", "directory for one JSON per compile and table.md")
flags.DEFINE_list("configs", ["gpt2_small_shared", "albert_base_shared"], "config names under configs/")
flags.DEFINE_list("topologies", ["v5e:4x4", "v5e:16x16"], "TPU topologies")
flags.DEFINE_list("remat", ["none", "dots", "full"], "remat policies")
flags.DEFINE_list("meshes", [], "DATAxFSDP meshes (default: every mesh of MESHES for the topology's chip count)")
flags.DEFINE_list("set", [], "config overrides for every compile, as FIELD=VALUE (model.max_length=2048)")
FLAGS = flags.FLAGS

MESHES = {16: ((16, 1), (4, 4), (2, 8), (1, 16)), 256: ((256, 1), (16, 16), (1, 256))}


def main(argv):
    del argv
    os.makedirs(FLAGS.out, exist_ok=True)
    rows: dict[tuple, dict] = {}
    for config in FLAGS.configs:
        module = __import__(f"configs.{config}", fromlist=["get_config"])
        largest = max(int(n) for n in str(module.get_config().train.step_counts or "0").split(",") if n)
        for topology in FLAGS.topologies:
            meshes = [tuple(map(int, m.split("x"))) for m in FLAGS.meshes] or MESHES[Topology.parse(topology).chips]
            for data, fsdp in meshes:
                for remat in FLAGS.remat:
                    name = "-".join([config, topology.replace(":", "_"), f"{data}x{fsdp}", remat]
                                    + [item.replace("=", "_") for item in FLAGS.set])
                    path = os.path.join(FLAGS.out, f"{name}.json")
                    if not os.path.exists(path):
                        command = [sys.executable, "-m", "train.aot", f"--config=configs/{config}.py",
                                   f"--topology={topology}", f"--config.mesh.data={data}",
                                   f"--config.mesh.fsdp={fsdp}", f"--config.model.remat={remat}", f"--out={path}"]
                        command += [f"--config.{item}" for item in FLAGS.set]
                        if largest:
                            command += [f"--config.train.step_counts={largest}", "--config.train.step_weights="]
                        result = subprocess.run(command, capture_output=True, text=True)
                        if result.returncode not in (0, 1):
                            raise SystemExit(f"{name}: {result.stderr.strip().splitlines()[-1]}")
                    with open(path) as f:
                        record = json.load(f)
                    key = (config, topology, f"{data} x {fsdp} x 1", record["batch_size"], record["length"])
                    rows.setdefault(key, {})[remat] = record["steps"][-1]
    gib = 2**30
    header = " | ".join(f"total, remat {remat}" for remat in FLAGS.remat)
    lines = [f"| config | topology | data x fsdp x tensor | global batch | context | N | arguments "
             f"| temporaries ({FLAGS.remat[0]}) | {header} | fits | step >= (roofline, {FLAGS.remat[0]}) |",
             "|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(FLAGS.remat) + "---|---:|"]
    for (config, topology, mesh, batch, length), steps in rows.items():
        first = steps[FLAGS.remat[0]]
        fits = all(not s["error"] and s["per_device_bytes"] <= s["hbm_bytes"] for s in steps.values())
        totals = " | ".join(f"{steps[remat]['per_device_bytes'] / gib:.2f}" for remat in FLAGS.remat)
        bound = max(first["compute_bound_s"], first["memory_bound_s"])
        lines.append(f"| {config} | {topology} | {mesh} | {batch} | {length} | {first['steps']} "
                     f"| {first['argument_bytes'] / gib:.2f} | {first['temp_bytes'] / gib:.2f} | {totals} "
                     f"| {'yes' if fits else '**no**'} | {bound * 1e3:.0f} ms |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(FLAGS.out, "table.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    run(main)

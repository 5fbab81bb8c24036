"""Pod-scale memory: activation constraints and FSDP on 8 fake CPU devices, the
ahead-of-time compile for a real TPU topology (libtpu's compile-only devices),
and the errors of the `train.aot` front door.

Each case runs in a subprocess: the device count and platform are fixed when
JAX starts.
"""

import json
import os
import subprocess
import sys

import pytest

from odeplm.training.topology import GENERATIONS, Topology, TopologyError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints, for each model of a JSON list, {"data x fsdp": temporaries in bytes} compiled on 8 CPU devices.
MEMORY_BY_MESH = """
import json, sys
from configs import tiny
from odeplm.core.config import ModelConfig
from odeplm.training.program import TrainProgram
from odeplm.runs.settings import TrainSettings
from odeplm.core.sharding import make_mesh
results = []
for model in json.loads(sys.argv[1]):
    config = tiny.get_config()
    config.model.update(model)
    config.train.update(batch_size=16, step_counts="", step_weights="")
    temps = {}
    for data, fsdp in ((8, 1), (2, 4), (1, 8)):
        config.mesh.update(data=data, fsdp=fsdp, tensor=1)
        program = TrainProgram(ModelConfig.from_dict(config.model), TrainSettings.from_config(config),
                               make_mesh(data, fsdp, 1))
        temps[f"{data}x{fsdp}"] = program.lower(None).compile().memory_analysis().temp_size_in_bytes
    results.append(temps)
print(json.dumps(results))
"""

# Parameter-heavy (unshared, wide, short sequences): gradients and optimizer updates dominate, and fsdp shards
# them. With every block rematerialised, the gathered weights live one evaluation at a time (without remat this
# config's temporaries on CPU read 25.6, 30.7, 28.3 MB: gathers cost more than they save).
PARAMETER_HEAVY = dict(vocab_size=512, width=256, heads=4, mlp_width=1024, max_length=8, depth="4x1", remat="full")
# Activation-heavy (one shared block, long sequences): the per-device batch is the same on every mesh, so without
# activation constraints XLA's gathers made temporaries grow with fsdp (8.4 -> 18.9 GiB on v5e-16); pinned, they
# do not.
ACTIVATION_HEAVY = dict(vocab_size=512, width=64, heads=4, mlp_width=256, max_length=256, depth="6")


def python(code_or_module: list[str], *, devices: int = 1, env: dict | None = None):
    environment = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
                       XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}")
    environment.update(env or {})
    return subprocess.run([sys.executable, *code_or_module], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def temporaries() -> dict[str, dict[str, int]]:
    """Both models' temporaries by mesh, from one process (one start of eight devices)."""
    models = {"parameter_heavy": PARAMETER_HEAVY, "activation_heavy": ACTIVATION_HEAVY}
    result = python(["-c", MEMORY_BY_MESH, json.dumps(list(models.values()))], devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(zip(models, json.loads(result.stdout.strip().splitlines()[-1])))


def test_fsdp_lowers_temporaries_at_equal_global_batch(temporaries):
    temps = temporaries["parameter_heavy"]
    assert temps["1x8"] < temps["2x4"] < temps["8x1"], temps


def test_activation_temporaries_do_not_grow_with_fsdp(temporaries):
    temps = temporaries["activation_heavy"]
    assert temps["1x8"] <= temps["8x1"] * 1.02, temps


def test_remat_policies_give_the_same_step():
    """Rematerialisation changes memory, never the update: one step's loss and parameters match."""
    code = """
import jax, numpy as np
from configs import tiny
from odeplm.core.config import ModelConfig
from odeplm.training.program import TrainProgram
from odeplm.runs.settings import TrainSettings
from odeplm.core.sharding import make_mesh
results = []
for remat in ("none", "full", "dots"):
    config = tiny.get_config()
    config.model.remat = remat
    program = TrainProgram(ModelConfig.from_dict(config.model), TrainSettings.from_config(config), make_mesh(2, 2, 2))
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 512, (8, 32)).astype(np.int32)
    batch = dict(tokens=tokens, padding_mask=np.ones_like(tokens, bool), targets=np.roll(tokens, -1, 1),
                 weights=np.ones(tokens.shape, np.float32))
    state, metrics = program.step_function(None)(program.init_state(), batch, jax.random.key(0))
    results.append((float(metrics["loss"]), [np.asarray(x) for x in jax.tree.leaves(state["params"])]))
for loss, params in results[1:]:
    assert loss == results[0][0], (loss, results[0][0])
    for a, b in zip(results[0][1], params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("same")
"""
    result = python(["-c", code], devices=8)
    assert result.returncode == 0 and result.stdout.strip() == "same", result.stderr[-3000:]


def test_topologies_parse_and_unknown_names_list_the_known():
    assert Topology.parse("v5e:4x4").chips == 16
    assert Topology.parse("v5e-256").shape == (16, 16)
    assert Topology.parse("v4:2x2x4").chips == 16
    with pytest.raises(TopologyError, match=r"unknown topology 'v9:4x4'.*v5e:NxN"):
        Topology.parse("v9:4x4")
    with pytest.raises(TopologyError, match=r"v5p takes 3 dimensions"):
        Topology.parse("v5p:4x4")
    assert set(GENERATIONS) >= {"v4", "v5e", "v5p"}


AOT = ["-m", "train.aot", "--config", "configs/tiny.py", "--topology", "v5e:2x2", "--config.mesh.data=2",
       "--config.mesh.fsdp=2", "--config.train.step_counts=2,4", "--config.model.remat=dots"]


def test_aot_compiles_the_train_step_for_a_tpu_topology(tmp_path):
    out = tmp_path / "aot.json"
    result = python([*AOT, f"--out={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["topology"] == "v5e:2x2" and record["chips"] == 4
    assert [s["steps"] for s in record["steps"]] == [2, 4]
    hbm = GENERATIONS["v5e"].hbm_bytes
    for step in record["steps"]:
        assert step["hbm_bytes"] == hbm and 0 < step["per_device_bytes"] < hbm
        assert step["per_device_bytes"] == (step["argument_bytes"] + step["output_bytes"] - step["alias_bytes"]
                                            + step["temp_bytes"])
    # Model FLOPs by hand for tiny (width 32, MLP 64, vocabulary 512, 8 x 32 tokens):
    # per evaluation 2 (4 w^2 + 2 w m) + 4 n w, the tied head 2 w V, times 3 for the backward.
    for step in record["steps"]:
        per_token = step["nfe"] * (2 * (4 * 32 * 32 + 2 * 32 * 64) + 4 * 32 * 32) + 2 * 32 * 512
        assert step["nfe"] == step["steps"] and step["model_flops"] == 3 * per_token * 8 * 32
    # The roofline bound: the FLOPs over the 4 chips' peak; at least the step's own arguments read and outputs
    # written over one chip's bandwidth, plus the block's weights read twice more at 4 evaluations than at 2.
    v5e = GENERATIONS["v5e"]
    two, four = record["steps"]
    for step in (two, four):
        assert step["compute_bound_s"] == pytest.approx(step["model_flops"] / (4 * v5e.peak_bf16_flops))
        assert step["memory_bound_s"] * v5e.hbm_bytes_per_s >= step["argument_bytes"] + step["output_bytes"]
    block_weights = (4 * 32 * 32 + 2 * 32 * 64) * 4  # float32
    added = (four["hbm_traffic_bytes"] - two["hbm_traffic_bytes"])
    assert added >= 3 * 2 * block_weights
    assert "v5e:2x2 (4 chips)" in result.stdout and "step >=" in result.stdout


def test_aot_names_the_shortfall_when_the_step_does_not_fit(tmp_path):
    # 64k tokens of width 2048 per chip (half of this needs 14.7 GiB): far beyond a v5e chip's 15.75 GiB.
    result = python([*AOT, "--config.model.width=2048", "--config.model.mlp_width=8192", "--config.model.heads=16",
                     "--config.model.max_length=2048", "--config.train.batch_size=128", "--config.model.remat=none"])
    assert result.returncode == 1, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "configs/tiny.py does not fit v5e:2x2 with mesh data=2 x fsdp=2 x tensor=1" in line
    assert "GiB over the 15.75 GiB HBM" in line


def test_aot_refuses_bad_input_in_one_line():
    mismatch = python([*AOT[:-4], "--config.mesh.data=3", "--config.mesh.fsdp=2"])
    assert mismatch.returncode == 2
    assert "mesh data=3 x fsdp=2 x tensor=1 = 6 does not match the 4 available devices" in mismatch.stderr
    unknown = python([*AOT[:4], "--topology", "v7x:8x8"])
    assert unknown.returncode == 2 and "unknown topology 'v7x:8x8'" in unknown.stderr


def test_aot_without_libtpu_says_how_to_install_it(tmp_path):
    # A directory shadowing `libtpu` with a package whose import fails stands in for a machine without it.
    shadow = tmp_path / "libtpu"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('no libtpu here')\n")
    result = python(AOT, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert result.returncode == 2
    assert 'pip install "odeplm[tpu]"' in result.stderr

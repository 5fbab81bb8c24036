"""Pre-training end to end: learning, exact resume after SIGKILL, SIGTERM,
sharding over 8 fake devices, two processes, and the failure paths.

Runs that need their own device count or process are real subprocesses of
`python -m train.pretrain`; the rest drive `Trainer` in this process.
"""

import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx
from jax.profiler import ProfileData

import odeplm
from configs import tiny
from odeplm.core.config import ConfigError
from odeplm.core.errors import TrainingError
from odeplm.core.flops import training_flops_per_token
from odeplm.core.sharding import MeshError
from odeplm.data.pipeline import split_batches
from odeplm.runs.checkpoint import CheckpointError
from odeplm.runs.lock import WorkdirBusy
from odeplm.runs.settings import TrainSettings
from odeplm.training.trainer import Trainer
from tests.conftest import run_config, trained_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def command(workdir, corpus_dir, *overrides):
    """The training command; it only trains (no validation table) unless the overrides name eval.solves."""
    return [sys.executable, "-m", "train.pretrain", "--config", "configs/tiny.py", "--workdir", str(workdir),
            f"--config.data.data_dir={corpus_dir}", "--config.train.log_every=1", "--config.eval.solves=", *overrides]


def environment(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def run(workdir, corpus_dir, *overrides, devices=1):
    result = subprocess.run(command(workdir, corpus_dir, *overrides), cwd=ROOT, env=environment(devices),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def logged_losses(workdir) -> dict[int, float]:
    """Loss per step, from metrics.jsonl, where every step has one row (a resumed run replaces what it replays)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)), "a step has two rows"
    return {row["step"]: row["loss"] for row in rows}


def final_params(workdir, corpus_dir) -> list[np.ndarray]:
    """Parameters of the newest checkpoint, restored onto this process's single device."""
    with Trainer(run_config(corpus_dir), str(workdir)) as trainer:
        return [np.asarray(x) for x in jax.tree.leaves(trainer.state["params"])]


def wait_for(path, process, timeout=300):
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        assert process.poll() is None, process.stderr.read()[-4000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def assert_same_losses(a: dict, b: dict, steps, rtol):
    for step in steps:
        assert a[step] == pytest.approx(b[step], rel=rtol), (step, a[step], b[step])




def test_validation_during_training_is_the_checkpoint_scored_independently(trained, corpus_dir):
    with open(os.path.join(trained, "metrics.jsonl")) as f:
        rows = {row["step"]: row for row in map(json.loads, f)}
    assert [s for s, row in rows.items() if any(k.startswith("validation/") for k in row)] == [20, 40]
    loaded, config = odeplm.load(trained, step=20), tiny.get_config()
    batches = split_batches("shakespeare", "validation", corpus_dir, loaded.tokenizer, length=config.model.max_length,
                            batch_size=config.train.batch_size, objective="causal", shuffle=False)
    for solve in ("euler:4", "euler:2"):
        total = weight = 0.0
        for step in range(config.train.eval_batches):
            batch = batches.batch(step)
            out = odeplm.forward(loaded.model, batch["tokens"], batch["padding_mask"], solve=solve)
            logits = np.asarray(out.logits)
            shifted = logits - logits.max(-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            losses = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
            total += (losses * batch["weights"]).sum()
            weight += batch["weights"].sum()
        assert rows[20][f"validation/loss@{solve}"] == pytest.approx(total / weight, rel=1e-5)


def test_tiny_training_learns(trained):
    losses = logged_losses(trained)
    assert sorted(losses) == list(range(1, 41))
    first, last = np.mean([losses[s] for s in range(1, 4)]), np.mean([losses[s] for s in range(36, 41)])
    assert last < first - 0.8, (first, last)
    with open(os.path.join(trained, "metrics.jsonl")) as f:
        row = json.loads(f.readline())
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu", "steps_drawn"} <= set(row)
    # TensorBoard's own reader sees the losses metrics.jsonl holds.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(trained, "tensorboard")).Reload()
    board = {event.step: event.value for event in events.Scalars("loss")}
    assert sorted(board) == sorted(losses)
    np.testing.assert_allclose([board[s] for s in sorted(losses)], [losses[s] for s in sorted(losses)], rtol=1e-6)


def test_sigkill_then_resume_matches_an_uninterrupted_run(corpus_dir, tmp_path):
    overrides = ("--config.train.steps=60", "--config.checkpoint.every=10", "--config.checkpoint.keep=10",
                 "--config.train.step_counts=1,2,4",  # random step counts must replay too,
                 "--config.data.shuffle_blocks=2")  # and windows drawn from shuffled blocks
    run(tmp_path / "full", corpus_dir, *overrides)
    assert not (tmp_path / "full" / "validation.json").exists()  # no eval.solves: a run that only trains
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed, corpus_dir, *overrides), cwd=ROOT, env=environment(1),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(killed / "checkpoints" / "10", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "60").exists()  # it really was interrupted
    with open(killed / "metrics.jsonl", "a") as f:  # and its last row cut off mid-write, as a crash leaves it
        f.write('{"step": 61, "loss": 4.')
    run(killed, corpus_dir, *overrides)
    full, resumed = logged_losses(tmp_path / "full"), logged_losses(killed)
    assert sorted(resumed) == sorted(full) == list(range(1, 61))
    assert_same_losses(resumed, full, range(1, 61), rtol=1e-6)
    for a, b in zip(final_params(killed, corpus_dir), final_params(tmp_path / "full", corpus_dir)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_and_exits_cleanly(signum, corpus_dir, tmp_path):
    process = subprocess.Popen(command(tmp_path, corpus_dir, "--config.train.steps=100000",
                                       "--config.checkpoint.every=10"),
                               cwd=ROOT, env=environment(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "checkpoints" / "10", process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-4000:]
    saved = max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert 10 <= saved < 100000 and max(logged_losses(tmp_path)) == saved
    assert "stop requested (SIGTERM or Ctrl-C): saved step" in stderr and "validation" not in stdout


def test_eight_devices_match_one_and_checkpoints_move_between_meshes(trained, corpus_dir, tmp_path):
    """The session's one-device run (validating as it goes, which draws nothing from training) against the same
    40 steps on a 2 x 2 x 2 mesh, and each run's step-20 checkpoint resumed on the other mesh."""
    mesh = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
    run(tmp_path / "eight", corpus_dir, *mesh, devices=8)
    one, eight = logged_losses(trained), logged_losses(tmp_path / "eight")
    assert_same_losses(eight, one, range(1, 41), rtol=1e-5)

    for source, target, devices, flags in (
            (tmp_path / "eight", "eight_to_one", 1, ()), (trained, "one_to_eight", 8, mesh)):
        shutil.copytree(source, tmp_path / target)
        shutil.rmtree(tmp_path / target / "checkpoints" / "40")
        run(tmp_path / target, corpus_dir, *flags, devices=devices)
        assert_same_losses(logged_losses(tmp_path / target), one, range(21, 41), rtol=1e-5)


def test_two_processes_write_the_same_checkpoint_as_one(corpus_dir, tmp_path):
    run(tmp_path / "single", corpus_dir, devices=2)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    processes = [
        subprocess.Popen(command(tmp_path / "multi", corpus_dir, f"--coordinator_address=localhost:{port}",
                                 "--num_processes=2", f"--process_id={i}"),
                         cwd=ROOT, env=environment(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-4000:]
    assert_same_losses(logged_losses(tmp_path / "multi"), logged_losses(tmp_path / "single"), range(1, 41), 1e-6)
    for a, b in zip(final_params(tmp_path / "multi", corpus_dir), final_params(tmp_path / "single", corpus_dir)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(trained, corpus_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    with Trainer(run_config(corpus_dir, train=dict(steps=60, log_every=1)), workdir) as trainer:
        assert trainer.start_step == 40
        trainer.state = {**trainer.state, "params": jax.tree.map(lambda x: x * np.nan, trainer.state["params"])}
        with pytest.raises(TrainingError, match=r"non-finite loss nan at step 41; .* last good checkpoint: step 40"):
            trainer.run()
        assert trainer.checkpointer.steps() == [20, 40]
    assert np.isfinite(np.concatenate([p.ravel() for p in final_params(workdir, corpus_dir)])).all()


def _largest_params_file(workdir) -> str:
    files = [os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(workdir, "checkpoints", "40",
                                                                                       "params")) for name in names]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["overwritten", "flipped"])
def test_corrupt_newest_checkpoint_falls_back_and_is_kept_aside(trained, corpus_dir, tmp_path, caplog, damage):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    target = _largest_params_file(workdir)
    if damage == "overwritten":
        with open(target, "wb") as f:
            f.write(b"not a checkpoint")
    else:  # 64 bytes inside the data, inverted: orbax alone would load them as wrong numbers
        data = bytearray(open(target, "rb").read())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        open(target, "wb").write(bytes(data))
        with pytest.raises(CheckpointError, match=r"checkpoint 40 under .* fails its checksums: params/"):
            odeplm.load(workdir, step=40)
    with caplog.at_level(logging.WARNING), Trainer(run_config(corpus_dir), workdir) as trainer:
        assert trainer.start_step == 20
    assert "checkpoint 40 cannot be read" in caplog.text
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "40.unreadable"))  # moved aside, not deleted


def test_a_second_run_on_a_busy_workdir_is_refused_and_reads_nothing(trained, corpus_dir, tmp_path, caplog):
    """The lock comes first: a second run stops before it reads the workdir, so it never
    judges a step the live run is still sealing (here the newest, unsealed and damaged)."""
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "started": time.time(), "heartbeat": time.time()}
    (workdir / "lock.json").write_text(json.dumps(holder))  # a live run on this host
    sealing = workdir / "checkpoints" / "40"
    (sealing / "checksums.json").unlink()
    params = max((p for p in (sealing / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    params.write_bytes(bytes(64) + params.read_bytes()[64:])
    before = {str(p): p.read_bytes() if p.is_file() else None for p in workdir.rglob("*")}
    config = run_config(corpus_dir, train=dict(steps=60))
    config.seed = 1  # another run: a different seed
    with caplog.at_level(logging.WARNING), pytest.raises(WorkdirBusy, match=f"in use by pid {os.getppid()}"):
        Trainer(config, str(workdir))
    assert {str(p): p.read_bytes() if p.is_file() else None for p in workdir.rglob("*")} == before
    assert "resumed" not in caplog.text and "cannot be read" not in caplog.text


def test_a_config_that_does_not_fit_the_checkpoint_is_refused(trained, corpus_dir):
    fields = r"\['mlp_width', 'project_embeddings', 'width'\]"
    with pytest.raises(CheckpointError, match=rf"different model: fields {fields} differ"):
        Trainer(run_config(corpus_dir, model=dict(width=64, mlp_width=128)), trained)
    assert sorted(int(d) for d in os.listdir(os.path.join(trained, "checkpoints")) if d.isdigit()) == [20, 40]


@pytest.mark.parametrize(
    "sections, error, message",
    [
        (dict(mesh=dict(data=2)), MeshError, "does not match the 1 available devices"),
        (dict(mesh=dict(data=-1, fsdp=3)), MeshError, "does not divide 1 devices"),
        (dict(train=dict(batch_size=0)), ConfigError, "train.batch_size"),
        (dict(train=dict(grad_accum=3)), ConfigError, "train.grad_accum"),
        (dict(train=dict(learning_rate=-1.0)), ConfigError, "train.learning_rate"),
        (dict(train=dict(step_counts="2,x")), ConfigError, "train.step_counts"),
        (dict(train=dict(step_counts="0")), ConfigError, "train.step_counts"),
        (dict(train=dict(step_counts="2,3", step_weights="1")), ConfigError, "train.step_weights"),
        (dict(train=dict(solver="rk45")), ConfigError, "train.solver"),
        (dict(model=dict(depth="0")), ConfigError, "depth"),
        (dict(model=dict(vocab_size=100)), ConfigError, r"model.vocab_size: the corpus needs at least \d+ bpe pieces"),
        (dict(data=dict(record_index="mmap")), ConfigError, "data.record_index"),
        (dict(data=dict(read_threads=0)), ConfigError, "data.read_threads"),
        (dict(data=dict(shuffle_blocks=-1)), ConfigError, "data.shuffle_blocks"),
        (dict(data=dict(shards=0)), ConfigError, "data.shards"),
        (dict(data=dict(tokenizer="word")), ConfigError, "data.tokenizer"),
        (dict(train=dict(distill_steps="2,0")), ConfigError, "train.distill_steps"),
        (dict(train=dict(distill_steps="1,2", distill_weights="1")), ConfigError, "train.distill_weights"),
        (dict(train=dict(distill_steps="1", distill_label_weight=1.5)), ConfigError, "train.distill_label_weight"),
        (dict(train=dict(distill_steps="1", distill_solver="rk5")), ConfigError, "train.distill_solver"),
        (dict(train=dict(distill_steps="1", distill_mode="layers")), ConfigError, "train.distill_mode"),
        (dict(model=dict(depth="4"), train=dict(distill_steps="3", distill_state_weight=1.0)), ConfigError,
         "train.distill_state_weight: step 1 of the coarse solve euler:3"),
        (dict(train=dict(profile_steps=-1)), ConfigError, "train.profile_steps"),
        (dict(train=dict(profile_start=-1, profile_steps=2)), ConfigError, "train.profile_start"),
        (dict(model=dict(loss_chunk=0)), ConfigError, "loss_chunk"),
        (dict(model=dict(initializer_range=float("inf"))), ConfigError, "initializer_range: must be positive and "
                                                                        "finite"),
        (dict(train=dict(distill_steps="1", distill_weights="nan")), ConfigError, "train.distill_weights"),
        (dict(train=dict(distill_steps="1", distill_weights="inf")), ConfigError, "train.distill_weights"),
        (dict(train=dict(step_counts="1,2", step_weights="1,nan")), ConfigError, "train.step_weights"),
        (dict(train=dict(distill_draw="euler:1,euler:2", distill_draw_weights="1,inf")), ConfigError,
         "train.distill_draw_weights"),
    ],
)
def test_bad_training_configs_are_named(corpus_dir, tmp_path, sections, error, message):
    with pytest.raises(error, match=message):
        Trainer(run_config(corpus_dir, **sections), str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints")) or not os.listdir(tmp_path / "checkpoints")


def test_a_damaged_metrics_row_before_the_last_is_named(tmp_path):
    from odeplm.training.metrics import MetricWriter

    rows = ['{"step": 1, "loss": 3.0}', '{"step": 2, "lo', '{"step": 3, "loss": 2.0}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(TrainingError, match=r"metrics.jsonl: row 2 is not a metrics row"):
        MetricWriter(str(tmp_path), resumed_at=3)
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(rows) + "\n"  # left as it was


def test_a_workdir_that_is_a_file_is_refused_and_left_alone(corpus_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="workdir: .*notes.txt is a file, not a directory"):
        Trainer(run_config(corpus_dir), str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="workdir: cannot create .*notes.txt/run"):
        Trainer(run_config(corpus_dir), str(tmp_path / "notes.txt" / "run"))


def test_the_training_command_names_bad_input_in_one_line(corpus_dir, tmp_path):
    # (bad fields reach the same handler: test_bad_training_configs_are_named shows they raise ConfigError)
    for dataset, message in (("lm1b", "DataError: dataset 'lm1b' is not prepared under"),
                             ("no_such_dataset", "DataError: unknown dataset 'no_such_dataset'")):
        workdir = tmp_path / dataset
        result = subprocess.run(command(workdir, corpus_dir, f"--config.data.dataset={dataset}"), cwd=ROOT,
                                env=environment(1), capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert message in result.stderr.strip().splitlines()[-1]
        assert not workdir.exists()  # a run that fails at start-up leaves nothing it made
    # training that cannot go on (a non-finite loss) is one line too, and exit status 1
    result = subprocess.run(command(tmp_path / "diverges", corpus_dir, "--config.train.learning_rate=1e30",
                                    "--config.train.clip_norm=1e30"),
                            cwd=ROOT, env=environment(1), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "TrainingError: non-finite loss" in result.stderr.strip().splitlines()[-1]


def test_a_cpu_run_starts_quietly(tmp_path):
    """No error-looking line from a library: libtpu (installed for the AOT proof) may load here, as on a
    machine where no other process holds it, yet does not probe for a TPU; TensorFlow, TFDS and orbax
    notices stay out. What remains is odeplm's own line about building the corpus, and progress bars."""
    env = {k: v for k, v in environment(1).items() if k != "JAX_PLATFORMS"}  # as a user starts it: nothing asked for
    result = subprocess.run(command(tmp_path / "run", tmp_path / "tfds", "--config.train.steps=1",
                                    "--config.eval.solves=euler", "--config.data.tokenizer_characters=300000"),
                            cwd=ROOT, capture_output=True, text=True, env=dict(env, ALLOW_MULTIPLE_LIBTPU_LOAD="1"),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    alarming = re.compile(r"^[EWF]\d{4}|WARNING|[Ee]rror|Failed|oneDNN|dataset_info|Traceback")
    lines = [line for chunk in result.stderr.splitlines() for line in chunk.split("\r")]
    assert not [line for line in lines if alarming.search(line)], result.stderr[-3000:]
    assert f"building 'shakespeare' into {tmp_path / 'tfds'} (once)" in lines


@pytest.mark.parametrize("arguments, message", [
    (("--config", "configs/tiny.py", "--config.train.stepz=10"),
     """train.pretrain: --config: 'stepz'; Did you mean "steps" instead of "stepz"?"""),
    (("--config", "configs/missing.py"), "train.pretrain: --config: no such file: configs/missing.py"),
    (("--config", "configs/study.py:nosuch"), "Error whilst parsing config file: ValueError: unknown study model"),
    (("--config", "configs/study.py:depth2", "--config.train.steps=0"),  # a file with an argument loads
     "ConfigError: train.steps: must be an integer >= 1, got 0"),
    (("--config", "{tmp}/broken.py"), "train.pretrain: --config: {tmp}/broken.py:3: invalid syntax"),
])
def test_config_flag_mistakes_are_one_line_and_exit_2(tmp_path, arguments, message):
    (tmp_path / "broken.py").write_text("def get_config():\n    return 1\nx = = 2\n")
    arguments = [a.format(tmp=tmp_path) for a in arguments]
    result = subprocess.run([sys.executable, "-m", "train.pretrain", "--workdir", str(tmp_path / "run"), *arguments],
                            cwd=ROOT, env=environment(1), capture_output=True, text=True, timeout=300)
    message = message.format(tmp=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert message in result.stderr


def test_gradient_accumulation_matches_one_large_batch(corpus_dir, tmp_path):
    losses = []
    for accum in (1, 4):
        with Trainer(run_config(corpus_dir, train=dict(steps=3, grad_accum=accum, log_every=1)),
                     str(tmp_path / str(accum))) as trainer:
            trainer.run()
        losses.append(logged_losses(tmp_path / str(accum)))
    assert_same_losses(losses[1], losses[0], range(1, 4), rtol=1e-5)


def test_load_restores_bit_identical_parameters_and_the_tokenizer(trained, corpus_dir):
    import odeplm

    with Trainer(run_config(corpus_dir), trained) as trainer:
        pass
    for path in (trained, os.path.join(trained, "checkpoints"), os.path.join(trained, "checkpoints", "40")):
        loaded = odeplm.load(path)
        assert loaded.step == 40 and loaded.config["model"] == trainer.model_config.to_dict()
        for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(loaded.model))),
                        jax.tree.leaves(trainer.state["params"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert loaded.tokenizer.fingerprint == trainer.tokenizer.fingerprint
    assert odeplm.load(trained, step=20).step == 20
    # the run's settings come back typed, and a run saved before a field existed reads it as today's default
    settings = TrainSettings.from_config(trained_config(corpus_dir))
    assert loaded.run == settings
    older = {**loaded.config["run"], "train": {k: v for k, v in loaded.config["run"]["train"].items()
                                               if not k.startswith(("distill_", "eval_every", "eval_solves"))}}
    assert loaded._replace(config={**loaded.config, "run": older}).run == dataclasses.replace(
        settings, eval_every=0, eval_solves=())


def test_missing_or_mismatched_checkpoints_are_named_on_load(trained, tmp_path):
    import odeplm

    with pytest.raises(odeplm.CheckpointError, match="no checkpoint directory"):
        odeplm.load(str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()  # loading creates nothing
    (tmp_path / "empty").mkdir()
    with pytest.raises(odeplm.CheckpointError, match="no checkpoint under"):
        odeplm.load(str(tmp_path / "empty"))
    with pytest.raises(odeplm.CheckpointError, match=r"no checkpoint 30 under .*steps: \[20, 40\]"):
        odeplm.load(trained, step=30)
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    metadata = copy / "checkpoints" / "40" / "config" / "metadata"
    config = json.loads(metadata.read_text())
    metadata.write_text(json.dumps({**config, "edited": True}))  # any change to a sealed step is caught
    with pytest.raises(odeplm.CheckpointError, match="checkpoint 40 under .* fails its checksums: config/metadata"):
        odeplm.load(str(copy), step=40)
    for step in (20, 40):  # unsealed steps, as a run killed during its last save leaves one
        (copy / "checkpoints" / str(step) / "checksums.json").unlink()
    config["model"].update(width=64, mlp_width=128, embedding_size=64, project_embeddings=False)  # valid, wrong shapes
    metadata.write_text(json.dumps(config))
    mismatch = r"checkpoint 40 under .*: parameter .* has shape \(32,\); the model expects \(64,\)"
    with pytest.raises(odeplm.CheckpointError, match=mismatch):
        odeplm.load(str(copy), step=40)
    assert (copy / "checkpoints" / "40").is_dir()  # an explicit step is never moved aside
    metadata.write_text("{not json")
    with pytest.raises(odeplm.CheckpointError, match="checkpoint 40 under .* has no readable config: JSONDecodeError"):
        odeplm.load(str(copy), step=40)
    sealed = tmp_path / "sealed"  # load never reads the optimizer, so damage there does not stop it
    shutil.copytree(trained, sealed)
    optimizer = max((p for p in (sealed / "checkpoints" / "40" / "optimizer").rglob("*") if p.is_file()),
                    key=lambda p: p.stat().st_size)
    optimizer.write_bytes(bytes(64) + optimizer.read_bytes()[64:])
    assert odeplm.load(str(sealed)).step == 40
    shutil.rmtree(copy / "checkpoints" / "20" / "config")  # a step folder without its config item
    with pytest.raises(odeplm.CheckpointError, match="checkpoint 20 under .* has no readable config"):
        odeplm.load(str(copy), step=20)


def test_masked_post_ln_pretraining_learns_and_reports(corpus_dir, tmp_path, trained):
    from odeplm.evaluation.report import show_outputs, validation_table

    config = run_config(corpus_dir, model=dict(objective="masked", norm="post", layer_norm_eps=1e-12),
                         train=dict(log_every=5, step_counts="2,4"))
    with Trainer(config, str(tmp_path)) as trainer:
        trainer.run()
    losses = logged_losses(tmp_path)
    # MFU is per logging window, from the FLOPs its steps ran at their own NFE: per window it is
    # tokens/s times the window's mean FLOPs per token over the peak, the same peak in every window
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    peaks, config = [], trainer.model_config
    for window in (rows[i:i + 5] for i in range(0, 40, 5)):
        assert len({(r["mfu"], r["tokens_per_second"]) for r in window}) == 1
        flops = np.mean([training_flops_per_token(config, int(r["nfe"]), config.max_length) for r in window])
        peaks.append(window[0]["tokens_per_second"] * flops / window[0]["mfu"])
    np.testing.assert_allclose(peaks, peaks[0], rtol=1e-9)
    assert {r["nfe"] for r in rows} == {2, 4}
    assert np.mean([losses[s] for s in range(36, 41)]) < np.mean([losses[s] for s in range(1, 4)]) - 0.8
    model = nnx.merge(trainer.graphdef, trainer.state["params"])
    batches = trainer.validation_set
    rows, table = validation_table(model, batches, "euler,euler:2,rk4:1")
    assert [r["label"] for r in rows] == ["euler:4", "euler:2", "rk4:1"] and [r["nfe"] for r in rows] == [4, 2, 4]
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rows) and "masked LM" in table
    assert rows[0]["speedup"] == 1.0 and "interleaved" in table  # speed-ups are medians of per-round ratios
    assert "masked predictions at euler:4 (NFE 4) " in show_outputs(model, trainer.tokenizer, batches[0],
                                                                    "euler,euler:1")

    with Trainer(run_config(corpus_dir), trained) as causal:
        pass
    shown = show_outputs(nnx.merge(causal.graphdef, causal.state["params"]), causal.tokenizer,
                         causal.validation_batches.batch(0), "euler,euler:1", prompt="ROMEO.\n")
    assert "--- sample at euler:4 (NFE 4)\nROMEO." in shown and "--- sample at euler:1 (NFE 1)\nROMEO." in shown


def test_a_profile_window_traces_its_steps_into_the_runs_tensorboard_directory(corpus_dir, tmp_path):
    workdir = tmp_path / "run"
    with Trainer(run_config(corpus_dir, train=dict(steps=4, profile_start=1, profile_steps=2)), str(workdir)) as t:
        t.run()
    (trace,) = glob.glob(str(workdir / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    steps = [dict(event.stats).get("step_num") for plane in ProfileData.from_file(trace).planes
             for line in plane.lines for event in line.events if event.name == "train"]
    assert sorted(steps) == [1, 2]  # the window's steps, each marked


def test_coarse_terms_join_at_distill_start(corpus_dir, tmp_path):
    config = run_config(corpus_dir, train=dict(steps=4, log_every=1, distill_steps="1", distill_start="2"))
    with Trainer(config, str(tmp_path / "run")) as trainer:
        trainer.run()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [("loss_at_1_steps" in row) for row in rows] == [False, False, True, True]
    assert all(row["objective"] > row["loss"] for row in rows[2:])  # the coarse term adds to the objective


def test_each_coarse_term_joins_at_its_own_start(corpus_dir, tmp_path):
    """One start per term: the one-step term from step 1, the two-step term from step 3. Each row's
    objective is the full-depth loss plus the label losses of the terms that had joined (labels alone)."""
    config = run_config(corpus_dir, train=dict(steps=4, log_every=1, distill_steps="1,2", distill_start="1,3",
                                                distill_label_weight=1.0))
    with Trainer(config, str(tmp_path / "run")) as trainer:
        trainer.run()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    joined = [tuple(n for n in (1, 2) if f"loss_at_{n}_steps" in row) for row in rows]
    assert joined == [(), (1,), (1,), (1, 2)]
    for row, terms in zip(rows[1:], joined[1:]):
        assert row["objective"] == pytest.approx(row["loss"] + sum(row[f"loss_at_{n}_steps"] for n in terms),
                                                 rel=1e-5)


def test_a_run_saved_with_one_integer_start_loads_as_that_start_for_every_term(corpus_dir):
    """Checkpoints from before per-term starts keep `train.distill_start` as an integer."""
    saved = run_config(corpus_dir, train=dict(distill_steps="1,2")).to_dict()
    saved["train"]["distill_start"] = 7
    settings = TrainSettings.from_saved(saved)
    assert settings.distillation.starts() == (7, 7)

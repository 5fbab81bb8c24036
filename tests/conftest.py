"""Shared fixtures: tiny models that compile in seconds on CPU."""

import os
import pathlib
import shutil

# The suite checks what programs compute, not how fast: most of its time is XLA compiling tiny programs, and
# LLVM's unoptimised code generation compiles them about a third faster. Set before JAX starts (unless XLA_FLAGS
# names a level); the subprocesses the tests start inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import filelock
import jax
import numpy as np
import pytest
from flax import nnx

import odeplm

jax.config.update("jax_numpy_rank_promotion", "raise")


def tiny_config(**overrides) -> odeplm.ModelConfig:
    values = dict(vocab_size=64, width=32, heads=4, mlp_width=64, max_length=16, depth="4")
    values.update(overrides)
    return odeplm.ModelConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> odeplm.LanguageModel:
    return odeplm.LanguageModel(tiny_config(**overrides), rngs=nnx.Rngs(seed))


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """`build(path)` run by the first worker to ask, under a file lock; the others wait and reuse it. It lies in
    the directory the run's xdist workers share (each worker's own temporaries lie below it)."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    with filelock.FileLock(f"{path}.lock"):
        if not (path / ".built").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(str(path))
            (path / ".built").touch()
    return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One compilation cache for each worker, its own and its subprocesses' (training runs, pod compiles): a
    program two tests build alike (the same tiny model at the same solve) compiles once. Not one for all workers:
    concurrent writers need JAX's size limit, whose eviction reads every entry on every write."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    """The bundled corpus (TFDS array_record), built once for the run."""
    from odeplm.data.sources import text_source

    def build(path):
        for split in ("train", "validation"):
            text_source("shakespeare", split, path)

    # each worker writes token files and tokenizers into its own copy
    return str(shutil.copytree(built_once(tmp_path_factory, "tfds", build), tmp_path_factory.mktemp("tfds"),
                               dirs_exist_ok=True))


@pytest.fixture(scope="session")
def tokenizer(corpus_dir):
    from odeplm.data.sources import text_source
    from odeplm.data.tokenizer import Tokenizer

    texts = text_source("shakespeare", "train", corpus_dir)
    return Tokenizer.train((texts[i] for i in range(len(texts))), 512)


def run_config(corpus_dir, **sections):
    """configs/tiny.py on the session's corpus, with `sections` updated: the suite's training runs."""
    from configs import tiny

    config = tiny.get_config()
    config.data.data_dir = corpus_dir
    for section, values in sections.items():
        getattr(config, section).update(values)
    return config


def trained_config(corpus_dir):
    return run_config(corpus_dir, train=dict(log_every=1, eval_every=20, eval_solves="euler:2"))


@pytest.fixture(scope="session")
def trained(corpus_dir, tmp_path_factory):
    """One in-process tiny run for the session: 40 steps, checkpoints at 20 and 40 (read, never written)."""
    from odeplm.training.trainer import Trainer

    workdir = str(tmp_path_factory.mktemp("trained"))
    with Trainer(trained_config(corpus_dir), workdir) as t:
        t.run()
    return workdir

"""Orbax checkpoints: parameters, optimizer (state and step), config and
tokenizer as separate items, saved asynchronously every k steps with the last n
kept. Loading for inference reads parameters, config and tokenizer only, so a
converted model (no optimizer, perhaps no tokenizer) loads the same way.

Restoring targets an abstract state carrying the current mesh's shardings, so a
run saved on 8 devices resumes on 1 and the reverse. Every finished step is
sealed with the SHA-256 of each of its items' files (`checksums.json`, written
once the asynchronous save has finished: at the next save or at `wait`), and
verified before it is read, so flipped bytes are caught rather than loaded as
NaNs. A newest checkpoint that fails its checksums or fails to restore is
skipped with a warning and moved aside (never deleted);
a checkpoint whose model config differs from the requested one is refused with
the differing fields named. Nothing is unpickled: arrays and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import logging

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from odeplm.core.config import ModelConfig
from odeplm.core.errors import OdeplmError
from odeplm.runs.paths import run_path

log = logging.getLogger("odeplm")
ITEMS = ("params", "optimizer", "config", "tokenizer")
CHECKSUMS = "checksums.json"


def _normalised(model: dict) -> dict:
    """A saved model config's architecture, with defaults filled in for fields added after it was written."""
    try:
        return ModelConfig.from_dict(model).architecture()
    except ValueError:
        return model


class CheckpointError(OdeplmError):
    """A checkpoint that is missing, unreadable, or does not fit the requested model."""


class Checkpointer:
    """Saves when asked (the training loop owns the cadence), keeps the newest `keep` steps."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True, create: bool = True):
        self.directory = run_path(directory)
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {self.directory}")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=create,
            ),
            item_names=ITEMS,
        )

    def save(self, step: int, *, params, config: dict, optimizer=None, tokenizer: dict | None = None) -> bool:
        """`tokenizer` is the tokenizer's JSON form (`Tokenizer.to_json()`), stored as written."""
        self.wait()  # orbax finishes the previous save before it starts one anyway; seal it first
        items = {"params": ocp.args.StandardSave(params), "config": ocp.args.JsonSave(config)}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardSave(optimizer)
        if tokenizer is not None:
            items["tokenizer"] = ocp.args.JsonSave(tokenizer)
        return self.manager.save(step, args=ocp.args.Composite(**items))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def read_config(self, step: int) -> dict:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception as error:  # orbax raises many types for damaged files: KeyError, JSONDecodeError, ...
            raise CheckpointError(f"checkpoint {step} under {self.directory} has no readable config: "
                                  f"{type(error).__name__}: {error}") from None

    def restore(self, abstract_params, *, abstract_optimizer=None, model_config: dict | None = None,
                step: int | None = None) -> dict:
        """Items of the newest readable checkpoint (or `step`): params, config, tokenizer
        (its JSON form, None if not saved), step, and optimizer when `abstract_optimizer` is given.

        `model_config`, when given, must equal the saved model's `ModelConfig.architecture()`.
        """
        candidates = [step] if step is not None else self.steps()[::-1]
        if not candidates:
            raise CheckpointError(f"no checkpoint under {self.directory}")
        for candidate in candidates:
            try:
                self.verify(candidate, items=("params", "config", "tokenizer")
                            + (("optimizer",) if abstract_optimizer is not None else ()))
                config = self.read_config(candidate)
            except Exception as error:  # orbax raises many types for damaged files
                self._set_aside(candidate, error, explicit=step is not None)
                continue
            saved = _normalised(config.get("model", {}))
            if model_config is not None and saved != model_config:
                fields = sorted(k for k in set(saved) | set(model_config) if saved.get(k) != model_config.get(k))
                raise CheckpointError(
                    f"checkpoint {candidate} under {self.directory} holds a different model: fields {fields} differ "
                    f"(saved {[saved.get(k) for k in fields]}, requested {[model_config.get(k) for k in fields]})"
                )
            try:
                self._check_shapes(candidate, abstract_params)
            except CheckpointError as error:
                self._set_aside(candidate, error, explicit=step is not None)
                continue
            saved_items = {item.name for item in (self.directory / str(candidate)).iterdir()}
            items = {"params": ocp.args.StandardRestore(abstract_params)}
            if abstract_optimizer is not None:
                items["optimizer"] = ocp.args.StandardRestore(abstract_optimizer)
            if "tokenizer" in saved_items:
                items["tokenizer"] = ocp.args.JsonRestore()
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
            except Exception as error:
                self._set_aside(candidate, error, explicit=step is not None)
                continue
            return {"params": restored["params"], "optimizer": restored.get("optimizer") if abstract_optimizer
                    is not None else None, "config": config, "tokenizer": restored.get("tokenizer"), "step": candidate}
        raise CheckpointError(f"no readable checkpoint under {self.directory}")

    def _set_aside(self, step: int, error: Exception, *, explicit: bool):
        if explicit:
            if isinstance(error, CheckpointError):
                raise error
            raise CheckpointError(f"checkpoint {step} under {self.directory} cannot be read: {error}") from error
        path = self.directory / str(step)
        aside = self.directory / f"{step}.unreadable"
        log.warning("checkpoint %d cannot be read (%s: %s); moved to %s, trying the previous one",
                        step, type(error).__name__, error, aside)
        if jax.process_index() == 0 and path.exists() and not aside.exists():
            path.rename(aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"odeplm_set_aside_{step}")
        self.manager.reload()

    def _check_shapes(self, step: int, abstract_params):
        """Compares the saved parameter shapes with the model's before restoring: orbax
        would find a mismatch inside its event loop and leave tracebacks behind."""
        saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "params")
        shapes = {_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(saved)}
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
            name = _name(path)
            if shapes.get(name) != tuple(leaf.shape):
                found = "is missing" if name not in shapes else f"has shape {shapes[name]}"
                raise CheckpointError(f"checkpoint {step} under {self.directory}: parameter {name} {found}; the model "
                                      f"expects {tuple(leaf.shape)}")

    def verify(self, step: int, items=ITEMS):
        """Raises CheckpointError naming the first file of `items` whose bytes differ from
        the step's seal (loading for inference reads no optimizer, so damage there does
        not stop it); a step without a seal (its run was killed before sealing it, or it
        was written by an older odeplm) is read unverified."""
        path = self.directory / str(step) / CHECKSUMS
        if not path.exists():
            return
        expected = {name: digest for name, digest in json.loads(path.read_text()).items()
                    if name.split("/", 1)[0] in items}
        found = _digests(self.directory / str(step), items)
        wrong = sorted(name for name in set(expected) | set(found) if expected.get(name) != found.get(name))
        if wrong:
            raise CheckpointError(f"checkpoint {step} under {self.directory} fails its checksums: {wrong[0]} "
                                  f"{'differs' if wrong[0] in expected and wrong[0] in found else 'is missing or new'}"
                                  + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))

    def wait(self):
        """Waits for the save in flight, then seals every finished step not sealed yet."""
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in self.steps():
                path = self.directory / str(step) / CHECKSUMS
                if not path.exists():
                    temporary = path.parent / f"{CHECKSUMS}.tmp"
                    temporary.write_text(json.dumps(_digests(path.parent), indent=1))
                    temporary.rename(path)

    def close(self):
        self.manager.close()


def _digests(step_directory, items=ITEMS) -> dict[str, str]:
    """SHA-256 of every file of the step's `items`, by path relative to the step."""
    digests = {}
    for item in items:
        if not (step_directory / item).exists():
            continue
        for folder, _, names in (step_directory / item).walk():
            for name in names:
                digest = hashlib.sha256()
                with (folder / name).open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
                digests[str((folder / name).relative_to(step_directory))] = digest.hexdigest()
    return dict(sorted(digests.items()))


def _name(path) -> str:
    return ".".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)

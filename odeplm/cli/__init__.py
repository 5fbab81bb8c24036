"""The commands: one module per command, each parsing its flags and calling the
library. From a clone they run as `python -m train.pretrain` (the thin modules
under train/ and eval/); installed, as `odeplm-pretrain` and its siblings.

Every command starts quietly (`quiet_start`) and ends a typed error in one line
(`run`): status 2 for bad input (`OdeplmError`, whose message names the field,
file or step), 1 for training that cannot go on (`TrainingError`).
"""

from __future__ import annotations

import glob
import importlib.util
import logging as python_logging
import os
import sys
from collections.abc import Callable

import jax
from absl import app, flags, logging

from odeplm.core.errors import OdeplmError, TrainingError
from odeplm.core.solvers import SolverError

_GOOGLE_PCI_VENDOR = "0x1ae0"  # a Cloud TPU host shows its chips as Google PCI devices


def _tpu_chips_here() -> bool:
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        with open(path) as f:
            if f.read().strip() == _GOOGLE_PCI_VENDOR:
                return True
    return False


def quiet_start() -> None:
    """No error-looking lines from libraries on a machine that asked for nothing:

    - libtpu (installed for the ahead-of-time proof) probes for a TPU whenever JAX
      starts and prints errors where there is none, so JAX runs on the CPU when no
      platform was asked for, this host has no TPU chips and no other accelerator
      plugin is installed; on a TPU host, or with JAX_PLATFORMS set, nothing changes;
    - TensorFlow's start-up notices, and the warnings TFDS and orbax log through absl
      at every run, are left out unless `--verbosity` asks for them. TensorFlow 2.21
      logs its oneDNN notice whatever TF_CPP_MIN_LOG_LEVEL says, so its oneDNN kernels
      are off: TensorFlow only reads records here and computes nothing.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    other_plugins = importlib.util.find_spec("jax_plugins") is not None
    if not jax.config.jax_platforms and not _tpu_chips_here() and not other_plugins:
        jax.config.update("jax_platforms", "cpu")


def program() -> str:
    """The command's name as the user typed it: `train.pretrain`, or `odeplm-pretrain` when installed."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return getattr(spec, "name", None) or os.path.basename(sys.argv[0])


def fail(message: str, status: int = 2):
    print(f"{program()}: {message}", file=sys.stderr)
    sys.exit(status)


def run(main: Callable[[list[str]], None], flags_parser: Callable | None = None) -> None:
    """`absl.app.run(main)` after a quiet start, with the library's errors as one line;
    `--help` shows the docstring of the module that defines `main`."""
    quiet_start()
    sys.modules["__main__"].__doc__ = sys.modules[main.__module__].__doc__

    def guarded(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.ERROR)
            python_logging.getLogger("odeplm").setLevel(python_logging.WARNING)  # our own warnings stay
        try:
            main(argv)
        except OdeplmError as error:
            fail(f"{type(error).__name__}: {error}")
        except TrainingError as error:
            fail(f"{type(error).__name__}: {error}", status=1)

    app.run(guarded, **({"flags_parser": flags_parser} if flags_parser else {}))


def parse_steps(values: list[str] | None) -> list[int] | None:
    """Step counts from a command line's comma-separated list (None: the default grid)."""
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise SolverError(f"step counts must be integers, got {values}") from None

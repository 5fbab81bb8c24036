"""The commands: one module per command, each parsing its flags and calling the
library. From a clone they run as `python -m train.pretrain` (the thin modules
under train/ and eval/); installed, as `odeplm-pretrain` and its siblings.

Every command starts quietly (`quiet_start`) and ends a typed error in one line
(`run`): status 2 for bad input (`OdeplmError`, whose message names the field,
file or step), 1 for training that cannot go on (`TrainingError`).
"""

from __future__ import annotations

import logging as python_logging
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from odeplm.core.errors import OdeplmError, TrainingError
from odeplm.core.platforms import cpu_unless_asked
from odeplm.core.solvers import SolverError


def quiet_start() -> None:
    """No error-looking lines from libraries on a machine that asked for nothing:

    - libtpu's probe for TPU chips is skipped where there are none (`odeplm.core.platforms`,
      done already at `import odeplm`);
    - TensorFlow's start-up notices, and the warnings TFDS and orbax log through absl
      at every run, are left out unless `--verbosity` asks for them. TensorFlow 2.21
      logs its oneDNN notice whatever TF_CPP_MIN_LOG_LEVEL says, so its oneDNN kernels
      are off: TensorFlow only reads records here and computes nothing.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    cpu_unless_asked()


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

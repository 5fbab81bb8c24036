"""The `--config` flag of the training commands, with its mistakes as one line.

ml_collections reports a config file that is missing, has a syntax error or
fails to load, an override of an unknown field (`--config.train.stepz=10`) or a
value of the wrong type from inside absl's flag parsing, as a long traceback;
`parse` turns each into one line naming the flag (and the file and line of a
syntax error), with ml_collections' "did you mean" hint, and exit status 2.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from odeplm.cli import fail

config_flags.DEFINE_config_file("config", None, "an ml_collections config file", lock_config=True)


def parse(argv: list[str]) -> list[str]:
    """absl's flag parsing (`app.run(main, flags_parser=parse)`), with the config loaded here."""
    try:
        remaining = flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001  (ml_collections raises KeyError and AttributeError for a field)
        syntax = _syntax_error(error)
        if syntax is not None:
            fail(f"--config: {syntax.filename}:{syntax.lineno}: {syntax.msg}")
        if isinstance(error, flags.Error):  # absl's own: a bad value, a missing flag, a config file that raised
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            fail(" ".join(dict.fromkeys((lines[0], lines[-1]))))  # the flag, and the exception's last line
        fail(f"--config: {_message(error)}")
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]  # configs/study.py:NAME
    if path and not os.path.isfile(path):
        fail(f"--config: no such file: {path}")
    return remaining


def _syntax_error(error: BaseException) -> SyntaxError | None:
    """The SyntaxError behind a config file that failed to load, if that is what it was."""
    while error is not None:
        if isinstance(error, SyntaxError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _message(error: BaseException) -> str:
    """The innermost message, unescaped and on one line."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())

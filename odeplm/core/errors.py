"""The two kinds of error odeplm raises on purpose, so that callers (and the
entry points, which print them in one line) can tell them from bugs."""


class OdeplmError(ValueError):
    """Bad input: a config field, file, checkpoint step, solve or value that cannot
    be used. Every typed error of the library is one, and its message names the
    thing; the entry points print it in one line and exit with status 2."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept.
    The entry points print it in one line and exit with status 1."""

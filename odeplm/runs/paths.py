"""Run directories, local or remote (`gs://...`), through `etils.epath`."""

from __future__ import annotations

import os

from etils import epath


def run_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`: URLs as given, local paths user-expanded and absolute."""
    text = os.fspath(path)
    if "://" in text:
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))

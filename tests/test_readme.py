"""The README's Python blocks, run as a newcomer runs them: each in a fresh interpreter with nothing set,
on a trained workdir in place of runs/demo. They must work and print nothing that looks like an error
(libtpu's probe on a machine without TPU chips, a traceback), the check `.ci/readme.py` makes in CI."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("readme_ci", os.path.join(ROOT, ".ci", "readme.py"))
readme_ci = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_ci)

with open(os.path.join(ROOT, "README.md")) as f:
    BLOCKS = [text for language, text in readme_ci.commands(f.read()) if language == "python"]


def test_the_readme_shows_python_blocks_and_the_error_pattern_catches_libtpu():
    assert len(BLOCKS) >= 2 and any("odeplm.load(" in block for block in BLOCKS)
    probe = "E0000 00:00:1796191093.629018 5401 common_lib.cc:554] INVALID_ARGUMENT: Error: unexpected worker"
    assert readme_ci.ERROR_LINES.search(probe) and not readme_ci.ERROR_LINES.search("12 3 8 True")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs_quietly_in_a_fresh_interpreter(index, trained):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "PYTEST_CURRENT_TEST")}
    code = BLOCKS[index].replace('"runs/demo"', repr(trained))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert not [line for line in output.splitlines() if readme_ci.ERROR_LINES.search(line)], output[-4000:]

"""Runs what README.md shows, in order and as shown: every line of its bash blocks
(backslash continuations joined) and every Python block, from the repository root.
The test command is left out (.ci/run runs it). Stops at the first failure, or at the
first error-looking line a command prints (`ERROR_LINES`: a newcomer's first sight must
not be libtpu's probe or a traceback). tests/test_readme.py imports this file."""

import re
import subprocess
import sys
import time

BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ERROR_LINES = re.compile(r"E0000|INVALID_ARGUMENT|Failed to find host bounds|Traceback")


def commands(readme: str):
    for language, body in BLOCK.findall(readme):
        if language == "python":
            yield "python", body
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("   #")[0].strip()
            if line and not line.startswith("#") and "pytest" not in line:
                yield "bash", line


def main() -> int:
    with open("README.md") as f:
        readme = f.read()
    for language, text in commands(readme):
        shown = text if language == "bash" else "python: " + text.strip().splitlines()[0] + " ..."
        print(f"::: {shown}", flush=True)
        start = time.perf_counter()
        argv = ["bash", "-c", text] if language == "bash" else [".venv/bin/python", "-c", text]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        flagged = []
        for line in process.stdout:
            print(line, end="", flush=True)
            flagged += [line.strip()] if ERROR_LINES.search(line) else []
        if process.wait() != 0 or flagged:
            why = f"printed {flagged[0]!r}" if flagged else "failed"
            print(f"README.md: this {why}: {shown}", file=sys.stderr)
            return 1
        print(f"::: ok in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs what README.md shows, in order and as shown: every line of its bash blocks
(backslash continuations joined) and every Python block, from the repository root.
The test command is left out (.ci/run runs it). Stops at the first failure."""

import re
import subprocess
import sys
import time

BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)


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
        if subprocess.run(argv).returncode != 0:
            print(f"README.md: this failed: {shown}", file=sys.stderr)
            return 1
        print(f"::: ok in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

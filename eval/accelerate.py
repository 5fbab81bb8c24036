"""`python -m eval.accelerate`: the command `odeplm.cli.accelerate` (installed as `odeplm-accelerate`)."""

from odeplm.cli.accelerate import entry

if __name__ == "__main__":
    entry()

"""`python -m eval.generate`: the command `odeplm.cli.generate` (installed as `odeplm-generate`)."""

from odeplm.cli.generate import entry

if __name__ == "__main__":
    entry()

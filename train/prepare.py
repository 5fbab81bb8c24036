"""`python -m train.prepare`: the command `odeplm.cli.prepare` (installed as `odeplm-prepare`)."""

from odeplm.cli.prepare import entry

if __name__ == "__main__":
    entry()

"""`python -m train.aot`: the command `odeplm.cli.aot` (installed as `odeplm-aot`)."""

from odeplm.cli.aot import entry

if __name__ == "__main__":
    entry()

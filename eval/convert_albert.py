"""`python -m eval.convert_albert`: the command `odeplm.cli.convert_albert` (installed as `odeplm-convert-albert`)."""

from odeplm.cli.convert_albert import entry

if __name__ == "__main__":
    entry()

"""`python -m eval.export_albert`: the command `odeplm.cli.export_albert` (installed as `odeplm-export-albert`)."""

from odeplm.cli.export_albert import entry

if __name__ == "__main__":
    entry()

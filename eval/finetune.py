"""`python -m eval.finetune`: the command `odeplm.cli.finetune` (installed as `odeplm-finetune`)."""

from odeplm.cli.finetune import entry

if __name__ == "__main__":
    entry()

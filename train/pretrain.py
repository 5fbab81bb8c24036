"""`python -m train.pretrain`: the command `odeplm.cli.pretrain` (installed as `odeplm-pretrain`)."""

from odeplm.cli.pretrain import entry

if __name__ == "__main__":
    entry()

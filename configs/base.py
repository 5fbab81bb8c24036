"""Defaults every config starts from (`odeplm.runs.settings`); the others override a few fields.

    python -m train.pretrain --config configs/demo.py --workdir runs/demo --config.train.steps=100
"""

from odeplm.runs.settings import default_config


def get_config():
    return default_config()

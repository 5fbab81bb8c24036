"""A model that trains in seconds, for tests.

    python -m train.pretrain --config configs/tiny.py --workdir /tmp/tiny
"""

from odeplm.runs.settings import default_config


def get_config():
    config = default_config()
    config.model.update(vocab_size=512, width=32, heads=2, mlp_width=64, max_length=32, embedding_size=32,
                        depth="4")
    config.train.update(steps=40, batch_size=8, learning_rate=3e-3, warmup_steps=5, log_every=5, eval_batches=2)
    config.checkpoint.update(every=20, keep=2)
    config.eval.solves = "euler,euler:2,rk4:1"
    return config

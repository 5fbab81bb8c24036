"""The README's first command: a fully shared causal LM on the bundled corpus,
trained with random step counts so that one model serves every speed, then
evaluated across solvers and step counts; under five minutes on 2 CPU cores,
corpus, tokenizer and token files made from nothing included.

    python -m train.pretrain --config configs/demo.py --workdir runs/demo
"""

from odeplm.runs.settings import default_config


def get_config():
    config = default_config()
    config.model.update(vocab_size=1024, width=128, heads=4, mlp_width=512, max_length=64, embedding_size=128,
                        depth="6")
    config.train.update(steps=560, batch_size=32, learning_rate=2e-3, warmup_steps=50, log_every=20,
                        eval_batches=8, step_counts="1,2,3,6", step_weights="1,1,1,3")
    config.data.update(tokenizer_characters=2_000_000)  # the tokenizer learns from the first 2M characters
    config.checkpoint.update(every=200, keep=2)
    config.eval.solves = "euler,euler:3,euler:2,euler:1,midpoint:3,heun:3,rk4:1,bosh3:2"
    return config

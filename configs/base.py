"""Defaults every config starts from; the others override a few fields.

    python -m train.pretrain --config configs/demo.py --workdir runs/demo --config.train.steps=100
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.model = ConfigDict(dict(
        vocab_size=2048, width=256, heads=4, mlp_width=1024, max_length=128, embedding_size=256,
        project_embeddings=None, type_vocab_size=0, norm="pre", activation="gelu_new",
        dropout=0.0, attention_dropout=0.0,
        objective="causal", depth="6", inner_layers=1, layer_norm_eps=1e-5, initializer_range=0.02,
        dtype="float32", param_dtype="float32",
    ))
    config.data = ConfigDict(dict(dataset="shakespeare", data_dir=""))  # "" -> ~/tensorflow_datasets
    config.train = ConfigDict(dict(
        steps=1000, batch_size=32, learning_rate=1e-3, warmup_steps=100, weight_decay=0.01, clip_norm=1.0,
        grad_accum=1, log_every=10, eval_batches=8,
        solver="euler", step_counts="", step_weights="",  # "" -> the depth plan's own steps (tau = 1)
    ))
    config.checkpoint = ConfigDict(dict(every=200, keep=3, async_save=True))
    config.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.eval = ConfigDict(dict(solves="euler,euler:3,euler:2,euler:1,midpoint:3,heun:3,rk4:1,bosh3:2"))
    return config

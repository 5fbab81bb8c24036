"""ALBERT-base shaped masked LM (accelerator-sized): Post-LN, factorised
embeddings (128 -> 768), one block shared over 12 steps, random step counts.
The masked-LM head decodes the 80 target positions of each row only; each block
evaluation is rematerialised and 4 of a solve's states are kept for the backward
pass, so its global batch of 4096 fits v5e-16 in one step (data 2 x fsdp 8:
11.65 GiB of 15.75 per chip at N = 12; docs/pods.md's pod table):

    python -m train.prepare --config configs/albert_base_shared.py \\
        --config.data.dataset=wikipedia/20230601.en --config.data.data_dir=/mnt/data
    python -m train.aot --config configs/albert_base_shared.py --topology v5e:16x16 --config.mesh.fsdp=16
    python -m train.pretrain --config configs/albert_base_shared.py --workdir gs://bucket/albert --distributed \\
        --config.data.dataset=wikipedia/20230601.en --config.data.data_dir=/mnt/data --config.mesh.fsdp=16
"""

from odeplm.runs.settings import default_config


def get_config():
    config = default_config()
    config.model.update(vocab_size=30000, width=768, heads=12, mlp_width=3072, max_length=512, embedding_size=128,
                        type_vocab_size=2, norm="post", objective="masked", depth="12", layer_norm_eps=1e-12,
                        dtype="bfloat16", masked_positions=80, loss_chunk=16, remat="full", solve_checkpoints=4)
    config.train.update(steps=125_000, batch_size=4096, learning_rate=1.76e-3, warmup_steps=3125,
                        log_every=100, eval_batches=32, step_counts="3,4,6,12", step_weights="1,1,1,2")
    config.checkpoint.update(every=5000, keep=3)
    config.eval.solves = "euler,euler:6,euler:4,euler:3,midpoint:3,rk4:2,bosh3:2"
    return config

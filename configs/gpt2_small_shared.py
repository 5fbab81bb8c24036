"""GPT-2-small shaped causal LM (accelerator-sized): Pre-LN, one block shared
over 12 steps, random step counts. The loss decodes 128 positions at a time,
each block evaluation is rematerialised and 4 of a solve's states are kept for
the backward pass: on v5e-16 (data 2 x fsdp 8) it needs 4.28 GiB of 15.75 per
chip at N = 12 (docs/pods.md's pod table). Training windows are drawn 16 blocks
of 1 Mi tokens at a time, each read in sequence (docs/training.md, "Data at
corpus scale"):

    python -m train.prepare --config configs/gpt2_small_shared.py --config.data.dataset=c4/en \\
        --config.data.data_dir=/mnt/data
    python -m train.aot --config configs/gpt2_small_shared.py --topology v5e:4x4 --config.mesh.fsdp=8
    python -m train.pretrain --config configs/gpt2_small_shared.py --workdir gs://bucket/gpt2 --distributed \\
        --config.data.dataset=c4/en --config.data.data_dir=/mnt/data --config.mesh.fsdp=8
"""

from odeplm.runs.settings import default_config


def get_config():
    config = default_config()
    config.model.update(vocab_size=32000, width=768, heads=12, mlp_width=3072, max_length=1024, embedding_size=768,
                        norm="pre", objective="causal", depth="12", dtype="bfloat16", loss_chunk=128,
                        remat="full", solve_checkpoints=4)
    config.train.update(steps=100_000, batch_size=512, learning_rate=6e-4, warmup_steps=2000, weight_decay=0.1,
                        log_every=100, eval_batches=32, step_counts="3,4,6,12", step_weights="1,1,1,2")
    config.data.update(shuffle_blocks=16)
    config.checkpoint.update(every=5000, keep=3)
    config.eval.solves = "euler,euler:6,euler:4,euler:3,midpoint:3,rk4:2,bosh3:2"
    return config

"""The defaults of a run config, in one place: every file under configs/ starts
from them, and a saved run is read back over them (`TrainSettings.from_saved`),
so a field added later still has its value when an older checkpoint is loaded.
"""

import dataclasses

from ml_collections import ConfigDict, config_dict

from odeplm.config import ModelConfig


def default_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    # ModelConfig's own defaults; unset optional fields stay typed placeholders so
    # that --config.model.embedding_size=128 still parses (None: equal to the width).
    config.model = ConfigDict({
        field.name: config_dict.placeholder(int if field.name == "embedding_size" else bool)
        if field.default is None else field.default
        for field in dataclasses.fields(ModelConfig)
    })
    config.model.update(vocab_size=2048, width=256, heads=4, mlp_width=1024)
    # data_dir "" -> ~/tensorflow_datasets; workers 0 -> every core (tokenizing, in `train.prepare`);
    # tokenizer "bpe" or "char" (one piece per character; model.vocab_size must then be the
    # number the corpus holds, which the error names), trained on at most tokenizer_characters
    # of the training split; read_threads read each process's next batches in the background
    # during training; record_index
    # "offloaded" keeps memory flat whatever the corpus, "in_memory" reads faster.
    config.data = ConfigDict(dict(dataset="shakespeare", data_dir="", shards=16, workers=0, tokenizer="bpe",
                                  tokenizer_characters=50_000_000, read_threads=2, record_index="offloaded"))
    config.train = ConfigDict(dict(
        steps=1000, batch_size=32, learning_rate=1e-3, warmup_steps=100, weight_decay=0.01, clip_norm=1.0,
        grad_accum=1, log_every=10, eval_batches=8,
        # validation every eval_every steps (0: at the end only), at the training discretisation
        # and at each of eval_solves ("euler:2,rk4:1"), into metrics.jsonl and TensorBoard
        eval_every=0, eval_solves="",
        solver="euler", step_counts="", step_weights="",  # "" -> the depth plan's own steps (tau = 1)
        # a drawn N runs N steps over each segment's span ("span") or N steps of its own size ("depth");
        # curriculum_steps > 0 climbs through the step counts, smallest first, over those steps, then draws
        step_mode="span", curriculum_steps=0,
        # the sandwich rule (odeplm.recipe.Distillation): coarse step counts trained beside full depth
        # (solver "" -> the training solver)
        distill_steps="", distill_weights="", distill_label_weight=0.5, distill_hidden_weight=0.0, distill_solver="",
    ))
    config.checkpoint = ConfigDict(dict(every=200, keep=3, async_save=True))
    config.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.eval = ConfigDict(dict(solves="euler,euler:3,euler:2,euler:1,midpoint:3,heun:3,rk4:1,bosh3:2"))
    return config

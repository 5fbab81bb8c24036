"""Fine-tuning a pre-trained encoder for sentence classification, then accuracy at any solve;
`finetune_checkpoint` does both for a saved checkpoint and writes the result files.

The classifier starts from the language model's encoder and a fresh pooled head.
It trains under the discretisation the model was pre-trained with (step counts
drawn per batch from (seed, step), as in pre-training), so a model pre-trained
to run at several speeds keeps that ability through fine-tuning. Inputs are
`[BOS] text` (ALBERT's [CLS] has the same id). The head averages the final
states over real tokens by default: odeplm's pre-training has no [CLS] token,
so no single position has learned to summarise the text.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from odeplm.core.inputs import InputError, padded_rows
from odeplm.core.model import LanguageModel, SequenceClassifier
from odeplm.core.solvers import plan_solves
from odeplm.core.special_ids import BOS
from odeplm.data.labelled import Labelled, load_labelled
from odeplm.data.tokenizer import Tokenizer
from odeplm.evaluation.checkpoint_grid import load_with_tokenizer, results_directory
from odeplm.evaluation.grid import DEFAULT_SOLVERS, grid_points
from odeplm.evaluation.point import PointProgram, classification_metrics
from odeplm.evaluation.report import markdown, write_outputs
from odeplm.runs.recipe import Discretisation
from odeplm.training.optim import learning_rate_schedule, make_optimizer


def classification_inputs(tokenizer: Tokenizer, texts, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """`[BOS] text` per row, cut to `max_length` tokens and right-padded to the longest row."""
    return padded_rows([([BOS] + tokenizer.encode(text))[:max_length] for text in texts])


def classifier_from(model: LanguageModel, num_labels: int, seed: int = 0,
                    pooling: str = "mean") -> SequenceClassifier:
    """A classifier whose encoder holds a copy of `model`'s encoder parameters."""
    classifier = SequenceClassifier(model.config, num_labels, pooling=pooling, rngs=nnx.Rngs(seed))
    nnx.update(classifier.encoder, jax.tree.map(jnp.copy, nnx.state(model.encoder)))
    return classifier


def _train_step(graphdef, params, opt_state, tokens, mask, labels, key, *, optimizer, solves, dropout):
    def loss_fn(params):
        logits = nnx.merge(graphdef, params)(tokens, mask, solve=solves, key=key if dropout else None).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def finetune(model: LanguageModel, tokenizer: Tokenizer, data: Labelled, *, discretisation: Discretisation,
             epochs: int = 2, batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0,
             pooling: str = "mean") -> tuple[SequenceClassifier, list[float]]:
    """Trains a classifier on `data.train_*`; returns it and the loss of every step."""
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise InputError("epochs and batch_size must be positive integers and learning_rate positive")
    steps_per_epoch = len(data.train_texts) // batch_size
    if steps_per_epoch < 1:
        raise InputError(f"{len(data.train_texts)} training examples make no batch of {batch_size}")
    total = epochs * steps_per_epoch
    optimizer = make_optimizer(learning_rate_schedule(learning_rate, max(1, total // 10), total),
                               weight_decay=0.01, clip_norm=1.0)
    classifier = classifier_from(model, len(data.label_names), seed, pooling)
    graphdef, params = nnx.split(classifier)
    params = nnx.to_pure_dict(params)
    opt_state = optimizer.init(params)
    tokens, mask = classification_inputs(tokenizer, data.train_texts, model.config.max_length)
    dropout = model.config.dropout > 0 or model.config.attention_dropout > 0
    steps_fns: dict = {}
    losses = []
    for step in range(total):
        epoch, index = divmod(step, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(tokens))
        rows = order[index * batch_size:(index + 1) * batch_size]
        drawn = discretisation.draw(seed, step)
        if drawn not in steps_fns:
            steps_fns[drawn] = jax.jit(functools.partial(
                _train_step, graphdef, optimizer=optimizer, solves=discretisation.solves(model.config.depth, drawn),
                dropout=dropout), donate_argnums=(0, 1))
        key = jax.random.fold_in(jax.random.key(seed), step)
        params, opt_state, loss = steps_fns[drawn](params, opt_state, tokens[rows], mask[rows],
                                                   data.train_labels[rows], key)
        losses.append(float(loss))
    state = nnx.state(classifier)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(classifier, state)
    return classifier, losses


def accuracy(classifier: SequenceClassifier, tokens, mask, labels, *, solve=None,
             batch_size: int = 256) -> tuple[float, float]:
    """(accuracy, mean NFE per batch) on a labelled set at `solve`, through the evaluation step
    every evaluator shares (`odeplm.evaluation.point.PointProgram`); the last batch is filled up with copies
    of the last example at weight 0 (real text, so an adaptive solve sees nothing new), so every batch
    has one shape and the solve compiles once."""
    rows = -(-len(tokens) // batch_size) * batch_size
    padding = rows - len(tokens)
    padded = {"tokens": np.pad(tokens, ((0, padding), (0, 0)), mode="edge"),
              "padding_mask": np.pad(mask, ((0, padding), (0, 0)), mode="edge"),
              "labels": np.pad(labels, (0, padding), mode="edge"),
              "weights": np.pad(np.ones(len(tokens), np.float32), (0, padding))}
    batches = [{k: v[i:i + batch_size] for k, v in padded.items()} for i in range(0, rows, batch_size)]
    graphdef, params = nnx.split(classifier)
    program = PointProgram.compile(classification_metrics, graphdef, params,
                                   plan_solves(classifier.config.depth, solve), batches[0])
    result = program.score(params, batches)
    return result["accuracy"], result["nfe"]


def finetune_checkpoint(checkpoint: str, *, task: str = "shakespeare_genre", out: str | None = None, solvers=None,
             steps=None, extra=(), epochs: int = 2, batch_size: int = 32, learning_rate: float = 1e-3,
             per_class: int = 1000, seed: int = 0, data_dir: str | None = None) -> dict:
    """Fine-tunes, scores every solve of the grid and writes finetune.json and finetune.md; returns the report."""
    out = results_directory(checkpoint, out, "finetune")
    loaded = load_with_tokenizer(checkpoint)
    data = load_labelled(task, loaded.data_dir(data_dir), per_class=per_class, seed=seed)
    discretisation = loaded.run.discretisation
    classifier, losses = finetune(loaded.model, loaded.tokenizer, data, discretisation=discretisation,
                                             epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                             seed=seed)
    tokens, mask = classification_inputs(loaded.tokenizer, data.test_texts, loaded.model.config.max_length)
    rows = []
    for point in grid_points(loaded.model, solvers or DEFAULT_SOLVERS, steps, extra):
        if point.kind == "truncated":
            continue
        value, nfe = accuracy(classifier, tokens, mask, data.test_labels, solve=point.solves)
        rows.append({"label": point.label, "kind": point.kind, "solves": [str(s) for s in point.solves], "nfe": nfe,
                     "accuracy": value})
    majority = float(max((data.test_labels == k).mean() for k in range(len(data.label_names))))
    name = os.path.basename(os.path.normpath(checkpoint))
    report = {"title": f"{name}: {task} accuracy after fine-tuning", "checkpoint": os.path.abspath(checkpoint),
              "task": task, "labels": list(data.label_names), "train_examples": len(data.train_texts),
              "test_examples": len(data.test_texts), "majority_accuracy": majority,
              "discretisation": {"solver": discretisation.solver, "steps": list(discretisation.steps),
                                 "weights": list(discretisation.weights)},
              "epochs": epochs, "first_loss": losses[0], "last_loss": float(sum(losses[-10:]) / len(losses[-10:])),
              "points": rows,
              "markdown": markdown([("point", "l"), ("NFE", "r"), ("accuracy", "r")],
                                   ([r["label"], f"{r['nfe']:.0f}", f"{r['accuracy']:.4f}"] for r in rows))}
    report["outputs"] = write_outputs(report, out, "finetune")
    return report

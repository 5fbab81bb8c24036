"""Evaluation: text scoring from Python, the accuracy-versus-speed grid, and fine-tuning.

Every figure the tools report is checked against an independent computation
(numpy cross-entropy over the same batches, a layer stack written out by hand),
and every grid point is checked to be present and reproducible.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import odeplm
from configs import tiny
from odeplm.cli import parse_steps
from odeplm.core.inputs import InputError
from odeplm.core.model import truncated
from odeplm.core.special_ids import EOS, MASK
from odeplm.data import DataError
from odeplm.data.labelled import load_labelled, save_table
from odeplm.data.pipeline import split_batches
from odeplm.evaluation.checkpoint_grid import accelerate
from odeplm.evaluation.grid import grid_points, pareto_front
from odeplm.evaluation.report import plot_ranges
from odeplm.inference.generate import generate
from odeplm.training.finetune import finetune_checkpoint
from odeplm.training.trainer import Trainer
from tests.conftest import tiny_model


def pretrain(corpus_dir, workdir, **model):
    config = tiny.get_config()
    config.data.data_dir = corpus_dir
    config.model.update(model)
    with Trainer(config, str(workdir)) as trainer:
        trainer.run()
    return str(workdir)


@pytest.fixture(scope="module")
def causal(corpus_dir, tmp_path_factory):
    return pretrain(corpus_dir, tmp_path_factory.mktemp("causal"))


@pytest.fixture(scope="module")
def masked(corpus_dir, tmp_path_factory):
    return pretrain(corpus_dir, tmp_path_factory.mktemp("masked"), objective="masked")


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_the_generate_command_prints_the_text_under_its_solve_and_no_restore_logs(causal):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "eval.generate", f"--checkpoint={causal}", "--steps=1",
                             "--max_new_tokens=6"], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = odeplm.load(causal)
    (expected,) = generate(loaded.model, [loaded.tokenizer.encode("ROMEO.\n")], max_new_tokens=6, solve="euler:1")
    assert result.stdout == f"--- euler:1 (NFE 1)\nROMEO.\n{loaded.tokenizer.decode(expected)}\n"
    assert not re.search(r"^I\d{4} ", result.stderr, re.M)  # absl INFO lines: orbax logs every restored item


# --- scoring, filling masks and encoding from Python -------------------------------------------------------------

def test_causal_scores_equal_an_independent_log_likelihood(causal):
    loaded = odeplm.load(causal)
    texts = ["ROMEO.\nBut soft, what light", "To be, or not to be"]
    for solve in (None, "rk4:1"):
        scores = loaded.score(texts, solve=solve)
        for text, score in zip(texts, scores):
            ids = loaded.tokenizer.encode(text)
            logits = odeplm.forward(loaded.model, np.array([[EOS] + ids[:-1]]), solve=solve).logits[0]
            expected = log_softmax(logits)[np.arange(len(ids)), ids].sum()
            assert score.tokens == len(ids)
            assert score.log_likelihood == pytest.approx(expected, rel=1e-5)
            assert score.perplexity == pytest.approx(np.exp(-expected / len(ids)), rel=1e-5)
    assert loaded.score(texts, solve="euler:1")[0].log_likelihood != scores[0].log_likelihood
    with pytest.raises(InputError, match="at most 32"):
        loaded.score(["word " * 100])
    with pytest.raises(InputError, match="fill_mask needs a masked LM"):
        loaded.fill_mask("A [MASK] here")


def test_masked_pseudo_likelihood_fill_mask_and_encode(masked):
    loaded = odeplm.load(masked)
    text = "What light through yonder window"
    ids = loaded.tokenizer.encode(text)
    expected = 0.0
    for position in range(len(ids)):  # pseudo-log-likelihood, one masked copy at a time
        row = list(ids)
        row[position] = MASK
        expected += log_softmax(odeplm.forward(loaded.model, np.array([row]), solve="euler:2").logits[0])[
            position, ids[position]]
    assert loaded.score([text], solve="euler:2")[0].log_likelihood == pytest.approx(expected, rel=1e-5)

    (predictions,) = loaded.fill_mask("What light [MASK] yonder window", top_k=3)
    prefix = loaded.tokenizer.encode("What light ")
    row = prefix + [MASK] + loaded.tokenizer.encode(" yonder window")
    probabilities = np.exp(log_softmax(odeplm.forward(loaded.model, np.array([row])).logits[0, len(prefix)]))
    best = np.argsort(-probabilities)[:3]
    assert [p for _, p in predictions] == pytest.approx(probabilities[best].tolist(), rel=1e-5)
    assert [piece for piece, _ in predictions] == [loaded.tokenizer.decode([int(t)]) for t in best]
    with pytest.raises(InputError, match="holds no"):
        loaded.fill_mask("no mask here")

    texts = ["Friends, Romans, countrymen", "Now is the winter of our discontent, made glorious summer"]
    vectors = loaded.encode(texts, solve="midpoint:1")
    assert vectors.shape == (2, loaded.model.config.width)
    for text, vector in zip(texts, vectors):  # batching with padding changes nothing
        hidden = odeplm.forward(loaded.model, np.array([loaded.tokenizer.encode(text)]), solve="midpoint:1").hidden
        np.testing.assert_allclose(vector, np.asarray(hidden[0]).mean(0), rtol=1e-5, atol=1e-6)


# --- the accuracy-versus-speed grid --------------------------------------------------------------------------

def test_grid_covers_every_point_matches_independent_losses_and_repeats_exactly(causal, corpus_dir, tmp_path):
    options = dict(solvers=["euler", "midpoint", "rk4"], steps=[1, 2, 4], extra=["bosh3:rtol=1e-2:atol=1e-2"],
                   batches=2, batch_size=4, rounds=2, data_dir=corpus_dir)
    first = accelerate(causal, out=str(tmp_path / "a"), **options)
    second = accelerate(causal, out=str(tmp_path / "b"), **options)
    with open(tmp_path / "a" / "grid.json") as f:
        written = json.load(f)
    labels = [p["label"] for p in written["points"]]
    assert labels == ["full depth (euler:4)", "first 1 layers", "first 2 layers", "euler:1", "euler:2",
                      "midpoint:1", "midpoint:2", "midpoint:4", "rk4:1", "rk4:2", "rk4:4", "bosh3:rtol=0.01:atol=0.01"]
    fixed_nfe = {"euler": 1, "midpoint": 2, "rk4": 4}
    for point in written["points"]:
        name, _, steps = point["solves"][0].partition(":")
        if point["kind"] == "truncated":
            assert point["nfe"] == point["layers"]
        elif name in fixed_nfe:
            assert point["nfe"] == fixed_nfe[name] * int(steps)
        assert np.isfinite(point["loss"]) and point["latency_ms"] > 0 and point["ok"]
    assert [p["loss"] for p in first["points"]] == [p["loss"] for p in second["points"]]
    assert [p["accuracy"] for p in first["points"]] == [p["accuracy"] for p in second["points"]]
    assert open(tmp_path / "a" / "grid.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert open(tmp_path / "a" / "grid.md").read().count("\n") == len(labels) + 2

    # independent: numpy cross-entropy over the same batches, for full depth and for "first 2 layers"
    loaded = odeplm.load(causal)
    batches = split_batches("shakespeare", "validation", corpus_dir, loaded.tokenizer, length=32, batch_size=4,
                            objective="causal", shuffle=False)
    short = odeplm.LanguageModel(odeplm.ModelConfig.from_dict({**loaded.config["model"], "depth": "2"}),
                                 rngs=nnx.Rngs(1))
    nnx.update(short, nnx.state(loaded.model))
    for label, model in (("full depth (euler:4)", loaded.model), ("first 2 layers", short)):
        total = weight = 0.0
        for step in range(2):
            batch = batches.batch(step)
            logits = odeplm.forward(model, batch["tokens"], batch["padding_mask"]).logits
            losses = -np.take_along_axis(log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
            total += (losses * batch["weights"]).sum()
            weight += batch["weights"].sum()
        reported = next(p["loss"] for p in written["points"] if p["label"] == label)
        assert reported == pytest.approx(total / weight, rel=1e-5)
    # the unigram plateau: the entropy of the scored targets, counted by hand
    counts: dict[int, int] = {}
    for step in range(2):
        batch = batches.batch(step)
        for token, scored in zip(batch["targets"].ravel(), batch["weights"].ravel()):
            if scored:
                counts[int(token)] = counts.get(int(token), 0) + 1
    frequencies = np.array(list(counts.values())) / sum(counts.values())
    assert written["unigram_loss"] == pytest.approx(-(frequencies * np.log(frequencies)).sum(), rel=1e-9)


def test_truncation_of_a_partially_shared_model_is_its_first_layers_written_out():
    model = tiny_model(depth="2x2")
    tokens = np.random.default_rng(0).integers(5, 64, (2, 12))
    cut = truncated(model, 3)
    assert odeplm.format_depth(cut.config.depth) == "2,1"
    encoder = model.encoder
    mask = odeplm.core.block.attention_mask(np.ones(tokens.shape, bool), causal=True)
    h = encoder.embeddings(tokens, None, None)
    for block in (encoder.blocks[0], encoder.blocks[0], encoder.blocks[1]):  # Euler at tau = 1 is the layer map
        h = block(h, mask)
    expected = model.head(encoder.final_norm(h), encoder.embeddings)
    np.testing.assert_allclose(odeplm.forward(cut, tokens).logits, expected, rtol=1e-5, atol=1e-5)
    labels = [p.label for p in grid_points(model, ("euler", "rk4"), [1, 2])]
    assert labels == ["full depth (euler:2)", "first 1 layers", "first 2 layers", "euler:1", "rk4:1", "rk4:2"]
    assert [p.solves for p in grid_points(model, ("euler",), [1]) if p.label == "euler:1"][0] == (
        odeplm.Solve("euler", 1),) * 2  # step counts are per segment
    assert [p.label for p in grid_points(model, ("rk4",), [1, 2], max_nfe=8)][-1] == "rk4:1"  # rk4:2 costs 16


def test_the_plot_axes_follow_the_pareto_front_and_full_depth():
    """The README's own example: the front lives within 10-30 ms and 3.62-3.68 nats, full depth
    at 60 ms; a diverged solve (5.0 nats) and a slow adaptive one (150 ms) stay off the axes."""
    row = lambda latency, loss, pareto: {"latency_ms": latency, "loss": loss, "pareto": pareto}  # noqa: E731
    rows = [row(60.0, 3.633, False), row(10.0, 3.68, True), row(20.0, 3.64, True), row(30.0, 3.62, True),
            row(75.0, 5.0, False), row(150.0, 4.6, False), row(40.0, 3.75, False)]
    (left, right), (low, high) = plot_ranges(rows)
    assert left < 10.0 and 60.0 < right < 150.0
    assert low < 3.62 and 3.68 < high < 3.75


def test_pareto_front():
    assert pareto_front([(1.0, 3.0), (2.0, 2.0), (2.0, 2.5), (3.0, 2.0), (0.5, 4.0)]) == [
        True, True, False, False, True]


def test_grid_errors_name_the_problem(causal, corpus_dir, tmp_path):
    with pytest.raises(odeplm.CheckpointError, match="no checkpoint directory"):
        accelerate(str(tmp_path / "nowhere"), out=str(tmp_path / "out"), data_dir=corpus_dir)
    (tmp_path / "notes").mkdir()
    with pytest.raises(odeplm.CheckpointError, match="notes is neither a pre-training workdir nor a checkpoint"):
        accelerate(str(tmp_path / "notes"), data_dir=corpus_dir)
    with pytest.raises(odeplm.CheckpointError, match="checkpoints is a checkpoint directory, .* pass --out"):
        accelerate(os.path.join(causal, "checkpoints"), data_dir=corpus_dir)
    with pytest.raises(odeplm.CheckpointError, match="not a pre-training workdir; pass --out"):
        accelerate(os.path.join(causal, "checkpoints"), data_dir=corpus_dir)

    assert parse_steps(["1", "2"]) == [1, 2] and parse_steps(None) is None
    with pytest.raises(odeplm.SolverError, match="step counts must be integers"):
        parse_steps(["1", "two"])
    with pytest.raises(odeplm.SolverError, match="step counts must be positive integers"):
        accelerate(causal, out=str(tmp_path / "out"), steps=[0, 2], data_dir=corpus_dir)
    with pytest.raises(odeplm.SolverError, match="max_nfe must be a positive integer"):
        accelerate(causal, out=str(tmp_path / "out"), max_nfe=0, data_dir=corpus_dir)
    with pytest.raises(odeplm.SolverError, match="unknown solver"):
        accelerate(causal, out=str(tmp_path / "out"), solvers=["euler", "leapfrog"], data_dir=corpus_dir)
    copy = tmp_path / "copy"
    shutil.copytree(causal, copy)
    (copy / "checkpoints" / "40" / "checksums.json").unlink()  # unsealed, so orbax's own error is reached
    metadata = copy / "checkpoints" / "40" / "config" / "metadata"
    config = json.loads(metadata.read_text())
    config["model"].update(width=64, mlp_width=128, embedding_size=64)  # valid, but not these weights
    metadata.write_text(json.dumps(config))
    mismatch = r"checkpoint 40 under .*: parameter .* has shape \(32,\); the model expects \(64,\)"
    with pytest.raises(odeplm.CheckpointError, match=mismatch):
        accelerate(str(copy), out=str(tmp_path / "out"), data_dir=corpus_dir)
    assert sorted(os.listdir(copy / "checkpoints")) == ["20", "40"]  # reading moves nothing aside
    assert not (tmp_path / "out").exists()
    # The command line says the same in one line and exits 2.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "eval.accelerate", f"--checkpoint={tmp_path / 'nowhere'}",
                             f"--data_dir={corpus_dir}"],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "CheckpointError: no checkpoint directory" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# --- fine-tuning --------------------------------------------------------------------------------------------

def test_finetuning_learns_the_shipped_set_and_reports_every_solve(masked, corpus_dir, tmp_path):
    report = finetune_checkpoint(masked, task="sample", out=str(tmp_path), solvers=["euler", "rk4"], steps=[1, 2],
                                 epochs=15, batch_size=16, learning_rate=3e-3, data_dir=corpus_dir)
    assert report["train_examples"] == 128 and report["test_examples"] == 32
    assert report["last_loss"] < report["first_loss"] - 0.3
    assert [p["label"] for p in report["points"]] == ["full depth (euler:4)", "euler:1", "euler:2", "rk4:1", "rk4:2"]
    assert [p["nfe"] for p in report["points"]] == [4, 1, 2, 4, 8]
    with open(tmp_path / "finetune.json") as f:
        assert json.load(f)["points"] == report["points"]
    with pytest.raises(InputError, match="epochs and batch_size must be positive"):
        finetune_checkpoint(masked, task="sample", out=str(tmp_path / "bad"), epochs=0, data_dir=corpus_dir)
    with pytest.raises(DataError, match="unknown task"):
        finetune_checkpoint(masked, task="no_such_task", out=str(tmp_path / "bad"), data_dir=corpus_dir)

    from odeplm.runs.recipe import Discretisation
    from odeplm.training.finetune import accuracy, classification_inputs, finetune

    loaded, data = odeplm.load(masked), load_labelled("sample", corpus_dir)
    classifier, losses = finetune(loaded.model, loaded.tokenizer, data, discretisation=Discretisation(), epochs=15,
                                  batch_size=16, learning_rate=3e-3)
    tokens, mask = classification_inputs(loaded.tokenizer, data.train_texts, 32)
    fitted, nfe = accuracy(classifier, tokens, mask, data.train_labels, batch_size=48)  # the last batch filled up
    assert fitted > 0.8 and nfe == 4  # it fits what it was trained on
    predicted = np.asarray(odeplm.forward(classifier, tokens, mask).logits).argmax(-1)
    assert len(tokens) % 48 and fitted == np.mean(predicted == data.train_labels)
    before = jax.tree.leaves(nnx.to_pure_dict(nnx.state(odeplm.load(masked).model.encoder)))
    after = jax.tree.leaves(nnx.to_pure_dict(nnx.state(loaded.model.encoder)))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # the language model itself is untouched


def test_mean_pooling_ignores_padding():
    config = odeplm.ModelConfig(vocab_size=64, width=32, heads=4, mlp_width=64, max_length=16, objective="masked")
    classifier = odeplm.SequenceClassifier(config, 3, pooling="mean", rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).integers(5, 64, (1, 9))
    padded = np.concatenate([tokens, np.zeros((1, 7), int)], axis=1)
    np.testing.assert_allclose(odeplm.forward(classifier, padded, padded > 0).logits,
                               odeplm.forward(classifier, tokens).logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(odeplm.ConfigError, match="pooling: must be one of"):
        odeplm.SequenceClassifier(config, 3, pooling="max", rngs=nnx.Rngs(0))


def test_labelled_sources_and_their_errors(corpus_dir, tmp_path):
    sample = load_labelled("sample", corpus_dir)
    assert sample.label_names == ("comedy", "tragedy") and set(sample.test_labels) == {0, 1}
    save_table(sample, str(tmp_path / "copy.tsv"))
    again = load_labelled(str(tmp_path / "copy.tsv"), corpus_dir)
    assert again.train_texts == sample.train_texts and np.array_equal(again.test_labels, sample.test_labels)

    (tmp_path / "plain.csv").write_text("text,label\n" + "".join(f"line {i},{i % 2}\n" for i in range(10)))
    plain = load_labelled(str(tmp_path / "plain.csv"), corpus_dir)
    assert len(plain.train_texts) == 8 and plain.test_texts == ["line 0", "line 5"] and plain.label_names == ("0", "1")
    (tmp_path / "bad.csv").write_text("sentence,label\nhello,1\n")
    with pytest.raises(DataError, match=r"missing \['text'\]"):
        load_labelled(str(tmp_path / "bad.csv"), corpus_dir)
    with pytest.raises(DataError, match="no such file"):
        load_labelled(str(tmp_path / "absent.tsv"), corpus_dir)
    with pytest.raises(DataError, match="not prepared"):
        load_labelled("glue/sst2", str(tmp_path))

    genre = load_labelled("shakespeare_genre", corpus_dir, per_class=40)
    assert len(genre.train_texts) == 80 and len(genre.test_texts) == 20
    train_plays_text = set(genre.train_texts)
    assert not train_plays_text & set(genre.test_texts)

"""Tasks as data: the k-hop generator against an independent implementation,
examples with their own targets, weights and groups through the TFDS, array_record
and grain path, and scoring per group."""

import json

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from flax import nnx

import odeplm
from odeplm.core.losses import row_cross_entropy
from odeplm.core.solvers import plan_solves
from odeplm.core.special_ids import PAD
from odeplm.data import DataError
from odeplm.data.pipeline import Batches, split_batches
from odeplm.data.prepared import ExampleRecords, TokenFiles, dataset_tokenizer, encode_example, prepare, write_manifest
from odeplm.data.tasks import HOP_DIGITS, LETTERS, NONE, VOCABULARY, KHopOptions, khop_examples
from odeplm.evaluation.point import PointProgram, token_metrics

TINY_KHOP = "khop?alphabet=3&length=24&hops=1-3&train=96&validation=40&seed=7"


def hop_answer(text: str, position: int, hops: int) -> str:
    """The definition, one position at a time: from p, find the previous occurrence
    of text[p] before p and move to the character after it, `hops` times."""
    for _ in range(hops):
        earlier = text[:position].rfind(text[position])
        if earlier < 0:
            return NONE
        position = earlier + 1
    return text[position]


def test_khop_examples_follow_the_definition():
    options = KHopOptions(alphabet=5, length=60, hops=(1, 6), train=300, validation=10, seed=3)
    examples = khop_examples(options, "train", 0)
    assert examples["tokens"].shape == (300, 60) and set(np.unique(examples["group"])) == set(range(1, 7))
    for tokens, targets, weights, hops in zip(examples["tokens"], examples["targets"], examples["weights"],
                                              examples["group"]):
        text = VOCABULARY.decode(tokens)
        assert text[0] == HOP_DIGITS[hops] and set(text[1:]) <= set(LETTERS[:5])
        letters = text[1:]
        assert all(a != b for a, b in zip(letters, letters[1:]))  # no immediate repeats
        expected = "".join(hop_answer(letters, p, int(hops)) for p in range(len(letters)))
        assert VOCABULARY.decode(targets[1:]) == expected
        assert targets[0] == PAD and weights[0] == 0 and (weights[1:] == 1).all()
    # the same (seed, split, chunk) gives the same examples; another split others
    again = khop_examples(options, "train", 0)
    np.testing.assert_array_equal(examples["tokens"], again["tokens"])
    assert not np.array_equal(khop_examples(options, "validation", 0)["tokens"], examples["tokens"][:10])


def test_khop_options_are_parsed_and_bad_ones_named():
    options = KHopOptions.parse("khop?alphabet=6&hops=2-5&length=40")
    assert (options.alphabet, options.hops, options.length) == (6, (2, 5), 40)
    assert KHopOptions.parse("khop?hops=3").hops == (3, 3) and KHopOptions.parse("khop") == KHopOptions()
    for bad, message in (("khop?hop=3", "unknown option"), ("khop?hops=0-3", "hops must be a range"),
                         ("khop?alphabet=1", "alphabet must be"), ("khop?length=x", "length must be an integer"),
                         ("khop?hops=2-20", "hops must be a range"),
                         ("khop?hops=1-4&hops=2", r"option\(s\) \['hops'\] given more than once")):
        with pytest.raises(DataError, match=message):
            KHopOptions.parse(bad)


def test_khop_is_made_prepared_and_read_like_any_dataset(tmp_path):
    vocabulary = dataset_tokenizer(TINY_KHOP, str(tmp_path), VOCABULARY.vocab_size)
    prepared = prepare(TINY_KHOP, str(tmp_path), vocabulary)
    assert prepared["train"].shard_examples == (96,) and prepared["validation"].group_name == "hops"
    options = KHopOptions.parse(TINY_KHOP)
    made = khop_examples(options, "validation", 0)
    batches = split_batches(TINY_KHOP, "validation", str(tmp_path), vocabulary, length=24, batch_size=8,
                            objective="causal", shuffle=False)
    read = [batches.batch(step) for step in range(5)]
    for key in ("tokens", "targets", "weights", "group"):
        np.testing.assert_array_equal(np.concatenate([b[key] for b in read]), made[key])
    assert batches.group_name == "hops" and (read[0]["padding_mask"] == (read[0]["tokens"] != PAD)).all()
    # a masked model reads the same examples, unmasked, with the same targets
    masked = split_batches(TINY_KHOP, "validation", str(tmp_path), vocabulary, length=24, batch_size=8,
                           objective="masked", shuffle=False).batch(0)
    np.testing.assert_array_equal(masked["tokens"], read[0]["tokens"])
    np.testing.assert_array_equal(masked["targets"], read[0]["targets"])
    with pytest.raises(odeplm.ConfigError, match="data.shuffle_blocks: applies to text"):
        split_batches(TINY_KHOP, "train", str(tmp_path), vocabulary, length=24, batch_size=8, objective="causal",
                      shuffle=True, shuffle_blocks=2)
    with pytest.raises(odeplm.ConfigError, match="vocabulary of 48 ids, not 512"):
        dataset_tokenizer(TINY_KHOP, str(tmp_path), 512)


def test_examples_default_to_next_token_targets_and_prompts_can_weigh_nothing(tmp_path):
    """Records without targets predict the next token at weight 1; a prompt/answer
    record weighs 0 over its prompt, so only the answer is scored."""
    prompt, answer = [7, 8, 9], [10, 11, 12, 13]
    tokens = prompt + answer
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(answer) + [0.0]  # predict the answer's tokens only
    records = [encode_example(tokens, weights=weights, group=1), encode_example([20, 21, 22], group=2)]
    path = tmp_path / "shard.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1,uncompressed")
    for record in records:
        writer.write(record)
    writer.close()
    write_manifest(str(tmp_path), [path.name], [10], np.int32, 0, "test", examples=[2], group_name="kind")
    files = TokenFiles.read(str(tmp_path), "test")
    batch = Batches(ExampleRecords(files, 8), 2, "causal", 32, shuffle=False, group_name="kind").batch(0)
    np.testing.assert_array_equal(batch["tokens"], [tokens + [PAD], [20, 21, 22] + [PAD] * 5])
    np.testing.assert_array_equal(batch["targets"][0], [8, 9, 10, 11, 12, 13, PAD, PAD])
    np.testing.assert_array_equal(batch["weights"][0], weights + [0.0])
    np.testing.assert_array_equal(batch["targets"][1][:3], [21, 22, PAD])
    np.testing.assert_array_equal(batch["weights"][1], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["group"], [1, 2])
    with pytest.raises(DataError, match="must match its tokens"):
        encode_example([1, 2, 3], targets=[1, 2])


def test_scores_per_group_equal_numpy_over_each_groups_rows(tmp_path):
    vocabulary = dataset_tokenizer(TINY_KHOP, str(tmp_path), VOCABULARY.vocab_size)
    batches = split_batches(TINY_KHOP, "validation", str(tmp_path), vocabulary, length=24, batch_size=8,
                            objective="causal", shuffle=False)
    validation = [batches.batch(step) for step in range(5)]
    config = odeplm.ModelConfig(vocab_size=VOCABULARY.vocab_size, width=32, heads=4, mlp_width=64, max_length=24,
                                depth="2")
    model = odeplm.LanguageModel(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    plan = plan_solves(config.depth, None)
    scored = PointProgram.compile(token_metrics, graphdef, params, plan, validation[0]).score(params, validation)
    logits = np.concatenate([np.asarray(odeplm.forward(model, b["tokens"], b["padding_mask"]).logits, np.float64)
                             for b in validation])
    targets, weights, groups = (np.concatenate([b[k] for b in validation]) for k in ("targets", "weights", "group"))
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    losses = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == targets
    for group in np.unique(groups):
        rows = groups == group
        expected_loss = (losses[rows] * weights[rows]).sum() / weights[rows].sum()
        expected_accuracy = (correct[rows] * weights[rows]).sum() / weights[rows].sum()
        assert scored["groups"][str(group)]["loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert scored["groups"][str(group)]["accuracy"] == pytest.approx(expected_accuracy, abs=1e-9)
    assert scored["loss"] == pytest.approx((losses * weights).sum() / weights.sum(), rel=1e-5)
    # the per-row sums are the summed loss split by row
    loss, weight, _ = row_cross_entropy(logits, targets, weights)
    np.testing.assert_allclose(np.asarray(loss), (losses * weights).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(weight), weights.sum(-1))


def test_training_on_a_task_honours_its_targets_weights_and_groups(tmp_path):
    """The first training step's loss is the loss of the record's own targets at its own
    weights, computed by numpy from the initial model; validation reports each group."""
    from configs import tiny
    from odeplm.training.program import BATCH_FIELDS
    from odeplm.training.trainer import Trainer

    config = tiny.get_config()
    config.data.update(dataset=TINY_KHOP, data_dir=str(tmp_path / "data"))
    config.model.update(vocab_size=VOCABULARY.vocab_size, max_length=24, depth="2")
    config.train.update(steps=4, log_every=1, eval_every=2, eval_batches=2, batch_size=8)
    config.checkpoint.update(every=4)
    with Trainer(config, str(tmp_path / "run")) as trainer:
        initial = nnx.merge(trainer.graphdef, trainer.state["params"])
        batch = trainer.train_batches.batch(0)
        logits = np.asarray(odeplm.forward(initial, batch["tokens"], batch["padding_mask"]).logits, np.float64)
        trainer.run()
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    losses = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
    expected = (losses * batch["weights"]).sum() / batch["weights"].sum()
    assert set(BATCH_FIELDS) < set(batch) and "group" in batch
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert {f"validation/accuracy@euler:2/hops={k}" for k in (1, 2, 3)} <= set(rows[1])

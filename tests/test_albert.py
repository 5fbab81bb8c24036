"""Parity with Hugging Face's PyTorch ALBERT, built from random weights (no download)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import odeplm  # noqa: E402
from odeplm.inference.albert import ConversionError, load_albert  # noqa: E402

BASE = dict(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, num_hidden_groups=1, inner_group_num=1, max_position_embeddings=512)
SMALL = dict(vocab_size=300, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=64)


def save_hf(directory, **config):
    torch.manual_seed(0)
    model = transformers.AlbertForMaskedLM(transformers.AlbertConfig(**config)).eval()
    with torch.no_grad():  # random, non-trivial norms and biases
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize(
    "config",
    [
        BASE,
        dict(SMALL, embedding_size=32, num_hidden_groups=2, inner_group_num=2),
        dict(SMALL, embedding_size=64, hidden_act="gelu"),  # embedding size equal to the width
        dict(SMALL, num_hidden_layers=5, num_hidden_groups=2, hidden_act="relu"),  # groups of 3 and 2 layers
    ],
    ids=["albert-base", "groups2-inner2", "unfactorised-gelu", "uneven-groups-relu"],
)
def test_hidden_states_and_mlm_logits_match_transformers(tmp_path, config):
    reference = save_hf(tmp_path, **config)
    model = load_albert(str(tmp_path))
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, config["vocab_size"], (3, 24))
    lengths = np.array([24, 17, 9])
    padding = np.arange(24)[None] < lengths[:, None]
    types = (np.arange(24)[None] >= lengths[:, None] // 2).astype(np.int64) * padding
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(padding.astype(np.int64)),
                        token_type_ids=torch.tensor(types), output_hidden_states=True)
    ours = odeplm.forward(model, tokens, padding, types)
    real = padding[..., None]
    np.testing.assert_allclose(np.where(real, ours.hidden, 0), np.where(real, out.hidden_states[-1].numpy(), 0),
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.where(real, ours.logits, 0), np.where(real, out.logits.numpy(), 0),
                               atol=1e-4, rtol=1e-4)
    assert int(ours.nfe) == config["num_hidden_layers"]
    faster = odeplm.forward(model, tokens, padding, types, solve="rk4:1")  # any solver runs on it
    assert int(faster.nfe) == 4 * config.get("num_hidden_groups", 1) and bool(faster.ok)


def test_pytorch_bin_is_read_without_unpickling_code(tmp_path):
    reference = save_hf(tmp_path, **dict(SMALL, embedding_size=32))
    os.remove(tmp_path / "model.safetensors")  # transformers 5 writes safetensors only
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    model = load_albert(str(tmp_path))
    tokens = np.arange(5, 21)[None]
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(odeplm.forward(model, tokens).logits, expected, atol=1e-4, rtol=1e-4)
    torch.save({"evil": object()}, tmp_path / "pytorch_model.bin")  # pickled code, not tensors
    with pytest.raises(ConversionError, match="holds more than tensors"):
        load_albert(str(tmp_path))


def test_missing_and_unknown_tensors_are_listed(tmp_path):
    from safetensors.numpy import load_file, save_file

    save_hf(tmp_path, **dict(SMALL, embedding_size=32))
    weights = load_file(tmp_path / "model.safetensors")
    del weights["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.bias"]
    weights["albert.encoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match=r"missing \['encoder.albert_layer_groups.0.albert_layers.0.ffn.bias'\],"
                                              r" unknown \['encoder.extra.weight'\]"):
        load_albert(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, num_hidden_groups=config["num_hidden_layers"] + 1)))
    with pytest.raises(ConversionError, match="num_hidden_groups .* must lie between 1 and num_hidden_layers"):
        load_albert(str(tmp_path))
    # the command says the same in one line, exit status 2, and writes nothing
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "eval.convert_albert", "--hf", str(tmp_path), "--out",
                             str(tmp_path / "converted")], cwd=root, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=root))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "eval.convert_albert: ConversionError: num_hidden_groups" in result.stderr
    assert not (tmp_path / "converted").exists()


def test_converted_checkpoint_loads_with_identical_outputs(tmp_path):
    from odeplm.inference.albert import convert_to_checkpoint

    save_hf(tmp_path / "hf", **dict(SMALL, embedding_size=32, num_hidden_groups=2))
    convert_to_checkpoint(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    loaded = odeplm.load(str(tmp_path / "ckpt"))
    direct = load_albert(str(tmp_path / "hf"))
    assert loaded.config["model"]["depth"] == "2,2" and loaded.tokenizer is None and loaded.step == 0
    tokens = np.arange(5, 30)[None]
    for solve in (None, "rk4:1", "tsit5:rtol=1e-3:atol=1e-3"):
        np.testing.assert_array_equal(odeplm.forward(loaded.model, tokens, solve=solve).logits,
                                      odeplm.forward(direct, tokens, solve=solve).logits)
    with pytest.raises(odeplm.CheckpointError, match="not empty"):
        convert_to_checkpoint(str(tmp_path / "hf"), str(tmp_path / "ckpt"))


def test_accelerate_runs_on_a_converted_checkpoint(tmp_path, tokenizer, corpus_dir):
    from odeplm.evaluation.checkpoint_grid import accelerate
    from odeplm.inference.albert import convert_to_checkpoint

    save_hf(tmp_path / "hf", **dict(SMALL, vocab_size=tokenizer.vocab_size, embedding_size=32, num_hidden_groups=2))
    (tmp_path / "hf" / "spiece.model").write_bytes(tokenizer.proto)  # pad 0, unk 1, [CLS] 2, [SEP] 3, [MASK] 4
    convert_to_checkpoint(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    report = accelerate(str(tmp_path / "ckpt"), out=str(tmp_path / "grid"), solvers=["euler", "rk4"], steps=[1, 2],
                        batches=1, batch_size=2, rounds=1, dataset="shakespeare", data_dir=corpus_dir)
    assert report["objective"] == "masked"
    assert [(p["label"], p["nfe"]) for p in report["points"]] == [
        ("full depth (euler:2)", 4), ("first 1 layers", 1), ("first 2 layers", 2), ("euler:1", 2), ("rk4:1", 8),
        ("rk4:2", 16)]
    assert all(np.isfinite(p["loss"]) and 0 <= p["accuracy"] <= 1 for p in report["points"])


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(module, *args):
    """A command run as a user runs it: its exit status and its standard error."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    return result.returncode, result.stderr + result.stdout


def assert_matches_transformers(model, directory, token_types=True):
    """Hidden states and MLM logits of `transformers` on the exported directory equal odeplm's (1e-4), with
    padding and segment types; AlbertModel loads it too, without ALBERT's pooler."""
    rng = np.random.default_rng(1)
    config = model.config
    tokens = rng.integers(5, config.vocab_size, (3, 20))
    padding = np.arange(20)[None] < np.array([20, 13, 6])[:, None]
    types = (np.arange(20)[None] >= 7).astype(np.int64) * padding if token_types else np.zeros_like(tokens)
    inputs = dict(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(padding.astype(np.int64)),
                  token_type_ids=torch.tensor(types))
    with torch.no_grad():
        mlm = transformers.AlbertForMaskedLM.from_pretrained(directory).eval()(**inputs, output_hidden_states=True)
        encoder = transformers.AlbertModel.from_pretrained(directory, add_pooling_layer=False).eval()(**inputs)
    ours = odeplm.forward(model, tokens, padding, types if token_types else None)
    real = padding[..., None]
    for theirs in (mlm.hidden_states[-1], encoder.last_hidden_state):
        np.testing.assert_allclose(np.where(real, ours.hidden, 0), np.where(real, theirs.numpy(), 0), atol=1e-4)
    np.testing.assert_allclose(np.where(real, ours.logits, 0), np.where(real, mlm.logits.numpy(), 0), atol=1e-4)


@pytest.mark.parametrize("overrides", [
    dict(depth="2x2", inner_layers=2, embedding_size=32),  # two groups of two steps, two layers a block
    dict(depth="4", embedding_size=64, activation="gelu", type_vocab_size=0),  # unprojected, no segment types
    dict(depth="3,2", activation="relu"),  # uneven groups, as transformers assigns 5 layers to 2 groups
], ids=["groups-inner", "unprojected-no-types", "uneven-relu"])
def test_exported_model_matches_transformers_and_imports_back_bit_identical(tmp_path, overrides):
    from safetensors.numpy import save_file

    from odeplm.inference.albert import albert_config, albert_weights

    config = odeplm.ModelConfig(**{**dict(vocab_size=300, width=64, heads=4, mlp_width=128, max_length=32,
                                          embedding_size=32, type_vocab_size=2, norm="post", objective="masked",
                                          initializer_range=0.2), **overrides})
    model = odeplm.LanguageModel(config, rngs=nnx.Rngs(3))
    (tmp_path / "config.json").write_text(json.dumps(albert_config(config)))
    save_file(albert_weights(model), str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert_matches_transformers(model, str(tmp_path), token_types=bool(config.type_vocab_size))
    back = load_albert(str(tmp_path))
    if config.project_embeddings and config.type_vocab_size:  # the same parameters, bit for bit
        for ours, again in zip(jax_leaves(model), jax_leaves(back)):
            np.testing.assert_array_equal(ours, again)
    tokens = np.arange(5, 25)[None]
    np.testing.assert_allclose(odeplm.forward(back, tokens).logits, odeplm.forward(model, tokens).logits, atol=1e-5)


def jax_leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def test_a_trained_albert_base_shaped_model_round_trips_through_transformers(tmp_path, corpus_dir):
    """configs/albert_base_shared.py's architecture at a tiny size, pre-trained a few steps, exported by the
    command, loaded by transformers (logits within 1e-4 at Euler over the trained steps), and imported back:
    the same parameters, bit for bit, and the same tokenizer."""
    import sentencepiece

    from configs import albert_base_shared
    from odeplm.inference.albert import convert_to_checkpoint
    from odeplm.training.trainer import Trainer

    config = albert_base_shared.get_config()
    config.model.update(vocab_size=512, width=48, heads=4, mlp_width=96, max_length=32, embedding_size=16,
                        dtype="float32", masked_positions=8, loss_chunk=None, depth="6")
    config.train.update(steps=3, batch_size=4, warmup_steps=1, log_every=1, eval_batches=1, step_counts="",
                        step_weights="")
    # the session's corpus, and the tokenizer its other runs use (saved by kind, size and sample bound)
    config.data.data_dir = corpus_dir
    config.checkpoint.update(every=3, async_save=False)
    config.eval.solves = ""
    with Trainer(config, str(tmp_path / "run")) as trainer:
        trainer.run()
    status, output = command("eval.export_albert", "--checkpoint", str(tmp_path / "run"), "--out",
                             str(tmp_path / "hf"))
    assert status == 0, output[-3000:]
    loaded = odeplm.load(str(tmp_path / "run"))
    assert_matches_transformers(loaded.model, str(tmp_path / "hf"))
    convert_to_checkpoint(str(tmp_path / "hf"), str(tmp_path / "back"))
    back = odeplm.load(str(tmp_path / "back"))
    assert back.config["model"]["depth"] == "6"
    assert back.model.config.architecture() == loaded.model.config.architecture()
    for ours, again in zip(jax_leaves(loaded.model), jax_leaves(back.model)):
        np.testing.assert_array_equal(ours, again)
    text = "ROMEO.\nBut soft, what light through yonder window breaks?"
    assert back.tokenizer.encode(text) == loaded.tokenizer.encode(text)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "hf" / "spiece.model"))
    assert processor.encode(text) == loaded.tokenizer.encode(text)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert (hf_tokenizer.pad_token_id, hf_tokenizer.mask_token_id, hf_tokenizer.cls_token_id) == (0, 4, 2)
    status, output = command("eval.export_albert", "--checkpoint", str(tmp_path / "run"), "--out",
                             str(tmp_path / "hf"))
    assert status == 2 and "not an empty directory" in output and len(output.strip().splitlines()) == 1, output


@pytest.mark.parametrize("overrides,named", [
    (dict(objective="causal", norm="pre"), "objective 'causal' .*; norm 'pre'"),
    (dict(time_features=8), "a time-aware field"),
    (dict(depth="1,4,1"), "depth '1,4,1': transformers runs 6 layers in 3 groups of 2, 2, 2"),
    (dict(depth="4@2"), "steps of size tau != 1"),
    (dict(residual_gate="rezero"), "residual_gate 'rezero'"),
], ids=["causal-pre", "time-aware", "prelude-coda", "tau", "rezero"])
def test_models_albert_cannot_express_are_refused_naming_what_does_not_fit(tmp_path, overrides, named):
    """Each misfit named; the command (run on the first) says it in one line, exit 2, and writes nothing."""
    from odeplm.inference.albert import albert_weights
    from odeplm.runs.checkpoint import Checkpointer

    config = odeplm.ModelConfig(**{**dict(vocab_size=64, width=32, heads=4, mlp_width=64, max_length=16,
                                          norm="post", objective="masked"), **overrides})
    model = odeplm.LanguageModel(config, rngs=nnx.Rngs(0))
    with pytest.raises(ConversionError, match=f"Hugging Face ALBERT cannot express this model: {named}"):
        albert_weights(model)
    if "causal" not in named:
        return
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    checkpointer.save(0, params=nnx.to_pure_dict(nnx.state(model)), config={"model": config.to_dict()}, tokenizer=None)
    checkpointer.close()
    status, output = command("eval.export_albert", "--checkpoint", str(tmp_path / "ckpt"), "--out",
                             str(tmp_path / "hf"))
    assert status == 2 and len(output.strip().splitlines()) == 1, output
    assert "eval.export_albert: ConversionError: Hugging Face ALBERT cannot express" in output
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("damage,named", [
    (lambda d: (d / "config.json").write_text("{not json"), "config.json is not JSON"),
    (lambda d: (d / "config.json").write_text(json.dumps({"hidden_size": 64})), "config.json lacks vocab_size, "
                                                                                 "num_hidden_layers"),
    (lambda d: (d / "config.json").write_text(json.dumps(dict(SMALL, num_hidden_layers="six"))),
     "num_hidden_layers must be a positive integer, got 'six'"),
    (lambda d: (d / "config.json").write_text(json.dumps([SMALL])), "config.json holds a list, not an object"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 50), "model.safetensors is not a readable"),
], ids=["not-json", "lacks-fields", "six-layers", "a-list", "garbage-weights"])
def test_malformed_hugging_face_directories_are_named_in_one_line(tmp_path, damage, named):
    save_hf(tmp_path / "hf", **SMALL)
    damage(tmp_path / "hf")
    with pytest.raises(ConversionError, match=named):
        load_albert(str(tmp_path / "hf"))
    if "not JSON" not in named:  # the command once: one line, exit 2, nothing written
        return
    status, output = command("eval.convert_albert", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "out"))
    assert status == 2 and len(output.strip().splitlines()) == 1 and "ConversionError" in output, output
    assert not (tmp_path / "out").exists()

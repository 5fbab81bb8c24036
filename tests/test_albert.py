"""Parity with Hugging Face's PyTorch ALBERT, built from random weights (no download)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

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

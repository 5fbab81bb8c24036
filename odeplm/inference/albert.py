"""Hugging Face ALBERT checkpoints as odeplm masked LMs.

ALBERT maps onto the depth plan directly: `num_hidden_groups` G blocks, each
applied L / G times in turn (`"{G}x{L/G}"`; uneven groups give uneven segments,
as transformers assigns them), each block `inner_group_num` layers
(`inner_layers`); Post-LN, its activation, the factorised embedding projection and
the MLM head with its tied decoder. Weights are read from `model.safetensors`,
or from `pytorch_model.bin` with `torch.load(weights_only=True)`, which loads
tensors only and never runs pickled code.
"""

from __future__ import annotations

import collections
import json
import os

import jax
import numpy as np
from flax import nnx

from odeplm.core.block import ACTIVATIONS
from odeplm.core.config import ModelConfig
from odeplm.core.errors import OdeplmError
from odeplm.core.model import LanguageModel, abstract_model
from odeplm.data.tokenizer import Tokenizer
from odeplm.runs.checkpoint import Checkpointer, CheckpointError


class ConversionError(OdeplmError):
    """A Hugging Face directory that does not describe a convertible ALBERT model."""


def config_from_hf(hf: dict) -> ModelConfig:
    """The odeplm config of an ALBERT `config.json`."""
    if hf.get("model_type", "albert") != "albert":
        raise ConversionError(f"model_type {hf.get('model_type')!r} is not albert")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported")
    layers, groups = hf["num_hidden_layers"], hf.get("num_hidden_groups", 1)
    if not 1 <= groups <= layers:
        raise ConversionError(f"num_hidden_groups {groups} must lie between 1 and num_hidden_layers {layers}")
    # transformers runs layer i with group int(i / (layers / groups)); uneven groups give uneven segments
    steps = collections.Counter(int(i / (layers / groups)) for i in range(layers))
    if hf.get("hidden_act", "gelu_new") not in ACTIVATIONS:
        raise ConversionError(f"hidden_act {hf['hidden_act']!r} is not supported ({', '.join(ACTIVATIONS)})")
    return ModelConfig(
        vocab_size=hf["vocab_size"], width=hf["hidden_size"], heads=hf["num_attention_heads"],
        mlp_width=hf["intermediate_size"], max_length=hf.get("max_position_embeddings", 512),
        embedding_size=hf.get("embedding_size", 128), project_embeddings=True,
        type_vocab_size=hf.get("type_vocab_size", 2), norm="post", activation=hf.get("hidden_act", "gelu_new"),
        objective="masked", depth=",".join(str(steps[g]) for g in range(groups)),
        inner_layers=hf.get("inner_group_num", 1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), initializer_range=hf.get("initializer_range", 0.02),
    )


def read_weights(directory: str) -> dict[str, np.ndarray]:
    """Tensors of `model.safetensors` or `pytorch_model.bin`, as float32 numpy arrays."""
    safetensors_path = os.path.join(directory, "model.safetensors")
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(safetensors_path):
        from safetensors.numpy import load_file

        tensors = load_file(safetensors_path)
    elif os.path.exists(bin_path):
        try:
            import torch
        except ImportError:
            raise ConversionError("reading pytorch_model.bin needs torch (pip install torch==2.13.0)") from None
        try:
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ConversionError(f"{bin_path} holds more than tensors, or is damaged: {error}") from None
        tensors = {k: v.float().numpy() for k, v in state.items()}
    else:
        raise ConversionError(f"{directory} has neither model.safetensors nor pytorch_model.bin")
    return {k.removeprefix("albert."): np.asarray(v, np.float32) for k, v in tensors.items()}


def _sources(config: ModelConfig) -> dict[tuple, tuple[str, bool]]:
    """odeplm parameter path -> (ALBERT tensor name, transpose)."""
    linear = lambda target, source: {target + ("kernel",): (f"{source}.weight", True),  # noqa: E731
                                     target + ("bias",): (f"{source}.bias", False)}
    norm = lambda target, source: {target + ("scale",): (f"{source}.weight", False),  # noqa: E731
                                   target + ("bias",): (f"{source}.bias", False)}
    embeddings = ("encoder", "embeddings")
    table = {
        embeddings + ("word", "embedding"): ("embeddings.word_embeddings.weight", False),
        embeddings + ("position", "embedding"): ("embeddings.position_embeddings.weight", False),
        embeddings + ("token_type", "embedding"): ("embeddings.token_type_embeddings.weight", False),
        **norm(embeddings + ("norm",), "embeddings.LayerNorm"),
        **linear(embeddings + ("projection",), "encoder.embedding_hidden_mapping_in"),
        **linear(("head", "dense"), "predictions.dense"),
        **norm(("head", "norm"), "predictions.LayerNorm"),
        ("head", "bias"): ("predictions.bias", False),
    }
    for group in range(len(config.depth)):
        for inner in range(config.inner_layers):
            target = ("encoder", "blocks", group, "layers", inner)
            source = f"encoder.albert_layer_groups.{group}.albert_layers.{inner}"
            for name in ("query", "key", "value"):
                table.update(linear(target + ("attention", name), f"{source}.attention.{name}"))
            table.update(linear(target + ("attention", "output"), f"{source}.attention.dense"))
            table.update(norm(target + ("attention_norm",), f"{source}.attention.LayerNorm"))
            table.update(linear(target + ("mlp", "up"), f"{source}.ffn"))
            table.update(linear(target + ("mlp", "down"), f"{source}.ffn_output"))
            table.update(norm(target + ("mlp_norm",), f"{source}.full_layer_layer_norm"))
    return table


# Tensors that carry nothing the model needs: buffers, the tied decoder (checked
# against the word embeddings), its bias alias, and the pooler (not part of an LM).
_REDUNDANT = ("embeddings.position_ids", "embeddings.token_type_ids", "predictions.decoder.weight",
              "predictions.decoder.bias", "pooler.weight", "pooler.bias")


def convert(weights: dict[str, np.ndarray], config: ModelConfig) -> LanguageModel:
    """An odeplm masked LM holding the ALBERT weights; unknown or missing tensors are errors."""
    sources = _sources(config)
    wanted = {name for name, _ in sources.values()}
    missing = sorted(wanted - set(weights))
    unknown = sorted(set(weights) - wanted - set(_REDUNDANT))
    if missing or unknown:
        raise ConversionError(f"ALBERT weights do not match the config: missing {missing}, unknown {unknown}")
    decoder = weights.get("predictions.decoder.weight")
    if decoder is not None and not np.array_equal(decoder, weights["embeddings.word_embeddings.weight"]):
        raise ConversionError("predictions.decoder.weight differs from the word embeddings: the decoder is not tied")
    graphdef, abstract = abstract_model(config)
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(abstract))[0]:
        key = tuple(getattr(p, "key", getattr(p, "idx", None)) for p in path)
        name, transpose = sources[key]
        value = weights[name].T if transpose else weights[name]
        if value.shape != leaf.shape:
            raise ConversionError(f"{name} has shape {value.shape}, the model expects {leaf.shape}")
        flat[key] = value
    params = jax.tree_util.tree_map_with_path(
        lambda path, _: flat[tuple(getattr(p, "key", getattr(p, "idx", None)) for p in path)],
        nnx.to_pure_dict(abstract))
    return nnx.merge(graphdef, params)


def load_albert(directory: str) -> LanguageModel:
    """Reads a local Hugging Face ALBERT directory (config.json plus weights)."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise ConversionError(f"{directory} has no config.json")
    with open(config_path) as f:
        config = config_from_hf(json.load(f))
    return convert(read_weights(directory), config)


def convert_to_checkpoint(hf: str, out: str) -> str:
    """Writes step 0 of a new checkpoint under `out`; returns its path."""
    if os.path.isdir(out) and os.listdir(out):
        raise CheckpointError(f"{out} is not empty; refusing to write over it")
    model = load_albert(hf)
    tokenizer = None
    spiece = os.path.join(hf, "spiece.model")
    if os.path.exists(spiece):
        with open(spiece, "rb") as f:
            tokenizer = Tokenizer(f.read()).to_json()
    checkpointer = Checkpointer(out, async_save=False)
    config = {"model": model.config.to_dict(), "source": {"format": "huggingface-albert", "path": os.path.abspath(hf)}}
    checkpointer.save(0, params=nnx.to_pure_dict(nnx.state(model)), config=config, tokenizer=tokenizer)
    checkpointer.close()
    return os.path.join(os.path.abspath(out), "0")

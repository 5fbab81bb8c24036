"""Hugging Face ALBERT checkpoints as odeplm masked LMs, and back.

ALBERT maps onto the depth plan directly: `num_hidden_groups` G blocks, each
applied L / G times in turn (`"{G}x{L/G}"`; uneven groups give uneven segments,
as transformers assigns them), each block `inner_group_num` layers
(`inner_layers`); Post-LN, its activation, the factorised embedding projection and
the MLM head with its tied decoder. Weights are read from `model.safetensors`,
or from `pytorch_model.bin` with `torch.load(weights_only=True)`, which loads
tensors only and never runs pickled code. `export_albert` writes the other
direction from one table of tensor names: an odeplm masked LM that ALBERT can
express (Post-LN, time-blind, its groups as transformers assigns them, steps of
size 1) becomes a directory that `transformers.AlbertForMaskedLM.from_pretrained`
loads; anything else is refused in one line naming what does not fit.
"""

from __future__ import annotations

import collections
import json
import os

import jax
import numpy as np
from flax import nnx

from odeplm.core.block import ACTIVATIONS
from odeplm.core.config import ModelConfig, format_depth
from odeplm.core.errors import OdeplmError
from odeplm.core.model import LanguageModel, abstract_model
from odeplm.core.special_ids import BOS, EOS, PAD
from odeplm.data.tokenizer import Tokenizer
from odeplm.runs.checkpoint import Checkpointer, CheckpointError


class ConversionError(OdeplmError):
    """A Hugging Face directory that does not describe a convertible ALBERT model."""


REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_COUNTS = REQUIRED + ("num_hidden_groups", "inner_group_num", "embedding_size", "max_position_embeddings",
                      "type_vocab_size")


def config_from_hf(hf: dict) -> ModelConfig:
    """The odeplm config of an ALBERT `config.json`; a field missing or of the wrong kind is named."""
    if not isinstance(hf, dict):
        raise ConversionError(f"config.json holds a {type(hf).__name__}, not an object of ALBERT's fields")
    missing = [name for name in REQUIRED if name not in hf]
    if missing:
        raise ConversionError(f"config.json lacks {', '.join(missing)}")
    for name in _COUNTS:
        if name in hf and (not isinstance(hf[name], int) or isinstance(hf[name], bool) or hf[name] < 0
                           or hf[name] == 0 and name != "type_vocab_size"):
            raise ConversionError(f"config.json: {name} must be a positive integer, got {hf[name]!r}")
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

        try:
            tensors = load_file(safetensors_path)
        except Exception as error:  # safetensors raises its own error, or OSError, on a damaged file
            raise ConversionError(f"{safetensors_path} is not a readable safetensors file: {error}") from None
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
    try:
        with open(config_path, "rb") as f:
            hf = json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{config_path} is not JSON: {error}") from None
    return convert(read_weights(directory), config_from_hf(hf))


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


def albert_config(config: ModelConfig) -> dict:
    """The Hugging Face `config.json` of an odeplm model that ALBERT can express; otherwise a ConversionError
    naming every part that does not fit."""
    layers, groups, depth = config.layers, len(config.depth), format_depth(config.depth)
    grouped = collections.Counter(int(i / (layers / groups)) for i in range(layers))
    misfits = [what for wrong, what in (
        (config.objective != "masked", f"objective {config.objective!r} (ALBERT is a masked LM)"),
        (config.norm != "post", f"norm {config.norm!r} (ALBERT's blocks are Post-LN)"),
        (config.time_features or config.stride_features, "a time-aware field (time_features, stride_features)"),
        (config.residual_gate != "none", f"residual_gate {config.residual_gate!r}"),
        (any(segment.tau != 1 for segment in config.depth), f"steps of size tau != 1 (depth {depth!r})"),
        ([s.steps for s in config.depth] != [grouped[g] for g in range(groups)],
         f"depth {depth!r}: transformers runs {layers} layers in {groups} groups of "
         f"{', '.join(str(grouped[g]) for g in range(groups))} (a prelude or coda does not fit)"),
        (not config.project_embeddings and config.embedding_size != config.width, "unprojected narrow embeddings"),
    ) if wrong]
    if misfits:
        raise ConversionError(f"Hugging Face ALBERT cannot express this model: {'; '.join(misfits)}")
    return {
        "architectures": ["AlbertForMaskedLM"], "model_type": "albert", "vocab_size": config.vocab_size,
        "embedding_size": config.embedding_size, "hidden_size": config.width, "num_hidden_layers": layers,
        "num_hidden_groups": groups, "num_attention_heads": config.heads, "intermediate_size": config.mlp_width,
        "inner_group_num": config.inner_layers, "hidden_act": config.activation,
        "hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_length, "type_vocab_size": max(config.type_vocab_size, 1),
        "initializer_range": config.initializer_range, "layer_norm_eps": config.layer_norm_eps,
        "position_embedding_type": "absolute", "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS,
        "torch_dtype": "float32",
    }


def albert_weights(model: LanguageModel) -> dict[str, np.ndarray]:
    """The model's parameters under ALBERT's tensor names (`_sources`, read backwards): the tied decoder
    written out, an identity projection where the embeddings are not projected, and a zero segment-type table
    where the model has none (what transformers adds for token type 0)."""
    config = model.config
    albert_config(config)
    sources = _sources(config)
    weights = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]:
        name, transpose = sources[tuple(getattr(p, "key", getattr(p, "idx", None)) for p in path)]
        value = np.asarray(leaf, np.float32)
        weights[name] = np.ascontiguousarray(value.T if transpose else value)
    if not config.project_embeddings:
        weights["encoder.embedding_hidden_mapping_in.weight"] = np.eye(config.width, dtype=np.float32)
        weights["encoder.embedding_hidden_mapping_in.bias"] = np.zeros(config.width, np.float32)
    if not config.type_vocab_size:
        weights["embeddings.token_type_embeddings.weight"] = np.zeros((1, config.embedding_size), np.float32)
    weights["predictions.decoder.weight"] = weights["embeddings.word_embeddings.weight"]
    weights["predictions.decoder.bias"] = weights["predictions.bias"]
    return {name if name.startswith("predictions.") else f"albert.{name}": value for name, value in weights.items()}


def export_albert(checkpoint: str, out: str) -> str:
    """Writes the checkpoint's model (and its SentencePiece tokenizer, if it has one) as a Hugging Face ALBERT
    directory `out`, which must not exist or be empty; returns its path. Nothing is written unless the model
    fits (`albert_config`)."""
    from safetensors.numpy import save_file

    from odeplm.inference.loading import load

    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        raise ConversionError(f"{out} exists and is not an empty directory; refusing to write over it")
    loaded = load(checkpoint)
    hf, weights = albert_config(loaded.model.config), albert_weights(loaded.model)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    save_file({k: v.copy() for k, v in weights.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    if isinstance(loaded.tokenizer, Tokenizer):
        with open(os.path.join(out, "spiece.model"), "wb") as f:
            f.write(loaded.tokenizer.proto)
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump(TOKENIZER_CONFIG, f, indent=2)
    return os.path.abspath(out)


# odeplm's SentencePiece models: pad 0 "<pad>", unk 1, bos 2 "<s>", eos 3 "</s>", [MASK] 4, no normalisation
TOKENIZER_CONFIG = {"tokenizer_class": "AlbertTokenizer", "do_lower_case": False, "remove_space": False,
                    "keep_accents": True, "pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>",
                    "sep_token": "</s>", "bos_token": "<s>", "eos_token": "</s>", "mask_token": "[MASK]"}

"""Model FLOPs and the HBM traffic of the shared block, counted from the model's
shapes: XLA's `cost_analysis()` counts a diffrax loop body once, so what a solve
repeats is ours to count."""

from __future__ import annotations

from odeplm.core.config import ModelConfig


def forward_flops_per_token(config: ModelConfig, nfe: int, length: int) -> float:
    """Matmul FLOPs per token of one forward pass: NFE block evaluations
    (projections, MLP, attention scores and values) plus embeddings and head."""
    width, mlp = config.width, config.mlp_width
    block = config.inner_layers * (2 * (4 * width * width + 2 * width * mlp) + 2 * 2 * length * width)
    embed = 2 * config.embedding_size * width if config.project_embeddings else 0
    head = 2 * config.embedding_size * config.vocab_size + (2 * width * config.embedding_size if embed or
                                                            config.objective == "masked" else 0)
    decoded = min(config.masked_positions or length, length) / length  # a masked model decodes its targets only
    return nfe * block + embed + decoded * head


def training_flops_per_token(config: ModelConfig, nfe: int, length: int) -> float:
    """Matmul FLOPs per token of one training step: the forward pass and a backward pass of twice its cost."""
    return 3 * forward_flops_per_token(config, nfe, length)


def block_traffic_bytes(config: ModelConfig, nfe: int, tokens: int) -> float:
    """HBM bytes the block's evaluations move in one training step over `tokens` on one
    device, estimated: each evaluation reads the block's weights (all-gathered, in the
    compute dtype) and reads and writes the activations around each of its matmuls and
    norms once per pass; three passes (forward, recomputation, gradient). Fusing a norm or
    an activation into its matmul saves some of this; keeping attention scores costs more."""
    width, mlp = config.width, config.mlp_width
    itemsize = {"float32": 4, "bfloat16": 2, "float64": 8}[config.dtype]
    weights = config.inner_layers * (4 * width * width + 2 * width * mlp) * itemsize
    # per token: QKV (w in, 3w out), attention (3w in, w out), output (w, w), MLP (w, m), activation (m, m),
    # down (m, w), two norms (w, w) and two residual adds (2w, w)
    activations = config.inner_layers * (21 * width + 4 * mlp) * itemsize * tokens
    return 3 * nfe * (weights + activations)

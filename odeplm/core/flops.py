"""Model FLOPs, counted from the model's shapes: XLA's `cost_analysis()` counts a
diffrax loop body once, so a solve's FLOPs are ours to count."""

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
    return nfe * block + embed + head


def training_flops_per_token(config: ModelConfig, nfe: int, length: int) -> float:
    """Matmul FLOPs per token of one training step: the forward pass and a backward pass of twice its cost."""
    return 3 * forward_flops_per_token(config, nfe, length)

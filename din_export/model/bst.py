"""Behavior Sequence Transformer (Chen et al., 2019), readable top to bottom.

The candidate joins the user's behaviours as one more token of the sequence (marked by a learned target
vector, where a behaviour carries its recency); multi-head self-attention layers let every behaviour and the
candidate attend to each other; the candidate's output and the mean of the behaviours' outputs are concatenated
with the other features into the final MLP. The paper concatenates every position's output, which a sequence of
any length cannot have; the target's output and the mean keep its content at a fixed width. The explanation of a
score is the candidate's attention over the behaviours in the last layer, averaged over its heads.
"""

from __future__ import annotations

import torch
from torch import nn

from din_runtime.schema import FeatureSchema

from ..config import ModelConfig
from .base import BehaviourModel
from .layers import EncoderBlock


class BST(BehaviourModel):
    def __init__(self, schema: FeatureSchema, config: ModelConfig) -> None:
        super().__init__(schema, config)
        dim = self.behaviour_dim
        self.target = nn.Parameter(torch.randn(dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(dim, config.encoder_heads, config.dropout) for _ in range(config.encoder_layers))
        self.build_head(2 * dim)

    def interest_and_weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[the candidate's output, the mean of the behaviours' outputs], and the candidate's attention (batch, T)."""
        tokens = torch.cat([keys, (query + self.target).unsqueeze(1)], dim=1)
        token_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        attention = tokens.new_zeros(0)
        for block in self.blocks:
            tokens, attention = block.attended(tokens, token_mask)
        real = mask.unsqueeze(-1).to(tokens.dtype)
        behaviours = (tokens[:, :-1] * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)
        weights = attention[:, :, -1, :-1].mean(dim=1) * mask.to(tokens.dtype)
        return torch.cat([tokens[:, -1], behaviours], dim=-1), weights

"""Deep Interest Network (Zhou et al., KDD 2018), and the variants that differ from it only in how the behaviours
are pooled: `din` (target attention, the local activation unit), `base` (the paper's BaseModel: mean or sum
pooling, blind to the candidate) and `din-seq` (a Transformer encoder over the behaviours before target attention).
"""

from __future__ import annotations

import torch
from torch import nn

from din_runtime.schema import FeatureSchema

from ..config import ModelConfig
from .base import BehaviourModel
from .layers import AttentionPooling, MeanPooling, SelfAttentionEncoder, SumPooling, pooled


class DIN(BehaviourModel):
    """The interest is the behaviours pooled for the candidate: weighted by the activation unit, or averaged."""

    def __init__(self, schema: FeatureSchema, config: ModelConfig) -> None:
        super().__init__(schema, config)
        self.encoder = None
        if config.variant == "din-seq":
            self.encoder = SelfAttentionEncoder(self.behaviour_dim, schema.max_len, config.encoder_heads,
                                                config.encoder_layers, config.dropout)
        if config.variant == "base":
            self.pooling: nn.Module = MeanPooling() if config.base_pooling == "mean" else SumPooling()
        else:
            self.pooling = AttentionPooling(self.behaviour_dim, config.attention_hidden, config.attention_activation,
                                            config.attention_weighting)
        self.build_head(self.behaviour_dim)

    @property
    def explains(self) -> bool:  # type: ignore[override]
        return isinstance(self.pooling, AttentionPooling)

    def behaviours(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys of attention, each with its recency where the model has it, through the encoder where there is one."""
        keys, mask = super().behaviours(x)
        return (keys if self.encoder is None else self.encoder(keys, mask)), mask

    def interest(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pooling(query, keys, mask)

    def interest_and_weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.explains:
            raise ValueError(f"the {self.config.variant} model pools its behaviours without attention: it has no weights to explain")
        weights = self.pooling.weights(query, keys, mask)
        return pooled(weights, keys), weights

    def one_history_interest(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One large product with a table built from the history (AttentionPooling.one_history), or the
        candidate-blind pooling computed once."""
        return self.pooling.one_history(query, keys, mask)

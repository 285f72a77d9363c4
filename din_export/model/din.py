"""Deep Interest Network (Zhou et al., KDD 2018), readable top to bottom.

Inputs arrive positionally in the order of the fitted feature schema (the ONNX input order):
categorical IDs (batch,), numeric values (batch,), behaviour sequences (batch, seq_len). Every sequence
shares the embedding table of one categorical feature; those shared categoricals form the candidate
(the query of attention) and the sequences form the behaviours (its keys). Index 0 is padding.
"""

from __future__ import annotations

import copy
import keyword

import torch
from torch import nn

from din_runtime.schema import FeatureSchema

from ..config import FORMS, ModelConfig
from .calibration import Calibration
from .layers import AttentionPooling, MeanPooling, Recency, SelfAttentionEncoder, SumPooling, mlp, pooled

ESCAPED = "feature_x"
_MODULE_ATTRIBUTES = frozenset(dir(nn.ModuleDict()))  # a table's key may not shadow one of these (`training`, `forward`)


def table_key(feature: str) -> str:
    """The embedding table's key in the ModuleDict (and so in weights.pt's state dict and the exporter's generated
    code, which must parse): the feature's own name where that is an ASCII identifier, no Python keyword, no module
    attribute (`training`, `forward`) and does not begin `feature_x`, as nearly every name is; else `feature_x` and
    the name's UTF-8 bytes in hex. Kept names never begin so, so no two features share a key."""
    if (feature.isascii() and feature.isidentifier() and not keyword.iskeyword(feature)
            and feature not in _MODULE_ATTRIBUTES and not feature.startswith(ESCAPED)):
        return feature
    return ESCAPED + feature.encode().hex()


class DIN(nn.Module):
    """Returns the click logit; ProbabilityModel adds the sigmoid for export."""

    def __init__(self, schema: FeatureSchema, config: ModelConfig) -> None:
        super().__init__()
        self.schema = schema
        self.config = config
        self.sequences = schema.sequence_names
        self.candidates = schema.shared
        self.context = [c.name for c in schema.categoricals if c.name not in self.candidates]
        self.numerics = [n.name for n in schema.numerics]

        dim = config.embedding_dim
        self.embeddings = nn.ModuleDict({
            table_key(feature.name): nn.Embedding(feature.size, dim, padding_idx=0) for feature in schema.categoricals
        })
        for table in self.embeddings.values():
            # Small initial embeddings: torch's N(0, 1) makes q*k and the raw-weighted sum of up to max_len
            # behaviours large at the start, and training then often never finds the attention signal.
            nn.init.normal_(table.weight, std=config.embedding_init_std)
            with torch.no_grad():
                table.weight[0].zero_()
        behaviour_dim = dim * len(self.sequences)
        self.recency = Recency(behaviour_dim) if config.recency == "position" else None
        self.encoder = None
        if config.variant == "din-seq":
            self.encoder = SelfAttentionEncoder(behaviour_dim, schema.max_len, config.encoder_heads,
                                                config.encoder_layers, config.dropout)
        if config.variant == "base":
            self.pooling: nn.Module = MeanPooling() if config.base_pooling == "mean" else SumPooling()
        else:
            self.pooling = AttentionPooling(behaviour_dim, config.attention_hidden, config.attention_activation, config.attention_weighting)
        mlp_in = dim * len(self.context) + 2 * behaviour_dim + len(self.numerics)
        self.mlp = mlp(mlp_in, config.mlp_hidden, config.mlp_activation, config.dropout, config.batch_norm)
        # logit -> served probability (downsampling correction, post-hoc calibration): fitted after training,
        # held in the manifest, never in the state dict (calibration.py)
        self.calibration = Calibration()

    def tables(self) -> list[tuple[str, nn.Embedding]]:
        """(categorical feature, its embedding table) in schema order."""
        return [(c.name, self.embeddings[table_key(c.name)]) for c in self.schema.categoricals]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        x = dict(zip(self.schema.names, tensors, strict=True))
        query = self.candidate(x)
        keys, mask = self.behaviours(x)
        return self.head(x, query, self.pooling(query, keys, mask))

    def explained(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit and each behaviour's attention weight (batch, seq_len): DIN's own explanation of a score."""
        if not isinstance(self.pooling, AttentionPooling):
            raise ValueError(f"the {self.config.variant} model pools its behaviours without attention: it has no weights to explain")
        x = dict(zip(self.schema.names, tensors, strict=True))
        query = self.candidate(x)
        keys, mask = self.behaviours(x)
        weights = self.pooling.weights(query, keys, mask)
        return self.head(x, query, pooled(weights, keys)), weights

    def probability(self, logit: torch.Tensor) -> torch.Tensor:
        """The click probability served for a logit: through the fitted calibration (a plain sigmoid before it)."""
        return self.calibration(logit)

    def candidate(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The query of attention: the candidate's embeddings of the features the behaviours share, (batch, E)."""
        return torch.cat([self.embeddings[table_key(c)](x[c]) for c in self.candidates], dim=-1)

    def behaviours(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys of attention (batch, seq_len, E), each with its recency where the model has it, through the
        encoder where there is one, and their mask."""
        keys = torch.cat([self.embeddings[table_key(s.shares)](x[s.name]) for s in self.schema.sequences], dim=-1)
        mask = x[self.sequences[0]] != 0  # built from the IDs, never from a Python-side length
        if self.recency is not None:
            keys = self.recency(keys, mask)
        if self.encoder is not None:
            keys = self.encoder(keys, mask)
        return keys, mask

    def head(self, x: dict[str, torch.Tensor], query: torch.Tensor, interest: torch.Tensor) -> torch.Tensor:
        """The final MLP over context embeddings, candidate, pooled interest and numeric values: the logit."""
        parts = [self.embeddings[table_key(c)](x[c]) for c in self.context] + [query, interest]
        if self.numerics:
            parts.append(torch.stack([x[n] for n in self.numerics], dim=-1))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


def in_form(din: DIN, form: str) -> DIN:
    """An evaluation-mode copy of a DIN whose attention unit computes in `form`: "folded" (how it trains and the
    default export) or "plain" (the literal [q, k, q-k, q*k] of the paper, the reference parity checks use).
    The weights are shared in meaning, not re-derived: both forms read the same parameters."""
    if form not in FORMS:
        raise ValueError(f"graph must be one of {FORMS}, not {form!r}")
    copy_ = copy.deepcopy(din).eval()
    if isinstance(copy_.pooling, AttentionPooling):
        copy_.pooling.form = form
    return copy_


class ProbabilityModel(nn.Module):
    """The exported form: DIN's logit through its calibration, the served probability."""

    def __init__(self, din: DIN) -> None:
        super().__init__()
        self.din = din

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.din.probability(self.din(*tensors))


class ExplainedModel(nn.Module):
    """explain.onnx: the served probability and each behaviour's attention weight."""

    def __init__(self, din: DIN) -> None:
        super().__init__()
        self.din = din

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, weights = self.din.explained(*tensors)
        return self.din.probability(logit), weights

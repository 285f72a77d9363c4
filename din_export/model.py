"""Deep Interest Network (Zhou et al., KDD 2018), readable top to bottom.

Inputs arrive positionally in the order of the manifest's encoding section (the ONNX input order):
categorical IDs (batch,), numeric values (batch,), behaviour sequences (batch, seq_len). Every sequence
shares the embedding table of one categorical feature; those shared categoricals form the candidate
(the query of attention) and the sequences form the behaviours (its keys). Index 0 is padding.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from din_runtime.encoding import Vocabulary

from .layers import ACTIVATIONS, FORMS, AttentionPooling, MeanPooling, SelfAttentionEncoder, SumPooling, mlp

VARIANTS = ("din", "base", "din-seq")
BASE_POOLINGS = ("mean", "sum")


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters. `variant`: din (target attention over the behaviours), base (the paper's BaseModel:
    mean or sum pooling), din-seq (a Transformer encoder over the behaviours, then target attention)."""

    variant: str = "din"
    embedding_dim: int = 16
    attention_hidden: tuple[int, ...] = (80, 40)
    attention_activation: str = "sigmoid"
    attention_weighting: str = "raw"
    mlp_hidden: tuple[int, ...] = (200, 80)
    mlp_activation: str = "dice"  # chosen by benchmarks/recipe_search.py (README, "Training recipe")
    embedding_init_std: float = 0.2
    dropout: float = 0.0
    batch_norm: bool = False
    base_pooling: str = "mean"
    encoder_heads: int = 2
    encoder_layers: int = 1

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        for name in (self.attention_activation, self.mlp_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {ACTIVATIONS}, not {name!r}")
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be positive")
        if self.base_pooling not in BASE_POOLINGS:
            raise ValueError(f"base_pooling must be one of {BASE_POOLINGS}, not {self.base_pooling!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class ModelInputs:
    """What the model needs to know of the features: names in input order, kinds, vocabulary sizes, sharing."""

    names: tuple[str, ...]
    kinds: dict[str, str]
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    shares: dict[str, str] = field(default_factory=dict)
    max_lens: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_encoding(cls, encoding: list[dict[str, Any]]) -> ModelInputs:
        return cls(
            names=tuple(f["name"] for f in encoding),
            kinds={f["name"]: f["kind"] for f in encoding},
            vocab_sizes={f["name"]: Vocabulary.from_manifest(f).size for f in encoding if f["kind"] == "categorical"},
            shares={f["name"]: f["shares"] for f in encoding if f["kind"] == "sequence"},
            max_lens={f["name"]: int(f["max_len"]) for f in encoding if f["kind"] == "sequence"},
        )

    def of_kind(self, kind: str) -> list[str]:
        return [n for n in self.names if self.kinds[n] == kind]


class DIN(nn.Module):
    """Returns the click logit; ProbabilityModel adds the sigmoid for export."""

    def __init__(self, inputs: ModelInputs, config: ModelConfig) -> None:
        super().__init__()
        self.inputs = inputs
        self.config = config
        self.sequences = inputs.of_kind("sequence")
        self.candidates = [inputs.shares[s] for s in self.sequences]
        self.context = [c for c in inputs.of_kind("categorical") if c not in self.candidates]
        self.numerics = inputs.of_kind("numeric")

        dim = config.embedding_dim
        self.embeddings = nn.ModuleDict({
            name: nn.Embedding(size, dim, padding_idx=0) for name, size in inputs.vocab_sizes.items()
        })
        for table in self.embeddings.values():
            # Small initial embeddings: torch's N(0, 1) makes q*k and the raw-weighted sum of up to max_len
            # behaviours large at the start, and training then often never finds the attention signal.
            nn.init.normal_(table.weight, std=config.embedding_init_std)
            with torch.no_grad():
                table.weight[0].zero_()
        behaviour_dim = dim * len(self.sequences)
        self.encoder = None
        if config.variant == "din-seq":
            self.encoder = SelfAttentionEncoder(behaviour_dim, max(inputs.max_lens.values()), config.encoder_heads,
                                                config.encoder_layers, config.dropout)
        if config.variant == "base":
            self.pooling: nn.Module = MeanPooling() if config.base_pooling == "mean" else SumPooling()
        else:
            self.pooling = AttentionPooling(behaviour_dim, config.attention_hidden, config.attention_activation, config.attention_weighting)
        mlp_in = dim * len(self.context) + 2 * behaviour_dim + len(self.numerics)
        self.mlp = mlp(mlp_in, config.mlp_hidden, config.mlp_activation, config.dropout, config.batch_norm)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        x = dict(zip(self.inputs.names, tensors, strict=True))
        query = self.candidate(x)
        keys, mask = self.behaviours(x)
        return self.head(x, query, self.pooling(query, keys, mask))

    def candidate(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The query of attention: the candidate's embeddings of the features the behaviours share, (batch, E)."""
        return torch.cat([self.embeddings[c](x[c]) for c in self.candidates], dim=-1)

    def behaviours(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys of attention (batch, seq_len, E), through the encoder where there is one, and their mask."""
        keys = torch.cat([self.embeddings[self.inputs.shares[s]](x[s]) for s in self.sequences], dim=-1)
        mask = x[self.sequences[0]] != 0  # built from the IDs, never from a Python-side length
        if self.encoder is not None:
            keys = self.encoder(keys, mask)
        return keys, mask

    def head(self, x: dict[str, torch.Tensor], query: torch.Tensor, interest: torch.Tensor) -> torch.Tensor:
        """The final MLP over context embeddings, candidate, pooled interest and numeric values: the logit."""
        parts = [self.embeddings[c](x[c]) for c in self.context] + [query, interest]
        if self.numerics:
            parts.append(torch.stack([x[n] for n in self.numerics], dim=-1))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


GRAPHS = FORMS


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
    """The exported form: DIN's logit through a sigmoid."""

    def __init__(self, din: DIN) -> None:
        super().__init__()
        self.din = din

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.din(*tensors))

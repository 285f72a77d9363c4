"""What every model of the family shares: the embedding tables, the candidate (the query of attention), the
behaviours (their keys, with recency), the final MLP and the calibrated probability. A model of its own file
(din.py, dien.py, bst.py) says only how the behaviours become the user's interest for a candidate.

Inputs arrive positionally in the order of the fitted feature schema (the ONNX input order): categorical IDs
(batch,), numeric values (batch,), behaviour sequences (batch, seq_len), histories padded at the end. Every
sequence shares the embedding table of one categorical feature; those shared categoricals form the candidate and
the sequences form the behaviours. Index 0 is padding.
"""

from __future__ import annotations

import copy
import keyword

import torch
from torch import nn

from din_runtime.schema import FeatureSchema

from ..config import FORMS, ModelConfig
from .calibration import Calibration
from .layers import AgeRecency, AttentionPooling, Recency, mlp

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


class BehaviourModel(nn.Module):
    """Returns the click logit; ProbabilityModel adds the calibrated sigmoid for export. A subclass builds its own
    parts, then calls `build_head` with the width of the interest it computes, and defines `interest_and_weights`."""

    explains = True  # whether the model has one weight per behaviour to explain a score with (explain.onnx)

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
        self.behaviour_dim = dim * len(self.sequences)
        self.recency = Recency(self.behaviour_dim) if config.recency == "position" else None
        # where the spec gives the behaviours' times, each behaviour's age too (the input is its ages, batch x seq_len)
        self.times = schema.times[0].name if schema.times else None
        self.age_recency = AgeRecency(self.behaviour_dim) if self.times is not None else None
        # logit -> served probability (downsampling correction, post-hoc calibration): fitted after training,
        # held in the manifest, never in the state dict (calibration.py)
        self.calibration = Calibration()

    def build_head(self, interest_width: int) -> None:
        """The final MLP over context embeddings, candidate, interest and numeric values."""
        config = self.config
        width = config.embedding_dim * len(self.context) + self.behaviour_dim + interest_width + len(self.numerics)
        self.mlp = mlp(width, config.mlp_hidden, config.mlp_activation, config.dropout, config.batch_norm)

    def tables(self) -> list[tuple[str, nn.Embedding]]:
        """(categorical feature, its embedding table) in schema order."""
        return [(c.name, self.embeddings[table_key(c.name)]) for c in self.schema.categoricals]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        x = dict(zip(self.schema.names, tensors, strict=True))
        query = self.candidate(x)
        keys, mask = self.behaviours(x)
        return self.head(x, query, self.interest(query, keys, mask))

    def explained(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit and each behaviour's weight (batch, seq_len): the model's own explanation of a score."""
        x = dict(zip(self.schema.names, tensors, strict=True))
        query = self.candidate(x)
        keys, mask = self.behaviours(x)
        interest, weights = self.interest_and_weights(query, keys, mask)
        return self.head(x, query, interest), weights

    def probability(self, logit: torch.Tensor) -> torch.Tensor:
        """The click probability served for a logit: through the fitted calibration (a plain sigmoid before it)."""
        return self.calibration(logit)

    def candidate(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The query of attention: the candidate's embeddings of the features the behaviours share, (batch, E)."""
        return torch.cat([self.embeddings[table_key(c)](x[c]) for c in self.candidates], dim=-1)

    def embedded(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The behaviours' embeddings (batch, seq_len, E) and their mask, built from the IDs (never from a
        Python-side length)."""
        keys = torch.cat([self.embeddings[table_key(s.shares)](x[s.name]) for s in self.schema.sequences], dim=-1)
        return keys, x[self.sequences[0]] != 0

    def with_recency(self, keys: torch.Tensor, mask: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The keys with each behaviour's recency embeddings added, where the model has them: its place back from
        the most recent, its age."""
        if self.recency is not None:
            keys = self.recency(keys, mask)
        if self.age_recency is not None:
            keys = self.age_recency(keys, mask, x[self.times])
        return keys

    def behaviours(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys the interest is computed from (batch, seq_len, E), and their mask. For a ranking feed (one
        history, many candidates) this runs once, on the one history."""
        keys, mask = self.embedded(x)
        return self.with_recency(keys, mask, x), mask

    def interest(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The user's interest for each candidate, (batch, interest width)."""
        return self.interest_and_weights(query, keys, mask)[0]

    def interest_and_weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def one_history_interest(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Many candidates (N, E) against one history, keys (T, E) and mask (T,): the ranking form. By default
        the history is repeated per candidate; a model with a cheaper form overrides this."""
        rows = query.shape[0]
        return self.interest(query, keys.unsqueeze(0).expand(rows, -1, -1), mask.unsqueeze(0).expand(rows, -1))

    def auxiliary_loss(self) -> torch.Tensor | None:
        """A training-only loss term of the last training forward pass, weighted (DIEN's), or None."""
        return None

    def head(self, x: dict[str, torch.Tensor], query: torch.Tensor, interest: torch.Tensor) -> torch.Tensor:
        """The final MLP over context embeddings, candidate, interest and numeric values: the logit."""
        parts = [self.embeddings[table_key(c)](x[c]) for c in self.context] + [query, interest]
        if self.numerics:
            parts.append(torch.stack([x[n] for n in self.numerics], dim=-1))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


def in_form(model: BehaviourModel, form: str) -> BehaviourModel:
    """An evaluation-mode copy whose attention units compute in `form`: "folded" (how they train and the default
    export) or "plain" (the literal [q, k, q-k, q*k] of the paper, the reference parity checks use). Both forms
    read the same parameters."""
    if form not in FORMS:
        raise ValueError(f"graph must be one of {FORMS}, not {form!r}")
    copy_ = copy.deepcopy(model).eval()
    for module in copy_.modules():
        if isinstance(module, AttentionPooling):
            module.form = form
    return copy_


class ProbabilityModel(nn.Module):
    """The exported form: the model's logit through its calibration, the served probability."""

    def __init__(self, model: BehaviourModel) -> None:
        super().__init__()
        self.din = model

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.din.probability(self.din(*tensors))


class ExplainedModel(nn.Module):
    """explain.onnx: the served probability and each behaviour's weight."""

    def __init__(self, model: BehaviourModel) -> None:
        super().__init__()
        self.din = model

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, weights = self.din.explained(*tensors)
        return self.din.probability(logit), weights

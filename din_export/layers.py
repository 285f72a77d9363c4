"""Building blocks of DIN, kept apart from the model that wires them: activations, MLPs and history pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = ("prelu", "dice", "sigmoid", "relu")
WEIGHTINGS = ("raw", "softmax")
MASKED_SCORE = -1e9  # finite fill for softmax weighting: -inf would turn an all-padding row into NaN


class PReLU(nn.Module):
    """PReLU with one slope per unit on the last axis (torch's PReLU puts channels on axis 1)."""

    def __init__(self, features: int, init: float = 0.25) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((features,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, self.alpha * x)


class Dice(nn.Module):
    """Dice (DIN paper, eq. 9): a PReLU whose switch point follows the data's mean and variance.

    Training uses batch statistics, inference the running ones, so the exported graph is the inference form.
    """

    def __init__(self, features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(features, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.norm(x.reshape(-1, x.shape[-1]))).reshape(x.shape)
        return gate * x + (1 - gate) * self.alpha * x


def activation(name: str, features: int) -> nn.Module:
    if name == "prelu":
        return PReLU(features)
    if name == "dice":
        return Dice(features)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, not {name!r}")


def mlp(in_features: int, hidden: Sequence[int], activation_name: str) -> nn.Sequential:
    """Linear + activation per hidden size, then one linear output unit."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_features, size), activation(activation_name, size)]
        in_features = size
    layers.append(nn.Linear(in_features, 1))
    return nn.Sequential(*layers)


class AttentionPooling(nn.Module):
    """DIN's local activation unit: score each behaviour against the candidate from [q, k, q-k, q*k], then sum
    the behaviours weighted by their scores. Raw weights (the paper's choice) keep the intensity of interest;
    softmax is an option. Padding positions get weight zero either way."""

    def __init__(self, dim: int, hidden: Sequence[int], activation_name: str, weighting: str = "raw") -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"attention weighting must be one of {WEIGHTINGS}, not {weighting!r}")
        self.weighting = weighting
        self.score = mlp(4 * dim, hidden, activation_name)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query = query.unsqueeze(1).expand_as(keys)
        scores = self.score(torch.cat([query, keys, query - keys, query * keys], dim=-1)).squeeze(-1)
        if self.weighting == "softmax":
            scores = torch.softmax(scores.masked_fill(~mask, MASKED_SCORE), dim=1)
        weights = scores * mask.to(scores.dtype)
        return (weights.unsqueeze(-1) * keys).sum(dim=1)


class MeanPooling(nn.Module):
    """The paper's BaseModel pooling: the plain mean of the behaviours, blind to the candidate."""

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(keys.dtype)
        count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        return (weights.unsqueeze(-1) * keys).sum(dim=1) / count

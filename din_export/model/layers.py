"""Building blocks of DIN, kept apart from the model that wires them: activations, MLPs and history pooling."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from ..config import ACTIVATIONS, FORMS, WEIGHTINGS

Step = Callable[..., torch.Tensor]  # (state (batch, H), the step's slices of the inputs) -> the next state

MASKED_SCORE = -1e9  # finite fill for softmax weighting: -inf would turn an all-padding row into NaN
RECENCY_BUCKETS = 16  # log2 buckets of a behaviour's distance back: 0, 1-2, 3-6, 7-14, ..., 32,767 and beyond
AGE_BUCKETS = 40  # log2 buckets of a behaviour's age: below 1 unit, [1, 2), [2, 4), ..., 2^38 units and beyond (8,700 years of seconds)


class PReLU(nn.Module):
    """PReLU with one slope per unit on the last axis (torch's PReLU puts channels on axis 1, so the input is seen
    as 2-D). torch's fused kernel trains about twice as fast as a `where` over the same values."""

    def __init__(self, features: int, init: float = 0.25) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((features,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.prelu(x.reshape(-1, x.shape[-1]), self.alpha).reshape(x.shape)


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


def mlp(in_features: int, hidden: Sequence[int], activation_name: str, dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """Linear (+ batch norm) + activation (+ dropout) per hidden size, then one linear output unit."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers.append(nn.Linear(in_features, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(activation(activation_name, size))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = size
    layers.append(nn.Linear(in_features, 1))
    return nn.Sequential(*layers)




def pooled(weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The behaviours (batch, seq_len, E) summed by their weights (batch, seq_len): the user's interest (batch, E)."""
    return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)


class AttentionPooling(nn.Module):
    """DIN's local activation unit: score each behaviour against the candidate from [q, k, q-k, q*k], then sum
    the behaviours weighted by their scores. Raw weights (the paper's choice) keep the intensity of interest;
    softmax is an option. Padding positions get weight zero either way.

    The unit's first layer is linear in [q, k, q-k, q*k]:
        W [q; k; q-k; q*k] + b = (Wq + Wd) q + b  +  k ((Wk - Wd) + diag(q) Wp)
    so the folded form (the default, used in training and in the exported graph alike) computes the candidate
    term once per row and the rest as one batched product of the behaviours with a per-row (E+1) x H matrix: a
    behaviour costs (E+1) x H multiply-adds instead of 4E x H and the 4E-wide concatenation is never built. The
    plain form computes the literal concatenation; both read the same parameters, so a checkpoint is the same
    whichever form trained it, and gradients agree to float rounding (tested). (A lookup table of k (Wk - Wd)
    per vocabulary entry would save nothing more: the q*k term needs the same product with k.)
    """

    def __init__(self, dim: int, hidden: Sequence[int], activation_name: str, weighting: str = "raw", form: str = "folded") -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"attention weighting must be one of {WEIGHTINGS}, not {weighting!r}")
        if form not in FORMS:
            raise ValueError(f"attention form must be one of {FORMS}, not {form!r}")
        self.weighting = weighting
        self.form = form
        self.score = mlp(4 * dim, hidden, activation_name)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pooled(self.weights(query, keys, mask), keys)

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each behaviour's weight in the pooled interest, (batch, seq_len), zero at padding: what `explain` serves."""
        scores = self._folded_scores(query, keys, mask) if self.form == "folded" else self._plain_scores(query, keys)
        if self.weighting == "softmax":
            scores = torch.softmax(scores.masked_fill(~mask, MASKED_SCORE), dim=1)
        return scores * mask.to(scores.dtype)

    def _plain_scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        query = query.unsqueeze(1).expand_as(keys)
        return self.score(torch.cat([query, keys, query - keys, query * keys], dim=-1)).squeeze(-1)

    def _folded_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query, key, product) weights, each E x H, and the bias of the first layer in the folded form."""
        first: nn.Linear = self.score[0]
        dim = first.in_features // 4
        wq, wk, wd, wp = (first.weight[:, i * dim:(i + 1) * dim].t() for i in range(4))  # slices fold to constants in export
        return wq + wd, wk - wd, wp, first.bias

    def _rest(self, hidden: torch.Tensor) -> torch.Tensor:
        """The unit's layers after the first, on (rows, H) hidden values: one score per row."""
        for layer in list(self.score)[1:]:
            hidden = layer(hidden)
        return hidden

    def _folded_scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = keys.shape
        query_weight, key_weight, product_weight, bias = self._folded_weights()
        per_row = (query @ query_weight + bias).unsqueeze(1)
        key_matrix = torch.cat([key_weight + query.unsqueeze(-1) * product_weight, per_row], dim=1)
        # A column of ones carries the per-row term inside the product: no broadcast add over (batch, steps, H).
        # Padded positions (k = 0) get exactly the plain form's hidden values, so batch statistics (Dice) agree too.
        hidden = torch.bmm(torch.cat([keys, torch.ones_like(keys[..., :1])], dim=-1), key_matrix)
        return self._rest(hidden.reshape(batch * steps, -1)).reshape(batch, steps)

    def one_history(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Many candidates (N, E) against one history, keys (T, E) and mask (T,): the ranking form, pooled (N, E)."""
        return self.one_history_weights(query, keys, mask) @ keys

    def one_history_weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each candidate's weight (N, T) of each behaviour of one history, zero at padding.

        With the history fixed, the first layer is one matrix product of [q] with a per-history table built once:
            table[e, t] = k_t[e] Wp[e] + Wq'[e]   and the row   k_t Wk' + b,
        so hidden = q @ table + row, shape (N, T x H), a single large GEMM instead of N small ones.
        """
        query_weight, key_weight, product_weight, bias = self._folded_weights()
        candidates, steps, hidden_size = query.shape[0], keys.shape[0], bias.shape[0]
        table = keys.t().unsqueeze(-1) * product_weight.unsqueeze(1) + query_weight.unsqueeze(1)
        row = (keys @ key_weight + bias).unsqueeze(0)
        # A column of ones carries the row term inside the product: a broadcast bias over (N, T x H) costs more.
        hidden = torch.cat([query, torch.ones_like(query[:, :1])], dim=1) @ torch.cat([table, row]).reshape(keys.shape[1] + 1, -1)
        scores = self._rest(hidden.reshape(candidates * steps, hidden_size)).reshape(candidates, steps)
        if self.weighting == "softmax":
            scores = torch.softmax(scores.masked_fill(~mask.unsqueeze(0), MASKED_SCORE), dim=1)
        return scores * mask.to(scores.dtype)


class CandidateBlindPooling(nn.Module):
    """A pooling that ignores the candidate: for one history it is computed once and shared by every candidate."""

    def one_history(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query (candidates, E) against one history: keys (seq_len, E), mask (seq_len,)."""
        return self(query[:1], keys.unsqueeze(0), mask.unsqueeze(0)).expand(query.shape[0], -1)


class MeanPooling(CandidateBlindPooling):
    """The paper's BaseModel pooling: the plain mean of the behaviours, blind to the candidate."""

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(keys.dtype)
        count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        return (weights.unsqueeze(-1) * keys).sum(dim=1) / count


class SumPooling(CandidateBlindPooling):
    """The other BaseModel pooling: the sum of the behaviours, which keeps how many there were."""

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (mask.to(keys.dtype).unsqueeze(-1) * keys).sum(dim=1)


class Recency(nn.Module):
    """When a behaviour happened relative to the others: its distance back from the user's most recent behaviour
    (0 for the latest), in log2 buckets (bucket b holds distances 2^b - 1 .. 2^(b+1) - 2), as an embedding added to
    its key, so the attention unit scores it with its place in the history and the pooled interest carries it.
    Distances come from the mask (the history's length), never from a Python-side number, and buckets from integer
    comparisons with the bucket bounds, so the exported graph buckets exactly as training does."""

    def __init__(self, dim: int, buckets: int = RECENCY_BUCKETS, init_std: float = 0.02) -> None:
        super().__init__()
        self.table = nn.Embedding(buckets, dim)
        nn.init.normal_(self.table.weight, std=init_std)
        self.register_buffer("bounds", torch.tensor([2**b - 1 for b in range(1, buckets)], dtype=torch.long), persistent=False)

    def buckets(self, mask: torch.Tensor) -> torch.Tensor:
        """Each position's bucket (batch, seq_len); padded positions get 0 (they are masked anyway)."""
        lengths = mask.sum(dim=1, keepdim=True)
        steps = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
        back = (lengths - 1 - steps).clamp(min=0)
        return (back.unsqueeze(-1) >= self.bounds).sum(dim=-1)

    def forward(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return keys + self.table(self.buckets(mask)) * mask.unsqueeze(-1).to(keys.dtype)


class AgeRecency(nn.Module):
    """When a behaviour happened in time: its age at the row's time (row time minus behaviour time, in whole units
    of the log's time, int64), in log2 buckets (bucket 0 below 1 unit, bucket b from 2^(b-1) up to 2^b units; the
    last open-ended), as an embedding added to its key. Buckets come from integer comparisons in the graph, so
    serving buckets exactly as training does, at any precision of the rest of the graph."""

    def __init__(self, dim: int, buckets: int = AGE_BUCKETS, init_std: float = 0.02) -> None:
        super().__init__()
        self.table = nn.Embedding(buckets, dim)
        nn.init.normal_(self.table.weight, std=init_std)
        self.register_buffer("bounds", torch.tensor([2**b for b in range(buckets - 1)], dtype=torch.long), persistent=False)

    def buckets(self, ages: torch.Tensor) -> torch.Tensor:
        """Each age's bucket (batch, seq_len)."""
        return (ages.unsqueeze(-1) >= self.bounds).sum(dim=-1)

    def forward(self, keys: torch.Tensor, mask: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        return keys + self.table(self.buckets(ages)) * mask.unsqueeze(-1).to(keys.dtype)


class SelfAttentionEncoder(nn.Module):
    """A Transformer encoder over the behaviours (in the manner of BST), so each behaviour is seen in the context
    of the others before target attention. Positions count back from the most recent behaviour. Attention is
    written out rather than taken from nn.TransformerEncoder: padded keys get a finite fill, so an all-padding
    history stays finite, and the graph exports to ONNX with a dynamic sequence length."""

    def __init__(self, dim: int, max_len: int, heads: int = 2, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"behaviour width {dim} is not divisible by {heads} attention heads")
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, dropout) for _ in range(layers))

    def forward(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1, keepdim=True)
        steps = torch.arange(keys.shape[1], device=keys.device).unsqueeze(0)
        back = (lengths - 1 - steps).clamp(min=0, max=self.positions.num_embeddings - 1)
        x = keys + self.positions(back) * mask.unsqueeze(-1).to(keys.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x * mask.unsqueeze(-1).to(x.dtype)


class EncoderBlock(nn.Module):
    """One Transformer layer (multi-head self-attention, then a feed-forward layer, each with a residual and
    layer norm, post-norm as in BST); padded keys get a finite fill."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attended(x, mask)[0]

    def attended(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's output and its attention (batch, heads, steps, steps): row i is how position i attended."""
        batch, steps, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, steps, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)
        attention = torch.softmax(scores.masked_fill(~mask[:, None, None, :], MASKED_SCORE), dim=-1)
        attended = (attention @ v).transpose(1, 2).reshape(batch, steps, dim)
        x = self.norm1(x + self.dropout(self.out(attended)))
        return self.norm2(x + self.dropout(self.feed_forward(x))), attention


def run_steps(step: Step, initial: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A recurrence over the sequence axis (axis 1) of `inputs`: (the last state, every step's state (batch, T, H)).

    Exported, it is torch's `scan`, which becomes one ONNX Scan whose length follows the input's (torch.export
    cannot trace a Python loop over a dynamic length). In eager PyTorch it is a plain loop: scan's eager form ran
    a GRU-sized step's forward and backward six times slower here. The step is the same function in both, so the
    parity check compares the two drivers."""
    if torch.compiler.is_exporting():
        def carried(state: torch.Tensor, *slices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            following = step(state, *slices)
            return following, following.clone()  # scan may not return one tensor as both carry and output
        last, states = scan(lambda state, xs: carried(state, *xs), initial, tuple(i.transpose(0, 1) for i in inputs))
        return last, states.transpose(0, 1)
    state, states = initial, []
    for position in range(inputs[0].shape[1]):
        state = step(state, *(i[:, position] for i in inputs))
        states.append(state)
    return state, torch.stack(states, dim=1) if states else initial.unsqueeze(1)[:, :0]

"""The ranking graph: many candidates scored against one user's history, the history's work done once.

Serving DIN means scoring hundreds or thousands of candidate items for one user per request. Through the batch
graph each candidate carries its own copy of the history; this graph takes the history once, shape
(1, seq_len), and every other input per candidate, shape (candidates,). The behaviours are embedded (and
encoded, for din-seq) once, and the attention unit's first layer becomes one large matrix product with a table
built from the history (AttentionPooling.one_history). Its probabilities equal the batch graph's on the
replicated rows, which the export checks against PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from din_runtime.manifest import RANKING_FILE, sha256_of

from .export import (
    ABSOLUTE_TOLERANCE,
    EXAMPLE_BATCH,
    EXAMPLE_SEQUENCE,
    OUTPUT_NAME,
    SEQUENCE_DIM,
    ExportError,
    check_case,
    check_structure,
    describe_io,
    parity_grid,
    random_feed,
    write_onnx,
)
from .model import DIN, ModelInputs, ProbabilityModel, in_form

CANDIDATE_DIM = "candidates"


class RankingModel(nn.Module):
    """DIN's probabilities for N candidates (every non-sequence input of shape (N,)) and one history (1, T)."""

    def __init__(self, din: DIN) -> None:
        super().__init__()
        self.din = in_form(din, "folded")

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        din = self.din
        x = dict(zip(din.inputs.names, tensors, strict=True))
        query = din.candidate(x)
        keys, mask = din.behaviours(x)
        interest = din.pooling.one_history(query, keys[0], mask[0])
        return torch.sigmoid(din.head(x, query, interest))


def one_history(feed: dict[str, np.ndarray], inputs: ModelInputs, row: int) -> dict[str, np.ndarray]:
    """A ranking feed from a batch feed: every row a candidate, the histories of `row` the one history."""
    return {n: feed[n][row:row + 1] if inputs.kinds[n] == "sequence" else feed[n] for n in inputs.names}


def replicated(feed: dict[str, np.ndarray], inputs: ModelInputs) -> dict[str, np.ndarray]:
    """The batch feed a ranking feed stands for: the one history repeated for every candidate."""
    candidates = len(feed[inputs.of_kind("categorical")[0]])  # there is one at least: the one the behaviours share
    return {n: np.repeat(feed[n], candidates, axis=0) if inputs.kinds[n] == "sequence" else feed[n] for n in inputs.names}


def export_ranking(din: DIN, path: Path) -> None:
    """Write rank.onnx: symbolic `candidates` and `seq_len`, the history's batch dimension fixed at 1."""
    inputs = din.inputs
    feed = random_feed(inputs, EXAMPLE_BATCH, EXAMPLE_SEQUENCE, np.random.default_rng(0))
    example = one_history(feed, inputs, EXAMPLE_BATCH - 1)  # random_feed's last row is full length
    candidates = torch.export.Dim(CANDIDATE_DIM, min=1)
    sequence = torch.export.Dim(SEQUENCE_DIM, min=1)
    write_onnx(RankingModel(din), example, {n: {1: sequence} if inputs.kinds[n] == "sequence" else {0: candidates} for n in inputs.names}, path)
    check_structure(path, {n: [1, SEQUENCE_DIM] if inputs.kinds[n] == "sequence" else [CANDIDATE_DIM] for n in inputs.names}, [CANDIDATE_DIM])


def compare_ranking_with_pytorch(din: DIN, session: ort.InferenceSession, grid: list[tuple[int, int]], atol: float,
                                 error: type[ExportError] = ExportError) -> dict[str, Any]:
    """The ranking graph against the plain PyTorch model on the replicated rows, for an empty and a full history at
    each (candidates, length) of the grid, with an out-of-vocabulary candidate; raises `error` past the tolerance."""
    wrapper = ProbabilityModel(in_form(din, "plain")).eval()
    rng = np.random.default_rng(2)
    worst = 0.0
    for candidates, sequence in grid:
        feed = random_feed(din.inputs, candidates, sequence, rng)
        for row in sorted({0, candidates - 1}):
            ranking_feed = one_history(feed, din.inputs, row)
            (onnx_out,) = session.run([OUTPUT_NAME], ranking_feed)
            case = f"ranking {candidates} candidates, length {sequence} (PyTorch on the replicated rows)"
            worst = max(worst, check_case(wrapper, din.inputs, replicated(ranking_feed, din.inputs), onnx_out, case, atol, error))
    return {"atol": atol, "max_abs_diff": worst, "cases": [list(c) for c in grid], "empty_history": True, "oov_candidate": True}


def verify_ranking_parity(din: DIN, path: Path, max_len: int, atol: float = ABSOLUTE_TOLERANCE) -> dict[str, Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return compare_ranking_with_pytorch(din, session, parity_grid(max_len), atol)


def ranking_section(path: Path, parity: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `ranking` entry for a verified rank.onnx."""
    return {"file": RANKING_FILE, "sha256": sha256_of(path), **describe_io(onnx.load(str(path))), "parity": parity}

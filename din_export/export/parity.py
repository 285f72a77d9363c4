"""The one parity check: an exported graph run by ONNX Runtime against the plain PyTorch model (the paper's
literal [q, k, q-k, q*k], the source of truth whatever form was exported) over a grid of shapes. Export,
re-export and `verify` all call it, through the graph's contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from din_runtime.providers import cpu_session

from ..model.base import BehaviourModel, in_form
from .errors import ExportError
from .graphs import GraphContract, random_feed

EXPORT_BATCHES = (1, 2, 5, 257)
VERIFY_BATCHES = (1, 2, 1000)


def shape_grid(max_len: int, batches: tuple[int, ...] = EXPORT_BATCHES) -> list[tuple[int, int]]:
    """(rows, history length) pairs unlike the export example: single rows, length 1 and 2, half, full and three
    times max_len (a history longer than training's, as a client may send to a graph directly); every feed's first
    row has length 0 (all padding)."""
    return [(rows, length) for rows in batches for length in sorted({1, 2, max(1, max_len // 2), max_len, 3 * max_len})]


def check_parity(din: BehaviourModel, session: ort.InferenceSession, contract: GraphContract, grid: list[tuple[int, int]], atol: float,
                 error: type[ExportError] = ExportError) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on every case of the contract over `grid`, each random feed with an all-padding
    first row and an out-of-vocabulary last row, every output of the graph; raises `error` on a wrong shape, a
    non-finite value or a difference past `atol`, else returns the manifest's parity record."""
    reference = contract.reference(in_form(din, "plain")).eval()
    rng = np.random.default_rng(1)
    worst = 0.0
    for rows, length in grid:
        for graph_feed, torch_feed in contract.cases(random_feed(din.schema, rows, length, rng), din.schema):
            onnx_outputs = session.run(list(contract.outputs), graph_feed)
            with torch.inference_mode():
                torch_outputs = reference(*(torch.from_numpy(torch_feed[n]) for n in din.schema.names))
            torch_outputs = torch_outputs if isinstance(torch_outputs, tuple) else (torch_outputs,)
            for name, onnx_out, torch_out in zip(contract.outputs, onnx_outputs, torch_outputs, strict=True):
                case = f"{contract.file} {name}: {rows} rows, history length {length}"
                torch_out = torch_out.numpy()
                if onnx_out.shape != torch_out.shape or not np.all(np.isfinite(onnx_out)):
                    raise error(f"{case}: ONNX Runtime gave shape {onnx_out.shape} or non-finite values")
                difference = float(np.max(np.abs(onnx_out.astype(np.float64) - torch_out), initial=0.0))
                if difference > atol:
                    raise error(f"{case}: ONNX Runtime and PyTorch differ by {difference:.3g} > {atol}")
                worst = max(worst, difference)
    return {"atol": atol, "max_abs_diff": worst, "cases": [list(c) for c in grid], "all_padding_row": True, "oov_row": True}


def verify_file(din: BehaviourModel, path: Path, contract: GraphContract, atol: float, batches: tuple[int, ...] = EXPORT_BATCHES,
                error: type[ExportError] = ExportError) -> dict[str, Any]:
    """check_parity on a file, in a CPU session of its own."""
    return check_parity(din, cpu_session(path), contract, shape_grid(din.schema.max_len, batches), atol, error)


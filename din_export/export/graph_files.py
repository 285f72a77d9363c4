"""Both graphs of a model exported into a bundle folder, each checked against PyTorch: what train-and-export
and `din-export export` write."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model.base import BehaviourModel
from ..phases import Phases
from .graphs import BATCH, CONTRACTS, EXPLAIN, RANKING, TOLERANCE, GraphContract, derive_batch_graph, export_graph, graph_section
from .parity import verify_file


def export_verified(din: BehaviourModel, folder: Path, form: str = "folded", phases: Phases | None = None, precision: str = "fp32",
                    optimization: str | None = None,
                    finish: Callable[[Path, GraphContract], None] | None = None) -> dict[str, dict[str, Any] | None]:
    """Write model.onnx, rank.onnx and (for a model with attention) explain.onnx into `folder`; `finish` (precision
    conversion, offline optimisation) runs on each file before its parity check, at the precision's tolerance.
    Returns the manifest's graph sections."""
    phases = phases or Phases()
    sections: dict[str, dict[str, Any] | None] = {}
    explained = EXPLAIN.applies(din)
    for contract in CONTRACTS:
        if not contract.applies(din):
            sections[contract.section] = None  # said in the manifest: this model has no such graph
            continue
        path = folder / contract.file
        with phases.timed(f"export {contract.section}"):
            if contract is BATCH and explained:  # exported once, with the weights; model.onnx drops that output
                export_graph(din, EXPLAIN, folder / EXPLAIN.file, form)
                derive_batch_graph(folder / EXPLAIN.file, path, din.schema)
            elif contract is not EXPLAIN:
                export_graph(din, contract, path, form)
            if finish is not None:
                finish(path, contract)
        with phases.timed(f"parity {contract.section}"):
            parity = verify_file(din, path, contract, TOLERANCE[precision])
        form_used = form if contract is not RANKING else "folded"  # the ranking graph is always folded
        sections[contract.section] = graph_section(path, parity, graph=form_used, precision=precision, optimization=optimization)
    return sections

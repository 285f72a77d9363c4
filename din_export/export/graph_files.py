"""Both graphs of a model exported into a bundle folder, each checked against PyTorch: what train-and-export
and `din-export export` write."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model.din import DIN
from ..phases import Phases
from .graphs import BATCH, CONTRACTS, TOLERANCE, GraphContract, export_graph, graph_section
from .parity import verify_file


def export_verified(din: DIN, folder: Path, form: str = "folded", phases: Phases | None = None, precision: str = "fp32",
                    optimization: str | None = None,
                    finish: Callable[[Path, GraphContract], None] | None = None) -> dict[str, dict[str, Any]]:
    """Write model.onnx and rank.onnx into `folder`; `finish` (precision conversion, offline optimisation) runs
    on each file before its parity check, at the precision's tolerance. Returns the manifest's graph sections."""
    phases = phases or Phases()
    sections: dict[str, dict[str, Any]] = {}
    for contract in CONTRACTS:
        path = folder / contract.file
        with phases.timed(f"export {contract.section}"):
            export_graph(din, contract, path, form)
            if finish is not None:
                finish(path, contract)
        with phases.timed(f"parity {contract.section}"):
            parity = verify_file(din, path, contract, TOLERANCE[precision])
        form_used = form if contract is BATCH else "folded"  # the ranking graph is always folded
        sections[contract.section] = graph_section(path, parity, graph=form_used, precision=precision, optimization=optimization)
    return sections

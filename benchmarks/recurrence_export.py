"""How DIEN's interest extractor exports, measured: as an ONNX Scan of torch's GRU equations (what din-export
writes) or as ONNX's own GRU operator (what torch's exporter makes of nn.GRU). AUGRU, whose update gate attention
scales, has no ONNX operator and is always a Scan. The extractor alone (torch's GRU, 32 wide: two sequences of
embedding 16, random weights) is exported both ways with a dynamic batch and sequence axis; each file is checked
against PyTorch at lengths 1, 2, 50 and 150, then ONNX Runtime (2 threads) runs it at 1, 256 and 1,000 rows of 50
behaviours, interleaved (scan, gru, scan, gru, ...), medians.

    python benchmarks/recurrence_export.py --rounds 30
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model
from torch import nn

from din_export.export.registry import cached_registry
from din_export.model.dien import InterestExtractor
from din_runtime.providers import cpu_session

WIDTH, STEPS = 32, 50
FORMS = ("scan", "gru")


class OperatorForm(nn.Module):
    """The same weights through torch's nn.GRU as the exporter sees it: ONNX's GRU operator."""

    def __init__(self, extractor: InterestExtractor) -> None:
        super().__init__()
        self.gru = extractor.gru

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.gru(inputs)[0]


def export(module: nn.Module, path: Path) -> None:
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("seq_len", min=1)}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), cached_registry():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(3, 5, WIDTH),), str(path), dynamo=True, input_names=["x"], output_names=["states"],
                          dynamic_shapes=(dims,), verbose=False)


def parity(session, reference: nn.Module) -> str:  # noqa: ANN001 - an ONNX Runtime session
    """The largest difference from PyTorch over lengths 1, 2, 50 and 150, or why it could not run."""
    worst = 0.0
    for length in (1, 2, STEPS, 3 * STEPS):
        x = torch.randn(4, length, WIDTH)
        try:
            (states,) = session.run(None, {"x": x.numpy()})
        except Exception as error:  # noqa: BLE001 - ONNX Runtime's failure is the finding
            return f"fails at length {length}: {str(error).splitlines()[0][:80]}"
        with torch.inference_mode():
            worst = max(worst, float(np.abs(states - reference(x).numpy()).max()))
    return f"{worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    extractor = InterestExtractor(WIDTH).eval()
    modules = {"scan": extractor, "gru": OperatorForm(extractor)}
    sessions, checks = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for form, module in modules.items():
            export(module, Path(scratch) / f"{form}.onnx")
            sessions[form] = cpu_session(Path(scratch) / f"{form}.onnx")
            checks[form] = parity(sessions[form], extractor)
    feeds = {rows: np.random.default_rng(rows).standard_normal((rows, STEPS, WIDTH)).astype(np.float32) for rows in (1, 256, 1000)}
    seconds: dict[tuple[int, str], list[float]] = {(rows, form): [] for rows in feeds for form in FORMS}
    for _ in range(args.rounds):
        for rows, feed in feeds.items():
            for form in FORMS:
                started = time.perf_counter()
                sessions[form].run(None, {"x": feed})
                seconds[rows, form].append(time.perf_counter() - started)
    print(f"CPU: {cpu_model()}; the interest extractor, {WIDTH} wide, {STEPS} steps; medians of {args.rounds} interleaved rounds\n")
    print(f"parity with PyTorch (max |diff| at lengths 1, 2, 50, 150): Scan {checks['scan']}; ONNX GRU {checks['gru']}\n")
    print("| rows | Scan, ms | ONNX GRU, ms | GRU / Scan |\n|---:|---:|---:|---:|")
    for rows in feeds:
        scan, gru = (statistics.median(seconds[rows, form]) * 1e3 for form in FORMS)
        print(f"| {rows:,} | {scan:.3f} | {gru:.3f} | {gru / scan:.2f} |")


if __name__ == "__main__":
    main()

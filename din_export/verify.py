"""`din-export verify`: check any bundle from every side, in a fixed order, each failure a typed error.

Order: output names; symbolic input dimensions; output shapes; values against PyTorch over a grid of shapes
(batch 1, 2, 1000; length 1, 2, max_len; all-padding and out-of-vocabulary rows); onnx.checker's full check;
ONNX's reference evaluator, an independent consumer of the file, agreeing with ONNX Runtime; and the ranking
graph, where the bundle has one, against PyTorch on the replicated rows over the same grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.reference
import onnxruntime as ort

from din_runtime.manifest import read_manifest, verify_model_file

from .checkpoint import load_model
from .export import BATCH_DIM, OUTPUT_NAME, SEQUENCE_DIM, ExportError, compare_with_pytorch, describe_io, random_feed
from .ranking import compare_ranking_with_pytorch

VERIFY_BATCHES = (1, 2, 1000)
REFERENCE_SHAPES = ((2, 3), (1, 1))  # the reference evaluator is pure Python: small shapes only
REFERENCE_TOLERANCE = 1e-5


class VerificationError(ExportError):
    """A bundle failed verification."""


class OutputNameError(VerificationError):
    pass


class DimensionError(VerificationError):
    pass


class OutputShapeError(VerificationError):
    pass


class ParityError(VerificationError):
    pass


class CheckerError(VerificationError):
    pass


class ReferenceEvaluatorError(VerificationError):
    pass


def verify_grid(max_len: int) -> list[tuple[int, int]]:
    return [(batch, length) for batch in VERIFY_BATCHES for length in sorted({1, 2, max_len})]


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """Run every check on a bundle; returns what was checked and the largest differences seen."""
    manifest = read_manifest(bundle)
    model_path = verify_model_file(bundle, manifest)
    model = onnx.load(str(model_path))
    din = load_model(bundle)
    io = describe_io(model)

    outputs = [o["name"] for o in io["outputs"]]
    if outputs != [OUTPUT_NAME]:
        raise OutputNameError(f"outputs are {outputs}, expected ['{OUTPUT_NAME}']")
    for entry in io["inputs"]:
        expected = [BATCH_DIM, SEQUENCE_DIM] if din.inputs.kinds.get(entry["name"]) == "sequence" else [BATCH_DIM]
        if entry["dims"] != expected:
            raise DimensionError(f"input '{entry['name']}' has dimensions {entry['dims']}, expected symbolic {expected}")

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    max_len = max(din.inputs.max_lens.values())
    grid = verify_grid(max_len)
    for batch, length in grid:
        (probabilities,) = session.run([OUTPUT_NAME], random_feed(din.inputs, batch, length, np.random.default_rng(batch + length)))
        if probabilities.shape != (batch,):
            raise OutputShapeError(f"batch {batch}, length {length}: output shape {probabilities.shape}, expected ({batch},)")
    tolerance = manifest["onnx"].get("parity", {}).get("atol", 1e-5)
    parity = compare_with_pytorch(din, session, grid, tolerance, ParityError)

    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise CheckerError(f"onnx.checker rejected the model: {error}") from None

    reference = onnx.reference.ReferenceEvaluator(model)
    # Quantised graphs round differently in the two consumers: they get the precision's stated tolerance.
    reference_tolerance = max(REFERENCE_TOLERANCE, tolerance)
    worst_reference = 0.0
    for batch, length in REFERENCE_SHAPES:
        feed = random_feed(din.inputs, batch, length, np.random.default_rng(7))
        (expected,) = session.run([OUTPUT_NAME], feed)
        (actual,) = reference.run([OUTPUT_NAME], feed)
        difference = float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - expected)))
        if not difference <= reference_tolerance:
            raise ReferenceEvaluatorError(f"batch {batch}, length {length}: the reference evaluator and ONNX Runtime differ by "
                                          f"{difference:.3g} > {reference_tolerance}")
        worst_reference = max(worst_reference, difference)
    ranking = None
    if manifest.get("ranking") is not None:  # rank.onnx: its file, then its scores against PyTorch on replicated rows
        rank_session = ort.InferenceSession(str(verify_model_file(bundle, manifest, "ranking")), providers=["CPUExecutionProvider"])
        ranking = compare_ranking_with_pytorch(din, rank_session, grid, tolerance, ParityError)
    return {"outputs": outputs, "inputs": io["inputs"], "parity": parity, "ranking_parity": ranking, "checker": "full check passed",
            "reference_evaluator": {"shapes": [list(s) for s in REFERENCE_SHAPES], "max_abs_diff": worst_reference,
                                    "atol": reference_tolerance}}

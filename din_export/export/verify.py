"""`din-export verify`: check any bundle from every side, in a fixed order, each failure a typed error.

Order: output names; symbolic input dimensions; output shapes; values against PyTorch over a grid of shapes
(batch 1, 2, 1000; length 1, 2, half and all of max_len; all-padding and out-of-vocabulary rows); onnx.checker's full check;
ONNX's reference evaluator, an independent consumer of the file, agreeing with ONNX Runtime; and the ranking
graph, where the bundle has one, against PyTorch on the replicated rows over the same grid; and the explain graph,
where there is one, both outputs against PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.reference

from din_runtime.manifest import OUTPUT_NAME, read_manifest, verify_model_file
from din_runtime.providers import cpu_session

from ..bundle import load_bundle
from .errors import OutputShapeError, ParityError, ReferenceEvaluatorError
from .graphs import BATCH, EXPLAIN, RANKING, TOLERANCE, check_checker, check_interface, describe_io, random_feed
from .parity import VERIFY_BATCHES, check_parity, shape_grid

REFERENCE_SHAPES = ((2, 3), (1, 1))  # the reference evaluator is pure Python: small shapes only


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """Run every check on a bundle; returns what was checked and the largest differences seen."""
    manifest = read_manifest(bundle)
    model_path = verify_model_file(bundle, manifest)
    model = onnx.load(str(model_path))
    din = load_bundle(bundle).din
    io = describe_io(model)

    check_interface(io, BATCH.input_dims(din.schema), BATCH.output_dims)

    session = cpu_session(model_path)
    grid = shape_grid(din.schema.max_len, VERIFY_BATCHES)
    for batch, length in grid:
        (probabilities,) = session.run([OUTPUT_NAME], random_feed(din.schema, batch, length, np.random.default_rng(batch + length)))
        if probabilities.shape != (batch,):
            raise OutputShapeError(f"batch {batch}, length {length}: output shape {probabilities.shape}, expected ({batch},)")
    tolerance = manifest["onnx"].get("parity", {}).get("atol", TOLERANCE[manifest["onnx"]["precision"]])
    parity = check_parity(din, session, BATCH, grid, tolerance, ParityError)
    check_checker(model)

    reference = onnx.reference.ReferenceEvaluator(model)
    # Quantised graphs round differently in the two consumers: they get the precision's stated tolerance.
    reference_tolerance = max(TOLERANCE["fp32"], tolerance)
    worst_reference = 0.0
    for batch, length in REFERENCE_SHAPES:
        feed = random_feed(din.schema, batch, length, np.random.default_rng(7))
        (expected,) = session.run([OUTPUT_NAME], feed)
        (actual,) = reference.run([OUTPUT_NAME], feed)
        difference = float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - expected)))
        if not difference <= reference_tolerance:
            raise ReferenceEvaluatorError(f"batch {batch}, length {length}: the reference evaluator and ONNX Runtime differ by "
                                          f"{difference:.3g} > {reference_tolerance}")
        worst_reference = max(worst_reference, difference)
    ranking = None
    if manifest.get("ranking") is not None:  # rank.onnx: its file, then its scores against PyTorch on replicated rows
        ranking = check_parity(din, cpu_session(verify_model_file(bundle, manifest, "ranking")), RANKING, grid, tolerance, ParityError)
    explain = None
    if manifest.get("explain") is not None:  # explain.onnx: probabilities and attention weights against PyTorch
        explain = check_parity(din, cpu_session(verify_model_file(bundle, manifest, "explain")), EXPLAIN, grid, tolerance, ParityError)
    return {"outputs": [o["name"] for o in io["outputs"]], "inputs": io["inputs"], "parity": parity, "ranking_parity": ranking,
            "explain_parity": explain,
            "checker": "full check passed",
            "reference_evaluator": {"shapes": [list(s) for s in REFERENCE_SHAPES], "max_abs_diff": worst_reference,
                                    "atol": reference_tolerance}}

"""Precision (--precision): quantised and half-precision graphs, scored on validation data beside float32.

int8: ONNX Runtime's dynamic quantisation of the embedding tables (Gather), which hold nearly all the weights.
The MLPs' MatMuls are left in float32: with them quantised too (activations per tensor, per call) the
MovieLens-100k model's probabilities moved by up to 0.23 from PyTorch's, against 0.007 with the tables alone.
The exporter stores value_info for intermediate tensors, which the quantiser's shape handling trips over, so it
is cleared first.
fp16: float16 weights and arithmetic for CUDA, with float32 inputs and outputs kept (keep_io_types).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16

from din_runtime.manifest import OUTPUT_NAME
from din_runtime.providers import cpu_session

from ..config import PRECISIONS, SCORING_BATCH_ROWS
from ..data.splits import EncodedSplit
from ..training.metrics import evaluate
from .errors import ExportError

QUANTIZED_OPS = ["Gather"]


class PrecisionRejected(ExportError):
    """A quantised or half-precision graph lost more validation AUC than allowed."""


class _WithoutPreprocessingAdvice(logging.Filter):
    """Drops the quantiser's advice to run its pre-processing (shape inference and optimisation for static
    quantisation of vision models) first: it does not apply to dynamic quantisation of embedding tables, and it
    came once per graph, twice for every bundle."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def convert(source: Path, target: Path, precision: str) -> None:
    """Write the `precision` form of the float32 graph at `source` to `target`."""
    if precision == "int8":
        model = onnx.load(str(source))
        del model.graph.value_info[:]
        cleared = target.with_suffix(".cleared.onnx")
        onnx.save(model, str(cleared))
        advice = _WithoutPreprocessingAdvice()
        logging.getLogger().addFilter(advice)
        try:
            quantize_dynamic(str(cleared), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS)
        finally:
            logging.getLogger().removeFilter(advice)
            cleared.unlink(missing_ok=True)
    elif precision == "fp16":
        converted = ir.from_proto(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
        converted.graph.sort()  # the converter appends Cast nodes out of topological order, which onnx.checker rejects
        onnx.save(ir.to_proto(converted), str(target))
    else:
        raise ValueError(f"precision must be one of {PRECISIONS[1:]} to convert, not {precision!r}")


def session_metrics(path: Path, split: EncodedSplit, batch_size: int = SCORING_BATCH_ROWS) -> dict[str, Any]:
    """AUC, GAUC, logloss and accuracy of an ONNX file on an encoded split, run by ONNX Runtime on CPU."""
    session = cpu_session(path)
    probabilities = np.empty(len(split), dtype=np.float32)
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(start + batch_size, len(split)))
        feed = split.rows(rows)
        probabilities[rows] = session.run([OUTPUT_NAME], feed)[0]
    return evaluate(split.labels, probabilities, split.groups)

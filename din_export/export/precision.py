"""Precision (--precision): quantised and half-precision graphs, scored on validation data beside float32.

int8, up to two passes of ONNX Runtime's quantiser:
- the embedding tables (Gather), which hold nearly all the weights: int8 tables, each looked-up row dequantised
  (dynamic quantisation of the weights alone; nothing to calibrate). Always.
- with --int8-products, matrix products of the main graph: static QDQ, int8 weights per output channel, uint8
  activations whose ranges are calibrated on rows of the validation split, which ONNX Runtime fuses into integer
  kernels (QLinearMatMul, QGemm, QLinearSigmoid between them). "per-behaviour" takes the products that run once
  per behaviour (the attention unit), whose inputs are bounded whatever the history's length; the pooling sum and
  the MLP on the pooled interest grow with it, so ranges calibrated at max_len would clip longer histories.
  Products inside a loop body (DIEN's GRU and AUGRU) stay float32: the static quantiser does not enter subgraphs.
  The default is "none": measured with benchmarks/int8_options.py, no choice of products ran faster than float32
  on this model's narrow products (Export guide, "int8").
The exporter stores value_info for intermediate tensors, which the quantiser's shape handling trips over, so it
is cleared first.
fp16: float16 weights and arithmetic for CUDA, with float32 inputs and outputs kept (keep_io_types).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from onnxruntime.transformers.float16 import convert_float_to_float16

from din_runtime.manifest import OUTPUT_NAME
from din_runtime.providers import cpu_session
from din_runtime.schema import FeatureSchema

from ..config import CALIBRATION_BATCH_ROWS, CALIBRATION_ROWS, INT8_PRODUCTS, PRECISIONS, SCORING_BATCH_ROWS
from ..data.splits import EncodedSplit
from ..training.metrics import evaluate
from .errors import ExportError
from .graphs import SEQUENCE_DIM, GraphContract, graphs_of

EMBEDDING_OPS = ["Gather"]
PRODUCT_OPS = ["MatMul", "Gemm"]

Feeds = list[dict[str, np.ndarray]]  # calibration inputs for one graph, batch by batch


class PrecisionRejected(ExportError):
    """A quantised or half-precision graph lost more validation AUC than allowed."""


class _WithoutPreprocessingAdvice(logging.Filter):
    """Drops the quantiser's advice to run its pre-processing (shape inference and optimisation for static
    quantisation of vision models) first: it does not apply to dynamic quantisation of embedding tables, and it
    came once per graph, twice for every bundle."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


class _Feeds(CalibrationDataReader):
    """The quantiser's calibration reader over an iterator of feeds."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def calibration_feeds(split: EncodedSplit, contract: GraphContract, schema: FeatureSchema, rows: int = CALIBRATION_ROWS,
                      batch_rows: int = CALIBRATION_BATCH_ROWS) -> Feeds:
    """Feeds of `contract`'s graph made from up to `rows` validation rows spread evenly over the split (which is
    ordered by user), in batches; for the ranking graph each batch's rows are candidates against one of their
    histories, as rank calls it."""
    chosen = np.unique(np.linspace(0, len(split) - 1, min(rows, len(split))).astype(np.int64))
    return [contract.cases(split.rows(chosen[start:start + batch_rows]), schema)[-1][0] for start in range(0, len(chosen), batch_rows)]


def per_behaviour_products(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The main graph's matrix products split in two: those that run once per behaviour (an output dimension in
    seq_len, by ONNX Runtime's symbolic shape inference), whose inputs are bounded whatever the history's length,
    and the rest: the pooling sum and the MLP on the pooled interest, whose ranges grow with the history's length
    (raw attention weights), so static ranges calibrated on max_len clip longer histories."""
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    dims = {value.name: [d.dim_param for d in value.type.tensor_type.shape.dim]
            for value in (*inferred.graph.value_info, *inferred.graph.output)}
    per_behaviour, other = [], []
    for node in inferred.graph.node:
        if node.op_type in PRODUCT_OPS:
            over_behaviours = any(SEQUENCE_DIM in dim for dim in dims.get(node.output[0], []))
            (per_behaviour if over_behaviours else other).append(node.name)
    return per_behaviour, other


def constant_weight_products(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The products whose right-hand side is a weight, and the rest (activation by activation)."""
    weights = {t.name for t in model.graph.initializer}
    products = [node for node in model.graph.node if node.op_type in PRODUCT_OPS]
    return [n.name for n in products if n.input[1] in weights], [n.name for n in products if n.input[1] not in weights]


def every_product(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [node.name for node in model.graph.node if node.op_type in PRODUCT_OPS], []


def no_product(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [], [node.name for node in model.graph.node if node.op_type in PRODUCT_OPS]


# --int8-products: (products to quantise, products kept float32) of a graph
PRODUCT_CHOICES: dict[str, Callable[[onnx.ModelProto], tuple[list[str], list[str]]]] = {
    "none": no_product, "per-behaviour": per_behaviour_products, "constant-weights": constant_weight_products, "all": every_product}


def quantize_int8(source: Path, target: Path, calibration: Feeds | None, products_choice: str = INT8_PRODUCTS[0]) -> dict[str, Any]:
    """The int8 graph (module docstring) and what was quantised: the manifest's record of it. `products_choice`:
    which matrix products go to int8 (a key of PRODUCT_CHOICES); all but "none" need calibration feeds."""
    model = onnx.load(str(source))
    del model.graph.value_info[:]
    tables = sorted({i for node in model.graph.node if node.op_type in EMBEDDING_OPS for i in node.input[:1]}
                    & {t.name for t in model.graph.initializer})
    products, float_products = PRODUCT_CHOICES[products_choice](model)
    if products and calibration is None:
        raise ValueError(f"int8 products '{products_choice}' need calibration feeds (rows of the validation split)")
    advice = _WithoutPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            cleared, embedded = Path(scratch) / "cleared.onnx", Path(scratch) / "embedded.onnx"
            onnx.save(model, str(cleared))
            quantize_dynamic(str(cleared), str(embedded), weight_type=QuantType.QInt8, op_types_to_quantize=EMBEDDING_OPS)
            rows = sum(len(next(iter(feed.values()))) for feed in calibration) if calibration and products else 0
            if not products:
                os.replace(embedded, target)
            else:
                quantize_static(str(embedded), str(target), _Feeds(iter(calibration)), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=PRODUCT_OPS, nodes_to_quantize=products, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                                calibration_providers=["CPUExecutionProvider"])
    finally:
        logging.getLogger().removeFilter(advice)
    in_loops = [node.name for graph in graphs_of(onnx.load(str(target)))[1:] for node in graph.node if node.op_type in PRODUCT_OPS]
    return {"embeddings": {"tables": tables, "weights": "int8 per table"},
            "products": {"choice": products_choice, "nodes": products, "weights": "int8 per output channel", "activations": "uint8, static",
                         "calibration_rows": rows, "format": "QDQ"},
            "float32": {"products": float_products, "loop_body_products": in_loops}}


def convert(source: Path, target: Path, precision: str, calibration: Feeds | None = None,
            int8_products: str = INT8_PRODUCTS[0]) -> dict[str, Any]:
    """Write the `precision` form of the float32 graph at `source` to `target`; return what was converted (int8:
    `int8_products` quantised too, calibrated on `calibration`'s feeds)."""
    if precision == "int8":
        return quantize_int8(source, target, calibration, int8_products)
    if precision == "fp16":
        converted = ir.from_proto(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
        converted.graph.sort()  # the converter appends Cast nodes out of topological order, which onnx.checker rejects
        onnx.save(ir.to_proto(converted), str(target))
        return {"weights": "float16", "arithmetic": "float16", "inputs_outputs": "float32"}
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

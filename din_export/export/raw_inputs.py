"""A graph that takes raw IDs and numbers: the bundle's encoding (vocabulary lookup, out-of-vocabulary and missing
values, fill and normalisation, the most recent max_len behaviours) done inside ONNX, in front of model.onnx, so
Triton Inference Server (or any ONNX Runtime) serves raw feature values with no preprocessing step beside it.

Inputs: each categorical as INT64 (integer keys) or STRING (text keys; '' is missing), each numeric as FP32 (NaN
or an infinity is missing), each history as INT64 or STRING [batch, seq_len], and `history_length` INT64 [batch]:
how many entries of each row's histories are real. Padding is positional (entries at and after a row's length are
ignored, whatever they hold), so no ID value is reserved for it. Lookups are ONNX-ML LabelEncoder nodes, which
ONNX Runtime and Triton's ONNX Runtime backend run. Not the runtime's: a key of blanks counts as a key here
(out of vocabulary), where din_runtime reads it as missing.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from din_runtime.encoding import NORMALIZED_LIMIT, OOV_INDEX, PADDING_INDEX
from din_runtime.schema import FIRST_KEY_INDEX, CategoricalFeature, FeatureSchema, NumericFeature

LENGTH_INPUT = "history_length"
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 2  # LabelEncoder with int64 keys and values
BATCH, SEQUENCE = "batch", "seq_len"


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value, name))


def _lookup(feature: CategoricalFeature, source: str, target: str) -> onnx.NodeProto:
    """Keys to embedding rows, unknown keys to out-of-vocabulary; for text keys '' is missing."""
    indices = list(range(FIRST_KEY_INDEX, FIRST_KEY_INDEX + len(feature.keys)))
    if feature.key_type == "int":
        return helper.make_node("LabelEncoder", [source], [target], domain=ML_DOMAIN, keys_int64s=[int(k) for k in feature.keys],
                                values_int64s=indices, default_int64=OOV_INDEX)
    missing = FIRST_KEY_INDEX + len(feature.keys) if feature.missing_token else OOV_INDEX
    return helper.make_node("LabelEncoder", [source], [target], domain=ML_DOMAIN, keys_strings=[*map(str, feature.keys), ""],
                            values_int64s=[*indices, missing], default_int64=OOV_INDEX)


def _numeric(feature: NumericFeature, source: str, target: str) -> list[onnx.NodeProto]:
    """In float64, as the runtime computes: non-finite to the fill value, then (x - shift) / scale, clipped."""
    name = f"{source}__"
    return [
        helper.make_node("Cast", [source], [name + "x"], to=TensorProto.DOUBLE),
        helper.make_node("IsNaN", [name + "x"], [name + "nan"]),
        helper.make_node("IsInf", [name + "x"], [name + "inf"]),
        helper.make_node("Or", [name + "nan", name + "inf"], [name + "missing"]),
        _constant(name + "fill", np.array(feature.fill, dtype=np.float64)),
        _constant(name + "shift", np.array(feature.shift, dtype=np.float64)),
        _constant(name + "scale", np.array(feature.scale, dtype=np.float64)),
        _constant(name + "low", np.array(-NORMALIZED_LIMIT, dtype=np.float64)),
        _constant(name + "high", np.array(NORMALIZED_LIMIT, dtype=np.float64)),
        helper.make_node("Where", [name + "missing", name + "fill", name + "x"], [name + "filled"]),
        helper.make_node("Sub", [name + "filled", name + "shift"], [name + "shifted"]),
        helper.make_node("Div", [name + "shifted", name + "scale"], [name + "scaled"]),
        helper.make_node("Clip", [name + "scaled", name + "low", name + "high"], [name + "clipped"]),
        helper.make_node("Cast", [name + "clipped"], [target], to=TensorProto.FLOAT),
    ]


def _recent_positions(max_len: int, first_history: str) -> list[onnx.NodeProto]:
    """Shared by every history: for each row, which padded positions hold its most recent min(length, max_len)
    entries (`recent__index`, [batch, width], width = min(seq_len, max_len)) and which are real (`recent__mask`)."""
    return [
        _constant("recent__max_len", np.array([max_len], dtype=np.int64)),
        _constant("recent__one", np.array(1, dtype=np.int64)),
        _constant("recent__zero", np.array(0, dtype=np.int64)),
        _constant("recent__axis", np.array([1], dtype=np.int64)),
        helper.make_node("Shape", [first_history], ["recent__shape"], start=1, end=2),
        helper.make_node("Min", ["recent__shape", "recent__max_len"], ["recent__width_1d"]),
        helper.make_node("Squeeze", ["recent__width_1d"], ["recent__width"]),
        helper.make_node("Range", ["recent__zero", "recent__width", "recent__one"], ["recent__steps"]),
        helper.make_node("Unsqueeze", ["recent__steps", "recent__zero_axis"], ["recent__steps_row"]),
        _constant("recent__zero_axis", np.array([0], dtype=np.int64)),
        helper.make_node("Min", [LENGTH_INPUT, "recent__width"], ["recent__kept"]),
        helper.make_node("Unsqueeze", ["recent__kept", "recent__axis"], ["recent__kept_column"]),
        helper.make_node("Sub", [LENGTH_INPUT, "recent__kept"], ["recent__start"]),
        helper.make_node("Unsqueeze", ["recent__start", "recent__axis"], ["recent__start_column"]),
        helper.make_node("Add", ["recent__start_column", "recent__steps_row"], ["recent__raw_index"]),
        helper.make_node("Sub", ["recent__shape", "recent__one"], ["recent__last"]),
        helper.make_node("Clip", ["recent__raw_index", "recent__zero", "recent__last_scalar"], ["recent__index"]),
        helper.make_node("Squeeze", ["recent__last"], ["recent__last_scalar"]),
        helper.make_node("Less", ["recent__steps_row", "recent__kept_column"], ["recent__mask"]),
    ]


def _history(feature_name: str, vocabulary: CategoricalFeature, target: str) -> list[onnx.NodeProto]:
    name = f"{feature_name}__"
    return [
        helper.make_node("GatherElements", [feature_name, "recent__index"], [name + "recent"], axis=1),
        _lookup(vocabulary, name + "recent", name + "indices"),
        _constant(name + "padding", np.array(PADDING_INDEX, dtype=np.int64)),
        helper.make_node("Where", ["recent__mask", name + "indices", name + "padding"], [target]),
    ]


def raw_input_model(model: onnx.ModelProto, schema: FeatureSchema) -> onnx.ModelProto:
    """`model` (a bundle's model.onnx, taking encoded indices) behind the encoding: a model taking raw values."""
    encoded = {f.name: f"{f.name}__encoded" for f in schema.features}
    graph = model.graph
    for node in graph.node:  # the model's nodes now read the encoded tensors the new nodes produce
        node.input[:] = [encoded.get(name, name) for name in node.input]
    stale = [value for value in graph.value_info if value.name in encoded]  # typed as indices; the raw inputs may be text
    for value in stale:
        graph.value_info.remove(value)
    for output in graph.output:
        if output.name in encoded:
            raise ValueError(f"output '{output.name}' is also an input; cannot put the encoding in front")
    nodes: list[onnx.NodeProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    if schema.sequences:
        nodes += _recent_positions(max(s.max_len for s in schema.sequences), schema.sequences[0].name)
    for feature in schema.features:
        if isinstance(feature, CategoricalFeature):
            text = feature.key_type == "str"
            inputs.append(helper.make_tensor_value_info(feature.name, TensorProto.STRING if text else TensorProto.INT64, [BATCH]))
            nodes.append(_lookup(feature, feature.name, encoded[feature.name]))
        elif isinstance(feature, NumericFeature):
            inputs.append(helper.make_tensor_value_info(feature.name, TensorProto.FLOAT, [BATCH]))
            nodes += _numeric(feature, feature.name, encoded[feature.name])
        else:
            vocabulary = schema[feature.shares]
            text = vocabulary.key_type == "str"
            inputs.append(helper.make_tensor_value_info(feature.name, TensorProto.STRING if text else TensorProto.INT64, [BATCH, SEQUENCE]))
            nodes += _history(feature.name, vocabulary, encoded[feature.name])
    if schema.sequences:
        inputs.append(helper.make_tensor_value_info(LENGTH_INPUT, TensorProto.INT64, [BATCH]))
    del graph.input[:]
    graph.input.extend(inputs)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(_topological(nodes) + existing)
    model.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    onnx.checker.check_model(model, full_check=True)
    return model


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The new nodes in an order where every input is produced before it is read."""
    produced = {output for node in nodes for output in node.output}
    ordered, available, pending = [], set(), list(nodes)
    while pending:
        ready = [node for node in pending if all(name in available or name not in produced for name in node.input)]
        if not ready:
            raise ValueError("the encoding graph has a cycle")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
            pending.remove(node)
    return ordered

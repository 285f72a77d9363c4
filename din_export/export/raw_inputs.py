"""A graph that takes raw IDs and numbers: the bundle's encoding (vocabulary lookup, out-of-vocabulary and missing
values, fill and normalisation, the most recent max_len behaviours) done inside ONNX, in front of model.onnx, so
Triton Inference Server (or any ONNX Runtime) serves raw feature values with no preprocessing step beside it.

Inputs: each categorical as INT64 (integer keys) or STRING (text keys; '' is missing), each numeric as FP32 (NaN
or an infinity is missing), each history as INT64 or STRING [batch, seq_len], the behaviours' times (where the
model has them) as FP64 [batch, seq_len] with each row's own time FP64 [batch], and `history_length` INT64 [batch]:
how many entries of each row's histories are real. Padding is positional (entries at and after a row's length are
ignored, whatever they hold), so no ID value is reserved for it. Lookups are ONNX-ML LabelEncoder nodes, which
ONNX Runtime and Triton's ONNX Runtime backend run. Not the runtime's: a key of blanks counts as a key here
(out of vocabulary), where din_runtime reads it as missing.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from din_runtime.encoding import MAX_AGE, NORMALIZED_LIMIT, OOV_INDEX, PADDING_INDEX
from din_runtime.manifest import LENGTH_INPUT
from din_runtime.schema import CategoricalFeature, FeatureSchema, NumericFeature, TimesFeature

ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 2  # LabelEncoder with int64 keys and values
BATCH, SEQUENCE = "batch", "seq_len"


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value, name))


def _lookup(feature: CategoricalFeature, source: str, target: str) -> onnx.NodeProto:
    """Keys to embedding rows, unknown keys to out-of-vocabulary; for text keys '' is missing."""
    indices = feature.key_rows().tolist()
    if feature.key_type == "int":
        return helper.make_node("LabelEncoder", [source], [target], domain=ML_DOMAIN, keys_int64s=[int(k) for k in feature.keys],
                                values_int64s=indices, default_int64=OOV_INDEX)
    missing = OOV_INDEX if feature.missing_row is None else feature.missing_row
    return helper.make_node("LabelEncoder", [source], [target], domain=ML_DOMAIN, keys_strings=[*map(str, feature.keys), ""],
                            values_int64s=[*indices, missing], default_int64=OOV_INDEX)


def _numeric(feature: NumericFeature, source: str, target: str, prefix: str) -> list[onnx.NodeProto]:
    """In float64, as the runtime computes: non-finite to the fill value, then (x - shift) / scale, clipped."""
    name = f"{prefix}{source}__"
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


def _recent_positions(max_len: int, first_history: str, prefix: str) -> list[onnx.NodeProto]:
    """Shared by every history: for each row, which padded positions hold its most recent min(length, max_len)
    entries (`recent__index`, [batch, width], width = min(seq_len, max_len)) and which are real (`recent__mask`)."""
    return [
        _constant(f"{prefix}recent__max_len", np.array([max_len], dtype=np.int64)),
        _constant(f"{prefix}recent__one", np.array(1, dtype=np.int64)),
        _constant(f"{prefix}recent__zero", np.array(0, dtype=np.int64)),
        _constant(f"{prefix}recent__axis", np.array([1], dtype=np.int64)),
        helper.make_node("Shape", [first_history], [f"{prefix}recent__shape"], start=1, end=2),
        helper.make_node("Min", [f"{prefix}recent__shape", f"{prefix}recent__max_len"], [f"{prefix}recent__width_1d"]),
        helper.make_node("Squeeze", [f"{prefix}recent__width_1d"], [f"{prefix}recent__width"]),
        helper.make_node("Range", [f"{prefix}recent__zero", f"{prefix}recent__width", f"{prefix}recent__one"], [f"{prefix}recent__steps"]),
        helper.make_node("Unsqueeze", [f"{prefix}recent__steps", f"{prefix}recent__zero_axis"], [f"{prefix}recent__steps_row"]),
        _constant(f"{prefix}recent__zero_axis", np.array([0], dtype=np.int64)),
        helper.make_node("Min", [LENGTH_INPUT, f"{prefix}recent__width"], [f"{prefix}recent__kept"]),
        helper.make_node("Unsqueeze", [f"{prefix}recent__kept", f"{prefix}recent__axis"], [f"{prefix}recent__kept_column"]),
        helper.make_node("Sub", [LENGTH_INPUT, f"{prefix}recent__kept"], [f"{prefix}recent__start"]),
        helper.make_node("Unsqueeze", [f"{prefix}recent__start", f"{prefix}recent__axis"], [f"{prefix}recent__start_column"]),
        helper.make_node("Add", [f"{prefix}recent__start_column", f"{prefix}recent__steps_row"], [f"{prefix}recent__raw_index"]),
        helper.make_node("Sub", [f"{prefix}recent__shape", f"{prefix}recent__one"], [f"{prefix}recent__last"]),
        helper.make_node("Clip", [f"{prefix}recent__raw_index", f"{prefix}recent__zero", f"{prefix}recent__last_scalar"], [f"{prefix}recent__index"]),
        helper.make_node("Squeeze", [f"{prefix}recent__last"], [f"{prefix}recent__last_scalar"]),
        helper.make_node("Less", [f"{prefix}recent__steps_row", f"{prefix}recent__kept_column"], [f"{prefix}recent__mask"]),
    ]


def _history(feature_name: str, vocabulary: CategoricalFeature, target: str, prefix: str) -> list[onnx.NodeProto]:
    name = f"{prefix}{feature_name}__"
    return [
        helper.make_node("GatherElements", [feature_name, f"{prefix}recent__index"], [name + "recent"], axis=1),
        _lookup(vocabulary, name + "recent", name + "indices"),
        _constant(name + "padding", np.array(PADDING_INDEX, dtype=np.int64)),
        helper.make_node("Where", [f"{prefix}recent__mask", name + "indices", name + "padding"], [target]),
    ]


def _ages(feature: TimesFeature, target: str, prefix: str) -> list[onnx.NodeProto]:
    """The behaviours' ages as the runtime computes them: in float64, the row's time minus each of its most recent
    behaviours' times, floored, within [0, 2^62], padding 0, then int64."""
    name = f"{prefix}{feature.name}__"
    return [
        helper.make_node("GatherElements", [feature.name, f"{prefix}recent__index"], [name + "recent"], axis=1),
        helper.make_node("Unsqueeze", [feature.at, f"{prefix}recent__axis"], [name + "at"]),
        helper.make_node("Sub", [name + "at", name + "recent"], [name + "age"]),
        _constant(name + "zero", np.array(0.0, dtype=np.float64)),
        _constant(name + "most", np.array(MAX_AGE, dtype=np.float64)),
        helper.make_node("Floor", [name + "age"], [name + "whole"]),
        helper.make_node("Clip", [name + "whole", name + "zero", name + "most"], [name + "kept"]),
        helper.make_node("Where", [f"{prefix}recent__mask", name + "kept", name + "zero"], [name + "ages"]),
        helper.make_node("Cast", [name + "ages"], [target], to=TensorProto.INT64),
    ]


def raw_input_model(model: onnx.ModelProto, schema: FeatureSchema) -> onnx.ModelProto:
    """`model` (a bundle's model.onnx, taking encoded indices) behind the encoding: a model taking raw values.
    Every value the encoding adds is named under a prefix that no feature and no value of the model starts with,
    so a feature may have any name at all."""
    prefix = _free_prefix(model, schema)
    encoded = {f.name: f"{prefix}{f.name}__encoded" for f in schema.features}
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
        nodes += _recent_positions(max(s.max_len for s in schema.sequences), schema.sequences[0].name, prefix)
    for feature in schema.features:
        if isinstance(feature, CategoricalFeature):
            text = feature.key_type == "str"
            inputs.append(helper.make_tensor_value_info(feature.name, TensorProto.STRING if text else TensorProto.INT64, [BATCH]))
            nodes.append(_lookup(feature, feature.name, encoded[feature.name]))
        elif isinstance(feature, NumericFeature):
            inputs.append(helper.make_tensor_value_info(feature.name, TensorProto.FLOAT, [BATCH]))
            nodes += _numeric(feature, feature.name, encoded[feature.name], prefix)
        elif isinstance(feature, TimesFeature):
            inputs.append(helper.make_tensor_value_info(feature.name, TensorProto.DOUBLE, [BATCH, SEQUENCE]))
            inputs.append(helper.make_tensor_value_info(feature.at, TensorProto.DOUBLE, [BATCH]))
            nodes += _ages(feature, encoded[feature.name], prefix)
        else:
            vocabulary = schema[feature.shares]
            text = vocabulary.key_type == "str"
            inputs.append(helper.make_tensor_value_info(feature.name, TensorProto.STRING if text else TensorProto.INT64, [BATCH, SEQUENCE]))
            nodes += _history(feature.name, vocabulary, encoded[feature.name], prefix)
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


def _free_prefix(model: onnx.ModelProto, schema: FeatureSchema) -> str:
    """'raw.' or, where some name already starts so, 'raw_.', 'raw__.', ...: a prefix no existing name has."""
    graph = model.graph
    taken = {*schema.names, *(t.at for t in schema.times), LENGTH_INPUT, *(v for node in graph.node for v in (*node.input, *node.output)),
             *(i.name for i in graph.initializer)}
    prefix = "raw."
    while any(name.startswith(prefix) for name in taken):
        prefix = prefix[:-1] + "_."
    return prefix


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

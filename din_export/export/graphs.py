"""The exported graphs and their contracts, written by torch.onnx's dynamo exporter.

A GraphContract declares, once per graph, what the file must be: its manifest section and file name, the input
dimensions per feature kind, the output, an example feed and the module that computes it. Export, re-export and
`verify` all read these two contracts; parity.py checks a file against PyTorch through them.

- BATCH (model.onnx): every input per row, histories (batch, seq_len).
- EXPLAIN (explain.onnx, every model but base): the batch graph's inputs; outputs the probability and each
  behaviour's weight (batch, seq_len): DIN's attention, DIEN's AUGRU gate, BST's candidate attention. A graph of
  its own rather than a second output of model.onnx, so the graph every client and Triton config already knows
  keeps its one output.
- RANKING (rank.onnx): many candidates against one user's history. Histories arrive once, shape (1, seq_len),
  every other input per candidate, (candidates,). The behaviours are embedded (encoded, for din-seq; through the
  interest extractor, for DIEN) once; DIN's attention unit's first layer becomes one large product with a table
  built from the history (AttentionPooling.one_history). Its probabilities equal the batch graph's on the
  replicated rows.

The exporter is torch.export underneath, so: examples of batch and sequence length at least 2 and unequal (sizes 0
and 1 get specialised), masks built from the IDs, weights kept inside the one file. Its node metadata (the
exporting machine's source paths and stack traces) is removed before the file is hashed or shipped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from din_runtime.encoding import OOV_INDEX
from din_runtime.manifest import EXPLAIN_FILE, MODEL_FILE, OUTPUT_NAME, RANKING_FILE, WEIGHTS_NAME, sha256_of
from din_runtime.schema import FeatureSchema

from ..config import FORMS
from ..model.base import BehaviourModel, ExplainedModel, ProbabilityModel, in_form
from .errors import CheckerError, DimensionError, ExportError, OutputNameError
from .registry import cached_registry

BATCH_DIM = "batch"
CANDIDATE_DIM = "candidates"
SEQUENCE_DIM = "seq_len"
EXAMPLE_BATCH, EXAMPLE_SEQUENCE = 4, 3
# Largest |probability difference| from PyTorch accepted, per precision (CPU): the one statement of tolerance.
TOLERANCE = {"fp32": 1e-5, "int8": 0.05, "fp16": 1e-2}


class RankingModel(nn.Module):
    """A model's probabilities for N candidates (every non-sequence input of shape (N,)) and one history (1, T)."""

    def __init__(self, din: BehaviourModel) -> None:
        super().__init__()
        self.din = in_form(din, "folded")

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        din = self.din
        x = dict(zip(din.schema.names, tensors, strict=True))
        query = din.candidate(x)
        keys, mask = din.behaviours(x)  # on the one history: embedded (and encoded or extracted) once
        interest = din.one_history_interest(query, keys[0], mask[0])
        return din.probability(din.head(x, query, interest))


def random_feed(schema: FeatureSchema, batch: int, sequence: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Encoded inputs covering padding, out-of-vocabulary IDs, an all-padding first row and a full-length row."""
    feed: dict[str, np.ndarray] = {}
    lengths = rng.integers(0, sequence + 1, batch)
    lengths[0] = 0
    lengths[-1] = sequence if batch > 1 else lengths[-1]
    positions = np.arange(sequence)[None, :] < lengths[:, None]
    for feature in schema.features:
        if feature.kind == "categorical":
            feed[feature.name] = rng.integers(1, feature.size, batch).astype(np.int64)
            feed[feature.name][-1] = OOV_INDEX
        elif feature.kind == "numeric":
            feed[feature.name] = rng.standard_normal(batch).astype(np.float32)
        elif feature.kind == "times":  # ages from 0 to past the last bucket, log-uniform, some on a bucket's bound
            ages = np.floor(2.0 ** rng.uniform(-1, 41, (batch, sequence))).astype(np.int64)
            ages[rng.random((batch, sequence)) < 0.2] = 2 ** rng.integers(0, 40)
            feed[feature.name] = np.where(positions, ages, 0).astype(np.int64)
        else:
            ids = rng.integers(1, schema[feature.shares].size, (batch, sequence))
            feed[feature.name] = np.where(positions, ids, 0).astype(np.int64)
    return feed


def one_history(feed: dict[str, np.ndarray], schema: FeatureSchema, row: int) -> dict[str, np.ndarray]:
    """A ranking feed from a batch feed: every row a candidate, the histories of `row` the one history."""
    return {n: array[row:row + 1] if n in schema.history_names else array for n, array in feed.items()}


def replicated(feed: dict[str, np.ndarray], schema: FeatureSchema) -> dict[str, np.ndarray]:
    """The batch feed a ranking feed stands for: the one history repeated for every candidate."""
    candidates = len(feed[schema.shared[0]])
    return {n: np.repeat(array, candidates, axis=0) if n in schema.history_names else array for n, array in feed.items()}


@dataclass(frozen=True)
class GraphContract:
    """What one exported graph is: where it lives, what it takes and gives, and how to build and test it."""

    section: str  # the manifest's section for it
    file: str
    rows: str  # the symbolic name of the per-row dimension
    history_rows: str | int  # the histories' first dimension: per row, or 1 (one history)
    module: Callable[[BehaviourModel], nn.Module]
    # (graph feed, the batch feed PyTorch must give the same outputs on) for each parity case of a random feed
    cases: Callable[[dict[str, np.ndarray], FeatureSchema], list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]]
    reference: Callable[[BehaviourModel], nn.Module] = ProbabilityModel  # what PyTorch computes on the batch feed of a case
    outputs: tuple[str, ...] = (OUTPUT_NAME,)
    applies: Callable[[BehaviourModel], bool] = lambda din: True  # whether a model has this graph

    def input_dims(self, schema: FeatureSchema) -> dict[str, list[str | int]]:
        histories = schema.history_names
        return {f.name: [self.history_rows, SEQUENCE_DIM] if f.name in histories else [self.rows] for f in schema.features}

    @property
    def output_dims(self) -> dict[str, list[str | int]]:
        return {name: [self.rows] if name == OUTPUT_NAME else [self.rows, SEQUENCE_DIM] for name in self.outputs}

    def example(self, schema: FeatureSchema) -> dict[str, np.ndarray]:
        """The export example: batch and sequence sizes of at least 2 and unequal (torch.export specialises 0 and 1)."""
        return self.cases(random_feed(schema, EXAMPLE_BATCH, EXAMPLE_SEQUENCE, np.random.default_rng(0)), schema)[-1][0]

    def dynamic_shapes(self, schema: FeatureSchema) -> dict[str, dict[int, Any]]:
        dims = {name: torch.export.Dim(name, min=1) for name in (self.rows, SEQUENCE_DIM)}
        return {name: {axis: dims[dim] for axis, dim in enumerate(shape) if isinstance(dim, str)}
                for name, shape in self.input_dims(schema).items()}


BATCH = GraphContract("onnx", MODEL_FILE, BATCH_DIM, BATCH_DIM, ProbabilityModel, lambda feed, schema: [(feed, feed)])
RANKING = GraphContract(
    "ranking", RANKING_FILE, CANDIDATE_DIM, 1, RankingModel,
    # an empty history (random_feed's first row) and a full one (its last), PyTorch on the replicated rows
    lambda feed, schema: [(one_history(feed, schema, row), replicated(one_history(feed, schema, row), schema))
                          for row in sorted({0, len(feed[schema.names[0]]) - 1})])
EXPLAIN = GraphContract("explain", EXPLAIN_FILE, BATCH_DIM, BATCH_DIM, ExplainedModel, lambda feed, schema: [(feed, feed)],
                        reference=ExplainedModel, outputs=(OUTPUT_NAME, WEIGHTS_NAME),
                        applies=lambda din: din.explains)
CONTRACTS = (BATCH, RANKING, EXPLAIN)


def export_graph(din: BehaviourModel, contract: GraphContract, path: Path, form: str = "folded") -> None:
    """Write the contract's graph of `din` as one self-contained file, cleaned of build metadata, then check its
    structure. form: the attention unit's "folded" (for inference) or "plain" first layer; rank.onnx is always folded."""
    if form not in FORMS:
        raise ValueError(f"graph must be one of {FORMS}, not {form!r}")
    write_onnx(contract.module(in_form(din, form)), contract.example(din.schema), contract.dynamic_shapes(din.schema), path,
               contract.outputs)
    clean_graph(path, din.schema.names)
    check_structure(path, contract.input_dims(din.schema), contract.output_dims)


def derive_batch_graph(explain_path: Path, path: Path, schema: FeatureSchema) -> None:
    """model.onnx from explain.onnx: the same graph with only its probability output (the weights feed the
    probability, so no node goes dead). One export instead of two, and the two files compute alike by construction."""
    model = onnx.load(str(explain_path))
    kept = [output for output in model.graph.output if output.name == OUTPUT_NAME]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(path))
    # explain.onnx passed onnx.checker's full check; one output fewer changes no node, so the interface is what is left to check
    check_interface(describe_io(model), BATCH.input_dims(schema), BATCH.output_dims)


def write_onnx(module: torch.nn.Module, example: dict[str, np.ndarray], dynamic_shapes: dict[str, dict[int, Any]], path: Path,
               outputs: tuple[str, ...] = (OUTPUT_NAME,)) -> None:
    """torch.onnx.export (dynamo) of `module` called with the example arrays as positional inputs in their order,
    into one file, with the exporter's chatter silenced and its many error types turned into ExportError. The
    inputs are exported under placeholder names (`input.0`, ...), which clean_graph then gives the features'
    names: the exporter names its own values after the operators it emits (`cat`, `sigmoid`, ...), and a feature
    of such a name would otherwise share its name with one of them."""
    names = list(example)
    quiet = logging.getLogger("torch.onnx")
    previous_level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), cached_registry():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), tuple(torch.from_numpy(example[n]) for n in names), str(path),
                              dynamo=True, external_data=False, input_names=[placeholder(i) for i in range(len(names))],
                              output_names=list(outputs),
                              dynamic_shapes=(tuple(dynamic_shapes[n] for n in names),), verbose=False)
    except Exception as error:  # the exporter raises many types; all mean the same to the caller
        raise ExportError(f"torch.onnx.export failed: {error}") from error
    finally:
        quiet.setLevel(previous_level)


def graphs_of(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    """The main graph and every subgraph (If/Loop bodies), where node metadata may also sit."""
    graphs, pending = [], [model.graph]
    while pending:
        graph = pending.pop()
        graphs.append(graph)
        for node in graph.node:
            for attribute in node.attribute:
                pending.extend([attribute.g] if attribute.HasField("g") else [])
                pending.extend(attribute.graphs)
    return graphs


def placeholder(position: int) -> str:
    """The name an input is exported under, before clean_graph names it after its feature."""
    return f"input.{position}"


def clean_graph(path: Path, names: list[str]) -> None:
    """The exported file made fit to ship: inputs named after the features, build metadata removed."""
    model = onnx.load(str(path))
    name_inputs(model, names)
    strip_build_metadata(model)
    onnx.save(model, str(path))


def name_inputs(model: onnx.ModelProto, names: list[str]) -> None:
    """Give the placeholder inputs their features' names (the exporter saw only the module's argument order, which
    is the schema's). An internal value that already holds one of those names is renamed first, to `NAME.N`, a
    name no value has, so every value stays uniquely named whatever the features are called."""
    graphs = graphs_of(model)
    placeholders = [value.name for value in model.graph.input]
    if placeholders != [placeholder(i) for i in range(len(names))]:
        raise ExportError(f"the exported inputs {placeholders} are not the {len(names)} placeholders written")
    interface = {*placeholders, *(value.name for value in model.graph.output)}
    taken = {v for graph in graphs for node in graph.node for v in (*node.input, *node.output)}
    taken |= {value.name for graph in graphs for value in (*graph.initializer, *graph.value_info)} | interface | set(names)
    mapping = dict(zip(placeholders, names, strict=True))
    for name in sorted(set(names) & (taken - interface)):  # an internal value named as a feature
        number = 1
        while f"{name}.{number}" in taken:
            number += 1
        mapping[name] = f"{name}.{number}"
        taken.add(mapping[name])
    for graph in graphs:
        for node in graph.node:
            node.input[:] = [mapping.get(v, v) for v in node.input]
            node.output[:] = [mapping.get(v, v) for v in node.output]
        for value in (*graph.input, *graph.output, *graph.initializer, *graph.value_info):
            value.name = mapping.get(value.name, value.name)


def strip_build_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node and per-value metadata (source file paths, stack traces, module scopes of the
    exporting machine): a deployed file should not carry the build's paths, and the sha256 should not change with
    them. Nothing a consumer of the graph reads is in it."""
    for graph in graphs_of(model):
        for node in graph.node:
            del node.metadata_props[:]
        for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            del value.metadata_props[:]
        del graph.metadata_props[:]
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]


def _dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def describe_io(model: onnx.ModelProto) -> dict[str, Any]:
    """Names, dtypes and dimensions (symbolic names where dynamic) of the graph's inputs and outputs."""
    def entry(v: onnx.ValueInfoProto) -> dict[str, Any]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        return {"name": v.name, "dtype": dtype, "dims": _dims(v)}
    return {"inputs": [entry(v) for v in model.graph.input], "outputs": [entry(v) for v in model.graph.output],
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}


def check_checker(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as failure:
        raise CheckerError(f"onnx.checker rejected the model: {failure}") from None


def check_interface(io_description: dict[str, Any], expected_inputs: dict[str, list[str | int]],
                    expected_outputs: dict[str, list[str | int]]) -> None:
    """The one check of a graph's interface (export and `verify` both run it): the inputs named and ordered as the
    features, each with its contract's dimensions, and the outputs (`probability`, and explain's `weights`) named,
    ordered and of the dimensions expected."""
    outputs = [o["name"] for o in io_description["outputs"]]
    if outputs != list(expected_outputs):
        raise OutputNameError(f"outputs are {outputs}, expected {list(expected_outputs)}")
    names = [i["name"] for i in io_description["inputs"]]
    if names != list(expected_inputs):
        raise DimensionError(f"ONNX inputs {names} differ from the features {list(expected_inputs)}")
    for entry in io_description["inputs"]:
        if entry["dims"] != expected_inputs[entry["name"]]:
            raise DimensionError(f"input '{entry['name']}' has dimensions {entry['dims']}, expected symbolic {expected_inputs[entry['name']]}")
    for entry in io_description["outputs"]:
        if entry["dims"] != expected_outputs[entry["name"]]:
            raise DimensionError(f"output '{entry['name']}' has dimensions {entry['dims']}, expected {expected_outputs[entry['name']]}")


def check_structure(path: Path, expected_inputs: dict[str, list[str | int]], expected_outputs: dict[str, list[str | int]]) -> None:
    """One self-contained file that onnx.checker accepts, with the inputs in order and the dimensions expected."""
    strays = [p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    if strays:
        raise ExportError(f"the export wrote external data {strays}; one self-contained file must ship")
    model = onnx.load(str(path))
    check_checker(model)
    check_interface(describe_io(model), expected_inputs, expected_outputs)


def graph_section(path: Path, parity: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """The manifest's entry for a verified graph file: file, sha256 of the file as shipped, inputs and outputs,
    parity, and the export settings (graph form, precision, optimisation)."""
    return {"file": path.name, **settings, "sha256": sha256_of(path), **describe_io(onnx.load(str(path))), "parity": parity}

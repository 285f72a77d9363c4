"""ONNX export with named dynamic batch and sequence axes, checked by onnx.checker and against PyTorch.

The exporter is torch.onnx's dynamo path (torch.export), so: examples of batch and sequence length at least
2 and unequal (sizes 0 and 1 get specialised), masks built from the IDs, weights kept inside the one file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from din_runtime.encoding import OOV_INDEX

from .model import DIN, GRAPHS, ModelInputs, ProbabilityModel, in_form

BATCH_DIM = "batch"
SEQUENCE_DIM = "seq_len"
OUTPUT_NAME = "probability"
EXAMPLE_BATCH, EXAMPLE_SEQUENCE = 4, 3
ABSOLUTE_TOLERANCE = 1e-5


class ExportError(RuntimeError):
    """The exported graph failed a check; the message says which and by how much."""


def random_feed(inputs: ModelInputs, batch: int, sequence: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Encoded inputs covering padding, out-of-vocabulary IDs, an all-padding first row and a full-length row."""
    feed: dict[str, np.ndarray] = {}
    lengths = rng.integers(0, sequence + 1, batch)
    lengths[0] = 0
    lengths[-1] = sequence if batch > 1 else lengths[-1]
    positions = np.arange(sequence)[None, :] < lengths[:, None]
    for name in inputs.names:
        kind = inputs.kinds[name]
        if kind == "categorical":
            feed[name] = rng.integers(1, inputs.vocab_sizes[name], batch).astype(np.int64)
            feed[name][-1] = OOV_INDEX
        elif kind == "numeric":
            feed[name] = rng.standard_normal(batch).astype(np.float32)
        else:
            ids = rng.integers(1, inputs.vocab_sizes[inputs.shares[name]], (batch, sequence))
            feed[name] = np.where(positions, ids, 0).astype(np.int64)
    return feed


def _dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def describe_io(model: onnx.ModelProto) -> dict[str, Any]:
    """Names, dtypes and dimensions (symbolic names where dynamic) of the graph's inputs and outputs."""
    def entry(v: onnx.ValueInfoProto) -> dict[str, Any]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        return {"name": v.name, "dtype": dtype, "dims": _dims(v)}
    return {"inputs": [entry(v) for v in model.graph.input], "outputs": [entry(v) for v in model.graph.output],
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}


def export_onnx(din: DIN, path: Path, graph: str = "folded") -> None:
    """Write one self-contained model.onnx with symbolic batch and seq_len dimensions, then check its structure.
    graph: "folded" (attention unit's first layer folded, the default for inference) or "plain"."""
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, not {graph!r}")
    inputs = din.inputs
    example = random_feed(inputs, EXAMPLE_BATCH, EXAMPLE_SEQUENCE, np.random.default_rng(0))
    batch = torch.export.Dim(BATCH_DIM, min=1)
    sequence = torch.export.Dim(SEQUENCE_DIM, min=1)
    dynamic_shapes = {n: {0: batch, 1: sequence} if inputs.kinds[n] == "sequence" else {0: batch} for n in inputs.names}
    write_onnx(ProbabilityModel(in_form(din, graph)), example, dynamic_shapes, path)
    expected = {n: [BATCH_DIM, SEQUENCE_DIM] if inputs.kinds[n] == "sequence" else [BATCH_DIM] for n in inputs.names}
    check_structure(path, expected, [BATCH_DIM])


def write_onnx(module: torch.nn.Module, example: dict[str, np.ndarray], dynamic_shapes: dict[str, dict[int, Any]], path: Path) -> None:
    """torch.onnx.export (dynamo) of `module` called with the example arrays as positional inputs in their order,
    into one file, with the exporter's chatter silenced and its many error types turned into ExportError."""
    names = list(example)
    quiet = logging.getLogger("torch.onnx")
    previous_level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), tuple(torch.from_numpy(example[n]) for n in names), str(path),
                              dynamo=True, external_data=False, input_names=names, output_names=[OUTPUT_NAME],
                              dynamic_shapes=(tuple(dynamic_shapes[n] for n in names),), verbose=False)
    except Exception as error:  # the exporter raises many types; all mean the same to the caller
        raise ExportError(f"torch.onnx.export failed: {error}") from error
    finally:
        quiet.setLevel(previous_level)


def check_structure(path: Path, expected_inputs: dict[str, list[str | int]], expected_output: list[str | int]) -> None:
    """One self-contained file that onnx.checker accepts, with the inputs in order and the dimensions expected."""
    strays = [p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    if strays:
        raise ExportError(f"the export wrote external data {strays}; one self-contained file must ship")
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"onnx.checker rejected the model: {error}") from None
    io_description = describe_io(model)
    names = [i["name"] for i in io_description["inputs"]]
    if names != list(expected_inputs):
        raise ExportError(f"ONNX inputs {names} differ from the features {list(expected_inputs)}")
    for entry in io_description["inputs"]:
        if entry["dims"] != expected_inputs[entry["name"]]:
            raise ExportError(f"input '{entry['name']}' has dimensions {entry['dims']}, expected {expected_inputs[entry['name']]}")
    if [o["dims"] for o in io_description["outputs"]] != [expected_output]:
        raise ExportError(f"output dimensions {io_description['outputs']} are not {expected_output}")


def parity_grid(max_len: int) -> list[tuple[int, int]]:
    """(batch, sequence length) pairs unlike the export example: batch 1, length 1, length max_len, a large batch."""
    return sorted({(1, 1), (1, max_len), (2, 1), (2, 2), (5, max_len), (257, max_len), (3, max(1, max_len // 2))})


def compare_with_pytorch(din: DIN, session: ort.InferenceSession, grid: list[tuple[int, int]], atol: float,
                         error: type[ExportError] = ExportError) -> dict[str, Any]:
    """ONNX Runtime against the plain PyTorch model (the source of truth, whatever graph was exported) over a grid
    of shapes, each with an all-padding first row and an out-of-vocabulary last row; raises `error` past the
    tolerance, on a wrong output shape or on a non-finite value."""
    wrapper = ProbabilityModel(in_form(din, "plain")).eval()
    rng = np.random.default_rng(1)
    worst = 0.0
    for batch, sequence in grid:
        feed = random_feed(din.inputs, batch, sequence, rng)
        (onnx_out,) = session.run([OUTPUT_NAME], feed)
        worst = max(worst, check_case(wrapper, din.inputs, feed, onnx_out, f"batch {batch}, length {sequence}", atol, error))
    return {"atol": atol, "max_abs_diff": worst, "cases": [list(c) for c in grid], "all_padding_row": True, "oov_row": True}


def check_case(wrapper: ProbabilityModel, inputs: ModelInputs, torch_feed: dict[str, np.ndarray], onnx_out: np.ndarray, case: str,
               atol: float, error: type[ExportError]) -> float:
    """One parity case: ONNX Runtime's probabilities against PyTorch's on `torch_feed` (one row per output);
    raises `error` on a wrong shape, a non-finite value or a difference past atol, else returns the difference."""
    with torch.inference_mode():
        torch_out = wrapper(*(torch.from_numpy(torch_feed[n]) for n in inputs.names)).numpy()
    if onnx_out.shape != torch_out.shape or not np.all(np.isfinite(onnx_out)):
        raise error(f"{case}: ONNX Runtime gave shape {onnx_out.shape} or non-finite values")
    difference = float(np.max(np.abs(onnx_out.astype(np.float64) - torch_out)))
    if difference > atol:
        raise error(f"{case}: ONNX Runtime and PyTorch differ by {difference:.3g} > {atol}")
    return difference


def verify_parity(din: DIN, path: Path, max_len: int, atol: float = ABSOLUTE_TOLERANCE) -> dict[str, Any]:
    """The export-time check: the file just written against PyTorch on parity_grid."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return compare_with_pytorch(din, session, parity_grid(max_len), atol)

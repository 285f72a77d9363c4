"""The KServe v2 / Open Inference Protocol's request and response bodies, as Triton, KServe and Seldon speak it:
JSON tensors, and Triton's binary tensor data extension (what `tritonclient.http` sends by default), where the
JSON header is followed by the raw bytes of the tensors that say `binary_data_size`.

Inputs are raw feature values, one tensor per feature named as in the manifest: INT64 or FP32 for IDs and numbers,
BYTES for text keys and for histories (each element a space-separated list of IDs, empty for no history).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from .errors import InputError
from .manifest import OUTPUT_NAME
from .schema import CategoricalFeature, FeatureSchema, NumericFeature

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMPY_TYPES = {"INT64": np.int64, "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT64": np.uint64,
               "UINT32": np.uint32, "UINT16": np.uint16, "UINT8": np.uint8, "FP64": np.float64, "FP32": np.float32,
               "FP16": np.float16, "BOOL": np.bool_}


SMALL_TENSOR = 64


class ProtocolError(ValueError):
    """The request body does not follow the protocol; the message says where."""


def datatype_of(feature: Any) -> str:
    """The datatype a client sends for a feature: BYTES for text keys and histories, FP32 for numbers, INT64 for IDs."""
    if isinstance(feature, NumericFeature):
        return "FP32"
    if isinstance(feature, CategoricalFeature) and feature.key_type == "int":
        return "INT64"
    return "BYTES"


def model_metadata(name: str, schema: FeatureSchema, versions: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "versions": [str(v) for v in versions or [1]], "platform": "din-runtime",
            "inputs": [{"name": f.name, "datatype": datatype_of(f), "shape": [-1]} for f in schema.features],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1]}]}


def _bytes_elements(name: str, raw: bytes) -> list[str]:
    """Triton's serialisation of a BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input '{name}': truncated BYTES element")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"input '{name}': truncated BYTES element")
        elements.append(raw[offset:offset + length].decode("utf-8", errors="replace"))
        offset += length
    return elements


def _tensor(entry: dict[str, Any], binary: bytes | None) -> Any:
    """One input tensor as the encoder takes it: a numpy array for numbers, a list of str for BYTES."""
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    if not isinstance(name, str) or not isinstance(shape, list) or len(shape) != 1:
        raise ProtocolError(f"input {name!r}: expected a name and a one-dimensional shape [batch], not {shape!r}")
    if datatype == "BYTES":
        if binary is not None:
            values: list[Any] = _bytes_elements(name, binary)
        else:
            values = ["" if v is None else v if isinstance(v, str) else " ".join(map(str, v)) if isinstance(v, list) else str(v)
                      for v in _flat(name, entry.get("data"))]
    elif datatype in NUMPY_TYPES:
        dtype = NUMPY_TYPES[datatype]
        if binary is not None:
            if len(binary) % np.dtype(dtype).itemsize:
                raise ProtocolError(f"input '{name}': {len(binary)} bytes is not a whole number of {datatype} values")
            values = np.frombuffer(binary, dtype=dtype)
        else:
            try:
                values = np.asarray(_flat(name, entry.get("data")), dtype=np.float64 if dtype in (np.float32, np.float16) else None)
            except (TypeError, ValueError):
                raise ProtocolError(f"input '{name}': data is not {datatype}") from None
    else:
        raise ProtocolError(f"input '{name}': datatype {datatype!r} is not supported")
    if len(values) != shape[0]:
        raise ProtocolError(f"input '{name}': shape [{shape[0]}] but {len(values)} values")
    if isinstance(values, np.ndarray) and len(values) <= SMALL_TENSOR:
        return values.tolist()  # one request's few values: the encoder's per-value path is quicker than numpy's calls
    return values


def _flat(name: str, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise ProtocolError(f"input '{name}': 'data' must be a list")
    return data


def id_lists(histories: list[str]) -> list[Any]:
    """Space-separated integer IDs as lists of ints, the form the encoder takes fastest; a history with anything
    else in it ('1_000', a word) stays text, for the encoder to judge and report with its row."""
    parsed: list[Any] = []
    for history in histories:
        try:
            parsed.append(history if "_" in history else [int(token) for token in history.split()])
        except ValueError:
            parsed.append(history)
    return parsed


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(columns for the encoder, the request's JSON header) from an infer request body."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, not {header_length!r}") from None
        if not 0 <= split <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {split} is outside the body's {len(body)} bytes")
        header_bytes, binary = body[:split], body[split:]
    else:
        header_bytes, binary = body, b""
    try:
        request = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"the request is not valid JSON ({error})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    columns: dict[str, Any] = {}
    offset = 0
    for entry in request["inputs"]:
        if not isinstance(entry, dict):
            raise ProtocolError("each input must be a JSON object")
        size = (entry.get("parameters") or {}).get("binary_data_size")
        chunk = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"input {entry.get('name')!r}: binary_data_size {size!r} runs past the body")
            chunk, offset = binary[offset:offset + size], offset + size
        columns[entry.get("name")] = _tensor(entry, chunk)
    return columns, request


def wants_binary_output(request: dict[str, Any]) -> bool:
    if (request.get("parameters") or {}).get("binary_data_output"):
        return True
    return any((output.get("parameters") or {}).get("binary_data") for output in request.get("outputs") or [] if isinstance(output, dict))


def infer_response(model: str, request: dict[str, Any], probabilities: np.ndarray, version: int = 1) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) of an infer response, binary when the request asked for it; it names the version that
    answered."""
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [len(probabilities)]}
    response: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": [output]}
    if "id" in request:
        response["id"] = request["id"]
    if not wants_binary_output(request):
        output["data"] = probabilities.astype(np.float64).tolist()
        return json.dumps(response).encode(), {}
    raw = probabilities.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(response).encode()
    return header + raw, {HEADER_LENGTH: str(len(header))}


def error_body(error: Exception) -> bytes:
    """The protocol's error object; InputError keeps its feature and row apart for clients that want them."""
    body: dict[str, Any] = {"error": str(error)}
    if isinstance(error, InputError):
        body.update(feature=error.feature, row=error.row, problem=error.problem)
    return json.dumps(body).encode()

"""The KServe v2 / Open Inference Protocol on the wire, as Triton, KServe and Seldon speak it: every request body
decoded into a typed request, every response body encoded from one envelope, every error one JSON line.

Infer and explain bodies are JSON tensors or Triton's binary tensor data extension (what `tritonclient.http` sends by
default: the JSON header, then the raw bytes of the tensors that say `binary_data_size`). Inputs are raw feature
values, one tensor per feature named as in the manifest: INT64 or FP32 for IDs and numbers, BYTES for text keys and
for histories (each element a space-separated list of IDs, empty for no history). Rank bodies are this server's own
extension: {"user": {...}, "candidates": {...}, "top_k": k, "explain": false}.

What is refused here, with a one-line ProtocolError (HTTP 400), before any model sees the request: a body over the
size limit (BodyTooLarge, 413), JSON that does not parse or nests deeper than MAX_JSON_DEPTH, an input named twice,
a shape that disagrees with its data, and a value outside its declared datatype's range (300 as INT8, 1e39 as FP32).
Nothing here imports a web framework: the server hands the body's chunks to `read_body`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError
from .manifest import OUTPUT_NAME
from .schema import CategoricalFeature, FeatureSchema, NumericFeature

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMPY_TYPES = {"INT64": np.int64, "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT64": np.uint64,
               "UINT32": np.uint32, "UINT16": np.uint16, "UINT8": np.uint8, "FP64": np.float64, "FP32": np.float32,
               "FP16": np.float16, "BOOL": np.bool_}
# Deepest JSON a request may hold: the protocol's own bodies nest at most five levels ({"inputs": [{"data": [[...]]}]}).
MAX_JSON_DEPTH = 32
# A request's tensors of at most this many values go to the encoder as Python lists: its per-value path is quicker
# than numpy's calls for one request's few values.
SMALL_TENSOR = 64


class ProtocolError(ValueError):
    """The request body does not follow the protocol; the message says where."""


class BodyTooLarge(ProtocolError):
    """The request body is larger than the server's limit (HTTP 413)."""


# -- reading ---------------------------------------------------------------------------------------------------------
async def read_body(declared_length: str | None, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body of a request, refused as soon as it is known to pass `limit` bytes: at once where the
    Content-Length header says so, else while it streams in."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise BodyTooLarge(f"the request body of {int(declared_length):,} bytes is larger than the limit of {limit:,}")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is larger than the limit of {limit:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _nesting_depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed JSON value (a scalar: 0), without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def loads(body: bytes) -> Any:
    """A JSON body parsed, refused in one line where it is not JSON or nests deeper than MAX_JSON_DEPTH."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"the request is not valid JSON ({error})") from None
    except RecursionError:
        raise ProtocolError(f"the request's JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    # Depth is bounded by the brackets in the body, so a body with few of them needs no walk.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _nesting_depth(value) > MAX_JSON_DEPTH:
        raise ProtocolError(f"the request's JSON nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _object(body: bytes, expected: str) -> dict[str, Any]:
    value = loads(body) if body.strip() else {}
    if not isinstance(value, dict):
        raise ProtocolError(f"the request must be a JSON object: {expected}")
    return value


# -- what a model's clients send ----------------------------------------------------------------------------------------
def datatype_of(feature: Any) -> str:
    """The datatype a client sends for a feature: BYTES for text keys and histories (the behaviours' times too, as
    space-separated numbers), FP32 for numbers, INT64 for IDs."""
    if isinstance(feature, NumericFeature):
        return "FP32"
    if isinstance(feature, CategoricalFeature) and feature.key_type == "int":
        return "INT64"
    return "BYTES"


@dataclass(frozen=True)
class Contract:
    """What a model's clients send, derived once from its schema: the histories of integer IDs (sent as BYTES of
    space-separated IDs, decoded straight into lists of ints, the form the encoder takes fastest)."""

    integer_histories: frozenset[str]

    @classmethod
    def of(cls, schema: FeatureSchema) -> Contract:
        return cls(frozenset(s.name for s in schema.sequences if schema[s.shares].key_type == "int"))


def model_metadata(name: str, schema: FeatureSchema, versions: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "versions": [str(v) for v in versions or [1]], "platform": "din-runtime",
            "inputs": [{"name": f.name, "datatype": datatype_of(f), "shape": [-1]} for f in schema.features]
            + [{"name": t.at, "datatype": "FP64", "shape": [-1]} for t in schema.times],  # each row's time, for its behaviours' ages
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1]}]}


# -- infer and explain requests ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InferRequest:
    """An infer (or explain) request: the columns for the encoder, the request's id, whether the client asked for
    the output as binary tensor data, and the time the store's histories are taken as of (`parameters.as_of`)."""

    columns: dict[str, Any]
    id: Any = None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    as_of: float | None = None


def _as_of(parameters: Any) -> float | None:
    """`parameters.as_of`: histories filled from the store hold only behaviours strictly before it."""
    if not isinstance(parameters, dict) or parameters.get("as_of") is None:
        return None
    value = parameters["as_of"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        raise ProtocolError(f"parameters.as_of must be a finite number (in the log's time units), not {value!r}")
    return float(value)


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


def _bytes_element(name: str, index: int, value: Any) -> str:
    """One JSON BYTES element as text: a string, a number, null (missing), or a history as a list of IDs."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if any(isinstance(v, (list, dict)) for v in value):
            raise ProtocolError(f"input '{name}', element {index}: a history is a flat list of IDs, not nested lists")
        return " ".join(map(str, value))
    if isinstance(value, dict):
        raise ProtocolError(f"input '{name}', element {index}: a BYTES element is text, a number or a list of IDs, not an object")
    return str(value)


def _checked_numbers(name: str, datatype: str, data: list[Any]) -> np.ndarray:
    """JSON values as an array of `datatype`'s kind, each checked against the datatype: integers within its range,
    floats within its finite range (null and NaN stand for missing numbers), booleans as true or false."""
    dtype = np.dtype(NUMPY_TYPES[datatype])
    if dtype.kind == "b":
        bad = next((i for i, v in enumerate(data) if not isinstance(v, bool)), None)
        if bad is not None:
            raise ProtocolError(f"input '{name}', element {bad}: {data[bad]!r} is not BOOL (true or false)")
        return np.asarray(data, dtype=np.bool_)
    if dtype.kind in "iu":
        bad = next((i for i, v in enumerate(data) if isinstance(v, bool) or not isinstance(v, int)), None)
        if bad is not None:
            raise ProtocolError(f"input '{name}', element {bad}: {data[bad]!r} is not an integer, as {datatype} needs")
        limits = np.iinfo(dtype)
        bad = next((i for i, v in enumerate(data) if not limits.min <= v <= limits.max), None)
        if bad is not None:
            raise ProtocolError(f"input '{name}', element {bad}: {data[bad]} is outside {datatype}'s range [{limits.min}, {limits.max}]")
        return np.asarray(data, dtype=np.int64 if dtype.kind == "i" or dtype.itemsize < 8 else np.uint64)
    bad = next((i for i, v in enumerate(data) if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))), None)
    if bad is not None:
        raise ProtocolError(f"input '{name}', element {bad}: {data[bad]!r} is not a number, as {datatype} needs")
    values = np.asarray([np.nan if v is None else v for v in data], dtype=np.float64)
    largest = float(np.finfo(dtype).max)
    outside = np.flatnonzero(np.abs(values) > largest)  # NaN compares False: a missing value
    if len(outside):
        raise ProtocolError(f"input '{name}', element {outside[0]}: {data[outside[0]]} is outside {datatype}'s range "
                            f"(magnitude at most {largest:.6g})")
    return values


def _tensor(entry: dict[str, Any], binary: bytes | None) -> Any:
    """One input tensor as the encoder takes it: a numpy array (or list, when small) for numbers, a list of str for BYTES."""
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    if not isinstance(shape, list) or len(shape) != 1 or isinstance(shape[0], bool) or not isinstance(shape[0], int) or shape[0] < 0:
        raise ProtocolError(f"input '{name}': expected a one-dimensional shape [batch], not {shape!r}")
    if datatype == "BYTES":
        if binary is not None:
            values: Any = _bytes_elements(name, binary)
        else:
            values = [_bytes_element(name, i, v) for i, v in enumerate(_data(name, entry))]
    elif datatype in NUMPY_TYPES:
        if binary is not None:
            itemsize = np.dtype(NUMPY_TYPES[datatype]).itemsize
            if len(binary) % itemsize:
                raise ProtocolError(f"input '{name}': {len(binary)} bytes is not a whole number of {datatype} values")
            values = np.frombuffer(binary, dtype=NUMPY_TYPES[datatype])
        else:
            values = _checked_numbers(name, datatype, _data(name, entry))
    else:
        raise ProtocolError(f"input '{name}': datatype {datatype!r} is not supported (one of BYTES, {', '.join(NUMPY_TYPES)})")
    if len(values) != shape[0]:
        raise ProtocolError(f"input '{name}': shape [{shape[0]}] but {len(values)} values")
    if isinstance(values, np.ndarray) and len(values) <= SMALL_TENSOR:
        return values.tolist()
    return values


def _data(name: str, entry: dict[str, Any]) -> list[Any]:
    data = entry.get("data")
    if not isinstance(data, list):
        raise ProtocolError(f"input '{name}': 'data' must be a list")
    return data


def _id_lists(histories: list[str]) -> list[Any]:
    """Space-separated integer IDs as lists of ints; a history with anything else in it ('1_000', a word) stays
    text, for the encoder to judge and report with its row."""
    parsed: list[Any] = []
    for history in histories:
        try:
            parsed.append(history if "_" in history else [int(token) for token in history.split()])
        except ValueError:
            parsed.append(history)
    return parsed


def _wants_binary_output(request: dict[str, Any]) -> bool:
    if (request.get("parameters") or {}).get("binary_data_output"):
        return True
    outputs = request.get("outputs") or []
    return any((output.get("parameters") or {}).get("binary_data") for output in outputs if isinstance(output, dict))


def decode_infer(body: bytes, header_length: str | None, contract: Contract) -> InferRequest:
    """An infer or explain request body (JSON, or JSON followed by binary tensor data) as an InferRequest."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, not {header_length!r}") from None
        if not 0 <= split <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {split} is outside the body's {len(body)} bytes")
        header, binary = body[:split], body[split:]
    else:
        header, binary = body, b""
    request = loads(header)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("the request's 'parameters' must be a JSON object")
    columns: dict[str, Any] = {}
    offset = 0
    for entry in request["inputs"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError("each input must be a JSON object with a 'name'")
        name = entry["name"]
        if name in columns:
            raise ProtocolError(f"input '{name}' is given twice; give each input once")
        size = (entry.get("parameters") or {}).get("binary_data_size") if isinstance(entry.get("parameters"), dict) else None
        chunk = None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"input '{name}': binary_data_size {size!r} runs past the body")
            chunk, offset = binary[offset:offset + size], offset + size
        columns[name] = _tensor(entry, chunk)
        if name in contract.integer_histories and isinstance(columns[name], list):
            columns[name] = _id_lists(columns[name])
    return InferRequest(columns, request.get("id"), _wants_binary_output(request), parameters, _as_of(parameters))


# -- rank and index requests ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankRequest:
    """A rank request: one user's features, the candidates' columns, how many to return, and whether to explain."""

    user: dict[str, Any]
    candidates: dict[str, Any]
    top_k: Any = None  # Predictor.rank checks it
    explain: bool = False
    id: Any = None
    as_of: float | None = None


def decode_rank(body: bytes) -> RankRequest:
    request = _object(body, '{"user": {...}, "candidates": {...}, "top_k": k}')
    if not isinstance(request.get("user"), dict) or not isinstance(request.get("candidates"), dict):
        raise ProtocolError('expected {"user": {...}, "candidates": {...}, "top_k": k}')
    explain = request.get("explain", False)
    if not isinstance(explain, bool):
        raise ProtocolError(f"'explain' must be true or false, not {explain!r}")
    return RankRequest(request["user"], request["candidates"], request.get("top_k"), explain, request.get("id"),
                       _as_of(request.get("parameters")))


def decode_events(body: bytes) -> list[Any]:
    """An events request ({"events": [...]}): the events as sent, for the store to check (stores.checked_events)."""
    request = _object(body, '{"events": [{"id": ..., "USER": ..., "ITEM": ..., "time": ...}, ...]}')
    if not isinstance(request.get("events"), list):
        raise ProtocolError('expected {"events": [...]}, a list of events')
    return request["events"]


def decode_index(body: bytes) -> bool:
    """The repository index request ({"ready": true} or an empty body): whether only ready versions are wanted."""
    ready = _object(body, '{"ready": true|false}').get("ready", False)
    if not isinstance(ready, bool):
        raise ProtocolError(f"'ready' must be true or false, not {ready!r}")
    return ready


# -- responses -----------------------------------------------------------------------------------------------------------
def envelope(model: str, version: int, request_id: Any = None, **fields: Any) -> dict[str, Any]:
    """Every model response's frame: the model and the version that answered, the request's id when it gave one."""
    frame: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request_id is not None:
        frame["id"] = request_id
    return {**frame, **fields}


def dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _floats(values: np.ndarray) -> list[float]:
    return values.astype(np.float64).tolist()


def infer_response(model: str, version: int, request: InferRequest, probabilities: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) of an infer response, binary where the request asked for it."""
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [len(probabilities)]}
    body = envelope(model, version, request.id, outputs=[output])
    if not request.binary_output:
        output["data"] = _floats(probabilities)
        return dumps(body), {}
    raw = probabilities.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = dumps(body)
    return header + raw, {HEADER_LENGTH: str(len(header))}


def explain_response(model: str, version: int, request: InferRequest, probabilities: np.ndarray,
                     weights: list[np.ndarray]) -> bytes:
    return dumps(envelope(model, version, request.id, probabilities=_floats(probabilities), weights=[_floats(w) for w in weights]))


def rank_response(model: str, version: int, request: RankRequest, order: np.ndarray, probabilities: np.ndarray,
                  weights: list[np.ndarray] | None) -> bytes:
    body = envelope(model, version, request.id, order=order.tolist(), probabilities=_floats(probabilities))
    if weights is not None:
        body["weights"] = [_floats(w) for w in weights]
    return dumps(body)


def error_body(error: Exception) -> bytes:
    """The protocol's error object: {"error": one line}; an InputError keeps its feature and row apart for clients
    that want them."""
    message = (str(error).splitlines() or [type(error).__name__])[0]
    body: dict[str, Any] = {"error": message}
    if isinstance(error, InputError):
        body.update(feature=error.feature, row=error.row, problem=error.problem)
    return dumps(body)

"""A Triton Inference Server model repository entry for a bundle, for Triton's ONNX Runtime backend.

Triton clients send encoded IDs, exactly the feed `din_runtime.Predictor.encode` returns, or, with raw_inputs,
raw IDs and numbers that the graph encodes itself (raw_inputs.py). Per-row inputs of shape [batch] are declared
as dims [1] reshaped to [] (Triton's form for a batch of scalars); histories as dims [-1], a variable length.
Dynamic batching merges requests whose history lengths match.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from din_runtime.manifest import MANIFEST_FILE, MODEL_FILE, RANKING_FILE, read_manifest, schema_of, verify_model_file

from ..config import TRITON_INSTANCES, TRITON_MAX_BATCH_SIZE, TRITON_THREADS
from ..files import staged_bundle
from .graphs import describe_io
from .raw_inputs import raw_input_model

TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "float64": "TYPE_FP64", "float16": "TYPE_FP16", "int32": "TYPE_INT32",
                "object": "TYPE_STRING"}


def quoted(text: str) -> str:
    """A protobuf text-format string literal: backslashes and double quotes escaped, UTF-8 kept as it is."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor(entry: dict) -> str:
    dims = entry["dims"][1:]
    shape = "dims: [ -1 ]" if dims else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
    return f'  {{\n    name: {quoted(entry["name"])}\n    data_type: {TRITON_TYPES[entry["dtype"]]}\n    {shape}\n  }}'


def config_text(name: str, io: dict, gpu: bool, max_batch_size: int, instances: int, threads: int, queue_delay_us: int) -> str:
    """config.pbtxt for a graph whose inputs and outputs `io` describes (describe_io's form)."""
    inputs = ",\n".join(_tensor(e) for e in io["inputs"])
    outputs = ",\n".join(_tensor(e) for e in io["outputs"])
    return f'''name: {quoted(name)}
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
{inputs}
]
output [
{outputs}
]
dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
}}
instance_group [
  {{
    count: {instances}
    kind: {"KIND_GPU" if gpu else "KIND_CPU"}
  }}
]
parameters {{
  key: "intra_op_thread_count"
  value: {{ string_value: "{threads}" }}
}}
parameters {{
  key: "inter_op_thread_count"
  value: {{ string_value: "1" }}
}}
'''


def write_repository(bundle: Path, repository: Path, name: str | None = None, gpu: bool = False,
                     max_batch_size: int = TRITON_MAX_BATCH_SIZE, instances: int = TRITON_INSTANCES, threads: int = TRITON_THREADS,
                     queue_delay_us: int = 100, raw_inputs: bool = False) -> Path:
    """Write repository/name/{config.pbtxt, 1/model.onnx}, and beside model.onnx the bundle's manifest.json and
    rank.onnx, so `din-runtime serve repository` serves the same folder; other models in the repository are left
    alone, and this one is replaced only once complete. raw_inputs: the graph takes raw IDs and numbers (raw_inputs.py)
    instead of the encoded indices din_runtime's encoder produces."""
    manifest = read_manifest(bundle)
    model_path = verify_model_file(bundle, manifest)
    name = name or bundle.resolve().name
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"model name {name!r} is not a plain folder name")
    repository.mkdir(parents=True, exist_ok=True)
    with staged_bundle(repository / name) as staging:
        (staging / "1").mkdir()
        if raw_inputs:
            model = raw_input_model(onnx.load(str(model_path)), schema_of(manifest))
            onnx.save(model, str(staging / "1" / MODEL_FILE))
            io = describe_io(model)
        else:  # with the manifest (and the ranking graph) beside it, the version folder is a bundle din-runtime serves too
            shutil.copy2(model_path, staging / "1" / MODEL_FILE)
            shutil.copy2(bundle / MANIFEST_FILE, staging / "1" / MANIFEST_FILE)
            if manifest.get("ranking") is not None:
                shutil.copy2(verify_model_file(bundle, manifest, "ranking"), staging / "1" / RANKING_FILE)
            io = manifest["onnx"]
        (staging / "config.pbtxt").write_text(config_text(name, io, gpu, max_batch_size, instances, threads, queue_delay_us),
                                              encoding="utf-8")
    return repository / name

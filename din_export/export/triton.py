"""A Triton Inference Server model repository entry for a bundle, for Triton's ONNX Runtime backend.

Triton clients send encoded IDs, exactly the feed `din_runtime.Predictor.encode` returns. Per-row inputs of
shape [batch] are declared as dims [1] reshaped to [] (Triton's form for a batch of scalars); histories as
dims [-1], a variable length. Dynamic batching merges requests whose history lengths match.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from din_runtime.manifest import MODEL_FILE, read_manifest, verify_model_file

from ..files import staged_bundle

TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32"}


def _tensor(entry: dict) -> str:
    dims = entry["dims"][1:]
    shape = "dims: [ -1 ]" if dims else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
    return f'  {{\n    name: "{entry["name"]}"\n    data_type: {TRITON_TYPES[entry["dtype"]]}\n    {shape}\n  }}'


def config_text(name: str, manifest: dict, gpu: bool, max_batch_size: int, instances: int, threads: int, queue_delay_us: int) -> str:
    inputs = ",\n".join(_tensor(e) for e in manifest["onnx"]["inputs"])
    outputs = ",\n".join(_tensor(e) for e in manifest["onnx"]["outputs"])
    return f'''name: "{name}"
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


def write_repository(bundle: Path, repository: Path, name: str | None = None, gpu: bool = False, max_batch_size: int = 4096,
                     instances: int = 1, threads: int = 2, queue_delay_us: int = 100) -> Path:
    """Write repository/name/{config.pbtxt, 1/model.onnx}; other models in the repository are left alone, and
    this one is replaced only once complete."""
    manifest = read_manifest(bundle)
    model_path = verify_model_file(bundle, manifest)
    name = name or bundle.resolve().name
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"model name {name!r} is not a plain folder name")
    repository.mkdir(parents=True, exist_ok=True)
    with staged_bundle(repository / name) as staging:
        (staging / "1").mkdir()
        shutil.copy2(model_path, staging / "1" / MODEL_FILE)
        (staging / "config.pbtxt").write_text(config_text(name, manifest, gpu, max_batch_size, instances, threads, queue_delay_us),
                                              encoding="utf-8")
    return repository / name

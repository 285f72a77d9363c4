"""Session creation time with and without the offline (basic, portable) optimisation saved into the bundle."""

from pathlib import Path

import onnxruntime as ort
import pytest

from din_export.export.rebuild import export_bundle


@pytest.fixture(scope="module")
def graphs(reference_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("load")
    export_bundle(reference_bundle, folder / "optimized", optimize=True)
    return {"as-exported": reference_bundle / "model.onnx", "optimized": folder / "optimized" / "model.onnx"}


@pytest.mark.parametrize("graph", ["as-exported", "optimized"])
def test_session_load(benchmark, graphs: dict[str, Path], graph: str) -> None:
    benchmark.group = "session load"
    session = benchmark(ort.InferenceSession, str(graphs[graph]), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probability"]

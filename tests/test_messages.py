"""Each thing that happens is said once, in one voice: no message printed twice, no ONNX Runtime console error
before our own exception."""

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

PROBE = """
import logging, sys
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
from din_runtime import Predictor, ProviderError
try:
    predictor = Predictor.load(sys.argv[1], providers="cuda", fallback=sys.argv[2] == "fallback")
    print("providers", predictor.providers[0], predictor.ranking_session.get_providers()[0])
except ProviderError as error:
    print("ProviderError", error)
"""


def probe(bundle: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, str(bundle), mode], capture_output=True, text=True, timeout=120)


def test_cuda_unusable_is_reported_once_without_onnx_runtimes_console_error(bundle: Path) -> None:
    strict, lenient = probe(bundle, "strict"), probe(bundle, "fallback")
    for result in (strict, lenient):
        assert result.returncode == 0, result.stderr
        assert "onnxruntime" not in result.stderr and "[E:" not in result.stderr  # ONNX Runtime's own red lines
    if "CUDAExecutionProvider" not in ort.get_available_providers():  # a CPU-only build: refused before any session
        assert strict.stdout.startswith("ProviderError") and "offers only" in strict.stdout
        return
    if strict.stdout.startswith("providers CUDAExecutionProvider"):  # a working GPU: nothing to report
        assert lenient.stdout.startswith("providers CUDAExecutionProvider") and lenient.stderr == ""
        return
    assert strict.stdout.startswith("ProviderError") and "check the CUDA and cuDNN libraries" in strict.stdout
    assert lenient.stdout.strip() == "providers CPUExecutionProvider CPUExecutionProvider"
    warnings = [line for line in lenient.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "fallback=True" in warnings[0], lenient.stderr  # one warning, not one per graph


@pytest.mark.slow
def test_int8_export_prints_no_quantiser_advice(bundle: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "din_export", "export", str(bundle), "--out", str(tmp_path / "int8"),
                             "--precision", "int8", "--force"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pre-processing" not in result.stderr and result.stderr.strip() == "", result.stderr
    assert result.stdout.count("bundle written") == 1

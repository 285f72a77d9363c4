"""benchmarks/gpu_check.py runs wherever the tests run: on a machine without a GPU it says so plainly and still
measures its CPU side; with one, it must also find CUDA and CPU predictions within 1e-5."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


@pytest.mark.slow
def test_the_gpu_check_runs_and_says_what_it_found(tmp_path: Path) -> None:
    report_path = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(HERE / "gpu_check.py"), "--samples", "2000", "--models", "din", "--json", str(report_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert set(report["training_samples_per_second"]) == set(report["serving"]) == {"din"}  # the whole family on a GPU machine
    assert report["training_samples_per_second"]["din"]["cpu"] > 0 and report["serving"]["din"]["cpu"]["max_abs_diff"] == 0
    assert set(report["serving"]["din"]["cpu"]["ms"]) == {"1", "256", "4096"}
    if torch.cuda.is_available():
        assert report["training_samples_per_second"]["din"]["cuda"] > 0
    if not torch.cuda.is_available():
        assert "no GPU found" in result.stdout

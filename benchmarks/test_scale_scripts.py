"""The scale scripts behind the README's "Logs at scale" tables run at a small size on every CI run, so they
cannot rot between the runs that measure them (1M-100M events take far longer than CI's budget)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


def table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines() if line.startswith("| 20,000 |")]


def run(script: str, *args: str, tmp_path: Path) -> str:
    result = subprocess.run([sys.executable, str(HERE / script), *args, "--scratch", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_prepare_scaling_measures_both_layouts(tmp_path: Path) -> None:
    rows = table_rows(run("prepare_scaling.py", "20000", "--inline-up-to", "20000", tmp_path=tmp_path))
    assert [row[1] for row in rows] == ["reference", "inline"]
    assert all(row[2] == "40,000" and float(row[3]) > 0 and int(row[5].replace(",", "")) > 0 for row in rows)


def test_prepare_engines_runs_both_engines_to_the_same_samples(tmp_path: Path) -> None:
    pytest.importorskip("pyspark", reason="the spark extra is not installed: pip install -e '.[spark]'")
    if shutil.which("java") is None:
        pytest.skip("no Java runtime for Spark: apt-get install -y openjdk-17-jre-headless")
    rows = table_rows(run("prepare_engines.py", "20000", tmp_path=tmp_path))
    assert [row[1] for row in rows] == ["duckdb", "spark"]
    assert all(row[2] == "40,000" and float(row[3]) > 0 and int(row[6].replace(",", "")) > 0 for row in rows)


def test_training_at_scale_trains_from_both_layouts(tmp_path: Path) -> None:
    rows = table_rows(run("training_at_scale.py", "20000", "--inline-up-to", "20000", "--epoch-samples", "2000", tmp_path=tmp_path))
    assert [row[1] for row in rows] == ["reference", "inline"]
    assert rows[0][2] == rows[1][2]  # the same training samples from either layout
    assert all(int(row[4].replace(",", "")) > 0 and int(row[7].replace(",", "")) > 0 for row in rows)

"""benchmarks/daily_retraining.py, kept from rotting: one day of a small generated log, stale, cold and warm, through
the real CLI, and its tables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_one_day_of_a_small_drifting_log_gives_all_three_models_and_the_tables(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(HERE / "daily_retraining.py"), "--data", "generated", "--events", "6000", "--seeds", "0",
                             "--days", "1", "--epochs", "2", "--json", str(rows_file)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(rows_file.read_text())
    assert row["day"] == 1 and all(0.5 < row[k] <= 1 for k in ("stale_auc", "cold_auc", "warm_auc"))
    assert row["gained"]["item_id"] > 0  # the drifting catalogue brought items the first stretch never saw
    assert 0 < row["warm_seconds"] and 0 < row["cold_seconds"]
    assert "| 1 |" in result.stdout and "cold − warm AUC" in result.stdout and "CPU:" in result.stdout
    rendered = subprocess.run([sys.executable, str(HERE / "daily_retraining.py"), "--render", str(rows_file), "--data", "generated"],
                              capture_output=True, text=True, timeout=120, check=True)
    assert "| generated | 0 |" in rendered.stdout

"""`prepare` on a generated log of 1M events: events per second and peak memory, in a process of its own."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from din_export.data.synthetic import LOG_SPEC_PATH, generate_log

EVENTS = 1_000_000
RUNNER = Path(__file__).parent / "prepare_run.py"


@pytest.fixture(scope="module")
def million_event_log(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("million")
    paths = [folder / f"{name}.parquet" for name in ("log", "items", "users")]
    for table, path in zip(generate_log(EVENTS, seed=0), paths, strict=True):
        pq.write_table(table, path)
    return paths


@pytest.mark.slow
def test_prepare_one_million_events(benchmark, million_event_log: list[Path], tmp_path: Path) -> None:
    runs = []

    def run() -> None:
        out = tmp_path / f"out-{len(runs)}"
        result = subprocess.run([sys.executable, str(RUNNER), str(LOG_SPEC_PATH), *map(str, million_event_log), str(out)],
                                capture_output=True, text=True, check=True)
        runs.append(json.loads(result.stdout))

    benchmark.pedantic(run, rounds=1, iterations=1)
    best = max(runs, key=lambda r: r["events_per_second"])
    benchmark.extra_info.update(best)
    assert best["events"] == EVENTS and best["samples"] == 2 * EVENTS  # one negative per positive

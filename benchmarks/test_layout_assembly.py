"""Training input from the two layouts of `prepare`: batch assembly (the step that turns sample rows into the
model's input arrays, 512 at a time in shuffled order) and the memory of the training split's arrays, on a
generated 1M-event log prepared both ways. Inline: every sample's padded history copied in the split; reference:
the encoded sequence store once and each batch's windows gathered from it.

    .venv/bin/python -m pytest -n 0 benchmarks/test_layout_assembly.py -s
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from din_export.data.prepare import prepare
from din_export.data.prepared import SPEC_FILE
from din_export.data.rules import Sources
from din_export.data.source import DataSource
from din_export.data.spec import load_spec
from din_export.data.splits import load_data
from din_export.data.synthetic import LOG_SPEC_PATH, generate_log

EVENTS = 1_000_000
TEST_EVENTS = 100_000  # with --benchmark-disable (CI runs the benchmarks once as tests): the same steps, smaller
BATCH = 512
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Sources:
    folder = tmp_path_factory.mktemp("layout-log")
    events = TEST_EVENTS if request.config.getoption("benchmark_disable") else EVENTS
    for name, table in zip(("log", "items", "users"), generate_log(events, seed=0), strict=True):
        pq.write_table(table, folder / f"{name}.parquet")
    return Sources(folder / "log.parquet", folder / "items.parquet", folder / "users.parquet")


@pytest.mark.parametrize("layout", ["inline", "reference"])
def test_batch_assembly(benchmark, log: Sources, tmp_path: Path, layout: str) -> None:
    out = tmp_path / layout
    prepare(LOG_SPEC_PATH, log, out, layout=layout)
    data = load_data(DataSource(out / "train.parquet", out / "valid.parquet", out / "test.parquet"), load_spec(out / SPEC_FILE), 0)
    split = data.splits["train"]
    order = np.random.default_rng(0).permutation(len(split))

    def epoch() -> int:
        return sum(len(split.rows(order[i:i + BATCH])[split.sequences[0]]) for i in range(0, len(split), BATCH))

    seconds = []

    def timed() -> int:
        started = time.perf_counter()
        rows = epoch()
        seconds.append(time.perf_counter() - started)
        return rows

    assert benchmark.pedantic(timed, rounds=3, iterations=1) == len(split)
    arrays = sum(a.nbytes for a in split.feed.values()) + sum(w.values.nbytes + w.start.nbytes + w.end.nbytes for w in split.windows.values())
    benchmark.extra_info.update({"samples": len(split), "samples/s": round(len(split) / min(seconds)), "split MiB": round(arrays / 2**20)})
    print(f"\n{layout}: {benchmark.extra_info}")

"""`din-runtime serve` under load: 1, 8 and 32 concurrent clients (asyncio tasks of tritonclient.http.aio, binary
tensors, in this process) each sending a fixed number of requests of one row or of 64 rows, against a server with
dynamic batching (--max-batch 256, no extra delay) and one without (--max-batch 1), both running at once and
measured alternately (on, off, on, off, ...) so that the machine's drift hits both alike. Reported per case:
rows per second and the p50 / p99 request latency (median over rounds). The reference bundle, 2 ONNX Runtime
threads per server; client and servers share the machine's cores.

    .venv/bin/python -m pytest -n 0 benchmarks/test_server_load.py -s --benchmark-json=serve.json
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_server import MODEL, triton_inputs
from thread_pools import timed_load

from din_export.data.synthetic import generate
from din_runtime import Predictor
from helpers import start_server

CLIENTS = (1, 8, 32)
ROWS = (1, 64)
REQUESTS_PER_CLIENT = 20
ROUNDS = 3
SERVERS = {"batching": ("--max-batch", "256"), "no batching": ("--max-batch", "1")}


@pytest.fixture(scope="module")
def servers(reference_bundle: Path):
    started = {name: start_server(reference_bundle, MODEL, *options, "--threads", "2") for name, options in SERVERS.items()}
    yield {name: url for name, (_, url) in started.items()}
    for process, _ in started.values():
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("clients", CLIENTS)
def test_server_load(benchmark, servers: dict[str, str], reference_bundle: Path, clients: int, rows: int) -> None:
    predictor = Predictor.load(reference_bundle, providers="cpu")
    table = generate(max(rows * 8, 64), seed=5).to_pydict()
    requests = [triton_inputs({name: column[start:start + rows] for name, column in table.items()}, predictor)
                for start in range(0, rows * 8, rows)]
    results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in servers}

    def alternate() -> None:
        for name, url in servers.items():
            results[name].append(asyncio.run(timed_load(url, [MODEL], requests, clients, REQUESTS_PER_CLIENT)))

    benchmark.pedantic(alternate, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    summary = {}
    for name, runs in results.items():
        total_rows = clients * REQUESTS_PER_CLIENT * rows
        summary[name] = {"rows/s": round(statistics.median(total_rows / seconds for seconds, _ in runs)),
                         "p50 ms": round(statistics.median(float(np.percentile(lat, 50)) * 1e3 for _, lat in runs), 2),
                         "p99 ms": round(statistics.median(float(np.percentile(lat, 99)) * 1e3 for _, lat in runs), 2)}
    summary["throughput, batching / none"] = round(summary["batching"]["rows/s"] / summary["no batching"]["rows/s"], 2)
    benchmark.extra_info.update(summary)
    print(f"\n{clients} clients x {rows} rows: {summary}", file=sys.stderr)
    assert all(len(latencies) == clients * REQUESTS_PER_CLIENT for runs in results.values() for _, latencies in runs)


def test_the_thread_pool_script_serves_one_and_three_models_each_way() -> None:
    """benchmarks/thread_pools.py at a small size, so it cannot rot between the runs that measure it."""
    script = Path(__file__).parent / "thread_pools.py"
    result = subprocess.run([sys.executable, str(script), "--rounds", "1", "--clients", "3", "--requests", "2", "--rows", "1", "8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in result.stdout.splitlines() if line[:3] in ("| 1", "| 8")]
    assert [row[:2] for row in table] == [["1", "1"], ["1", "3"], ["8", "1"], ["8", "3"]]
    assert all(float(row[2].replace(",", "")) > 0 and float(row[3].replace(",", "")) > 0 for row in table)

"""Rolling a new version in under load: 32 concurrent single-row clients (asyncio tasks of tritonclient.http.aio,
each its own connection, sending without pause) against `din-runtime serve REPO --poll 1`, the reference bundle,
while new versions are published (copied into a hidden folder, renamed into place) one after another. Reported:
p50 / p99 request latency in the steady windows and in the swap windows (from the folder's rename until a second
after the first response of the new version), their ratio, and each swap's time (rename -> first response from
the new version). Steady and swap windows alternate in one run, so drift hits both alike.

    .venv/bin/python -m pytest -n 0 benchmarks/test_swap_latency.py -s --benchmark-json=swap.json
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.http.aio as aioclient
from machine import cpu_model
from test_server import MODEL, triton_inputs

from din_export.data.synthetic import generate
from helpers import start_server

CLIENTS = 32
SWAPS = 3
STEADY_SECONDS = 3.0
AFTER_SWAP_SECONDS = 1.0
POLL_SECONDS = "1"


def publish(source: Path, model_folder: Path, version: int) -> None:
    staging = model_folder / f".incoming-{version}"
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("weights.pt", "training.png"))
    os.replace(staging, model_folder / str(version))


async def run(url: str, model_folder: Path, bundle: Path) -> dict:
    rows = generate(64, seed=5).to_pydict()
    requests = [triton_inputs({name: column[i:i + 1] for name, column in rows.items()}, None) for i in range(64)]
    answers: list[tuple[float, float, str]] = []  # (start, latency, version)
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def client(i: int) -> None:
        connection = aioclient.InferenceServerClient(url)
        try:
            k = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    result = await connection.infer(MODEL, requests[(i + k) % len(requests)])
                    answers.append((started, time.monotonic() - started, result.get_response()["model_version"]))
                except Exception as error:  # noqa: BLE001 - every failure counts
                    failures.append(error)
                k += 1
        finally:
            await connection.close()

    tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
    windows: list[tuple[str, float, float]] = []
    swap_seconds: list[float] = []
    await asyncio.sleep(1.0)  # connections open, servers warm
    for swap in range(SWAPS):
        begin = time.monotonic()
        await asyncio.sleep(STEADY_SECONDS)
        windows.append(("steady", begin, time.monotonic()))
        version = swap + 2
        published = time.monotonic()
        await asyncio.to_thread(publish, bundle, model_folder, version)
        while not any(v == str(version) for _, _, v in answers[-CLIENTS * 4:]):
            if time.monotonic() - published > 60:
                stop.set()
                raise AssertionError(f"version {version} never answered")
            await asyncio.sleep(0.01)
        first = min(start + latency for start, latency, v in answers if v == str(version))
        swap_seconds.append(first - published)
        await asyncio.sleep(AFTER_SWAP_SECONDS)
        windows.append(("swap", published, first + AFTER_SWAP_SECONDS))
    stop.set()
    await asyncio.gather(*tasks)

    def latencies(kind: str) -> np.ndarray:
        return np.array([latency for start, latency, _ in answers
                         if any(k == kind and a <= start < b for k, a, b in windows)]) * 1e3

    steady, during = latencies("steady"), latencies("swap")
    return {"failed": len(failures), "requests": len(answers),
            "steady p50 ms": round(float(np.percentile(steady, 50)), 2), "steady p99 ms": round(float(np.percentile(steady, 99)), 2),
            "swap p50 ms": round(float(np.percentile(during, 50)), 2), "swap p99 ms": round(float(np.percentile(during, 99)), 2),
            "p99 swap / steady": round(float(np.percentile(during, 99) / np.percentile(steady, 99)), 2),
            "swap seconds": [round(s, 2) for s in swap_seconds], "cpu": cpu_model()}


def test_swap_under_load(benchmark, reference_bundle: Path, tmp_path: Path) -> None:
    model_folder = tmp_path / "repo" / MODEL
    publish(reference_bundle, model_folder, 1)
    process, url = start_server(tmp_path / "repo", None, "--poll", POLL_SECONDS, "--threads", "2")
    try:
        result = benchmark.pedantic(lambda: asyncio.run(run(url, model_folder, reference_bundle)), rounds=1, iterations=1)
    finally:
        process.terminate()
        process.wait(timeout=30)
    benchmark.extra_info.update(result)
    print(f"\n{result}", file=sys.stderr)
    assert result["failed"] == 0 and result["requests"] > 100
    assert max(result["swap seconds"]) < 10  # the goal (2 s at a 1 s poll) is reported, not asserted on a shared machine

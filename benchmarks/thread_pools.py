"""`din-runtime serve` with one shared ONNX Runtime thread pool (`--thread-pool shared`, the default) against a
pool per session (`per-session`, what every server did before), with one model loaded and with three, all four
servers running at once, 2 threads each, and measured alternately round by round (so the machine's drift hits all
alike): rows per second when --clients concurrent clients (asyncio tasks of tritonclient.http.aio, in this
process) each send --requests requests of --rows rows (each size in turn), spread over the server's models. The reference-sized DIN
(embedding 18, attention 80-40, MLP 200-80) on the built-in data, 50 behaviours; median of --rounds rounds.

    python benchmarks/thread_pools.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tritonclient.http.aio as aioclient
from machine import cpu_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from test_server import triton_inputs  # noqa: E402

from din_export.data.synthetic import generate  # noqa: E402
from din_runtime import Predictor  # noqa: E402
from helpers import build_bundle, start_server  # noqa: E402 - the tests' helpers: a bundle, a server on a free port

POOLS = ("shared", "per-session")


async def timed_load(url: str, models: list[str], requests: list, clients: int, per_client: int) -> tuple[float, list[float]]:
    """(seconds for all timed requests, each timed request's latency in seconds) of `clients` concurrent clients,
    client i sending `per_client` requests to model i mod len(models). Every client first opens its connection with
    one untimed request, and the clock starts when all have: steady state, as services that keep their connections
    see it, not dozens of TCP handshakes at once."""
    latencies: list[float] = []
    ready = asyncio.Barrier(clients + 1)

    async def client(i: int) -> None:
        connection = aioclient.InferenceServerClient(url)
        model = models[i % len(models)]
        try:
            await connection.infer(model, requests[i % len(requests)])
            await ready.wait()
            for k in range(per_client):
                started = time.perf_counter()
                result = await connection.infer(model, requests[(i + k) % len(requests)])
                latencies.append(time.perf_counter() - started)
                assert result.as_numpy("probability") is not None
        finally:
            await connection.close()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await ready.wait()
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--requests", type=int, default=20, help="requests per client per round")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64], help="rows per request, each size measured")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; {args.clients} clients x {args.requests} requests per round, 2 threads per server")
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as scratch:
        bundle = build_bundle(Path(scratch) / "din", samples=2000, epochs=1, embedding_dim=18, attention_hidden=(80, 40),
                              mlp_hidden=(200, 80), mlp_activation="prelu")
        predictor = Predictor.load(bundle, providers="cpu")
        table = generate(max(args.rows) * 8, seed=5).to_pydict()
        requests = {rows: [triton_inputs({name: column[start:start + rows] for name, column in table.items()}, predictor)
                           for start in range(0, rows * 8, rows)] for rows in args.rows}
        servers = {}
        try:
            for pool in POOLS:
                for count in (1, 3):
                    repo = Path(scratch) / f"repo-{pool}-{count}"
                    models = [f"m{i}" for i in range(count)]
                    for model in models:
                        shutil.copytree(bundle, repo / model / "1")
                    process, url = start_server(repo, None, "--threads", "2", "--thread-pool", pool)
                    processes.append(process)
                    servers[pool, count] = (url, models)
            rates: dict[tuple[int, str, int], list[float]] = {(rows, *key): [] for rows in args.rows for key in servers}
            for _ in range(args.rounds):
                for rows in args.rows:
                    for (pool, count), (url, models) in servers.items():
                        seconds, _ = asyncio.run(timed_load(url, models, requests[rows], args.clients, args.requests))
                        rates[rows, pool, count].append(args.clients * args.requests * rows / seconds)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)
    print(f"\nrows/s, median of {args.rounds} alternating rounds\n")
    print("| rows per request | models loaded | shared pool | a pool per session | shared / per session |\n|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        for count in (1, 3):
            shared, own = (statistics.median(rates[rows, pool, count]) for pool in POOLS)
            print(f"| {rows} | {count} | {shared:,.0f} | {own:,.0f} | {shared / own:.2f}x |")


if __name__ == "__main__":
    main()

"""The behaviour store in the server (issue 32): what a request by user ID alone costs against the same request with
the user's history and attributes in its body, and how fast events go in over HTTP, on SQLite and on Redis.

One server per backend, MovieLens-100k's log loaded into its store (`din-export events load`), the MovieLens DIN
bundle. Rank requests of 1,000 candidates for one user at a time, over one kept-alive connection, the two forms
alternating request by request (by ID, in body, by ID, ...) so drift hits both alike; p50 and p99 latency of
each, and their ratio. Events: POST /v2/events one event per request and 100 per request, alternating rounds.

    python -m pytest -n 0 benchmarks/test_store_serving.py -s --benchmark-json=store.json
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from machine import cpu_model

from din_export.cli import main
from din_runtime.stores import open_store
from helpers import ML100K, ML100K_RECIPE, need_ml100k, start_redis, start_server

pytestmark = pytest.mark.slow  # servers, stores and a trained MovieLens bundle: the full run, not the inner loop
BACKENDS = ("sqlite", "redis")
CANDIDATES = 1000
AS_OF = 9.0e8  # after every MovieLens rating: the whole history, its ages taken at this time
USERS = 40  # requests per form per round: one per user, users in turn
ROUNDS = 10
EVENT_BATCHES = {1: 200, 100: 20}  # events per request: requests per round


class Client:
    """One kept-alive HTTP connection: what a ranking service holds to its model server."""

    def __init__(self, url: str) -> None:
        host, port = url.split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: bytes) -> tuple[float, dict]:
        started = time.perf_counter()
        self.connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        answer = json.loads(response.read())
        seconds = time.perf_counter() - started
        assert response.status == 200, answer
        return seconds, answer


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ml100k_bundle: Path) -> Iterator[tuple[str, str, str]]:
    """(backend, server address, store URL): a server on a store holding MovieLens-100k's log."""
    need_ml100k()
    folder = tmp_path_factory.mktemp(f"store-{request.param}")
    redis = None
    if request.param == "redis":
        redis, port = start_redis(folder)
        store_url = f"redis://127.0.0.1:{port}/0"
    else:
        store_url = f"sqlite:///{folder / 'store.db'}"
    result = CliRunner().invoke(main, ["events", "load", "--recipe", str(ML100K_RECIPE), "--log", str(ML100K / "ml-100k.inter"),
                                       "--items", str(ML100K / "ml-100k.item"), "--users", str(ML100K / "ml-100k.user"),
                                       "--store", store_url])
    assert result.exit_code == 0, result.output
    process, url = start_server(ml100k_bundle, "ml", "--store", store_url, "--threads", "2")
    yield request.param, url, store_url
    process.terminate()
    process.wait(timeout=30)
    if redis is not None:
        redis.terminate()
        redis.wait(timeout=30)


def rank_bodies(store_url: str, items_path: Path) -> list[tuple[bytes, bytes]]:
    """Per user: (the request by user ID alone, the same request with the history and attributes in its body, as
    the store holds them now), 1,000 candidates each."""
    items = pq.read_table(items_path)
    rng = np.random.default_rng(0)
    store = open_store(store_url)
    try:
        users = list(range(1, USERS + 1))
        histories, attributes = store.histories(users, [AS_OF] * USERS, 50), store.user_values(users)
    finally:
        store.close()
    bodies = []
    for user, history, values in zip(users, histories, attributes, strict=True):
        chosen = items.take(rng.choice(items.num_rows, CANDIDATES, replace=False))
        candidates = {"item_id": chosen.column("item_id").to_pylist(), "release_year": chosen.column("release_year").to_pylist()}
        by_id = {"user": {"user_id": user}, "candidates": candidates, "parameters": {"as_of": AS_OF}}
        in_body = {"user": {"user_id": user, "hist_item_id": history.items[-50:], "hist_time": history.times[-50:], "event_time": AS_OF,
                            **values}, "candidates": candidates}
        bodies.append((json.dumps(by_id).encode(), json.dumps(in_body).encode()))
    return bodies


def test_rank_by_user_id_against_history_in_body(benchmark, server: tuple[str, str, str], ml100k_samples: Path) -> None:
    backend, url, store_url = server
    bodies = rank_bodies(store_url, ml100k_samples / "items.parquet")
    client = Client(url)
    latencies: dict[str, list[float]] = {"by ID": [], "in body": []}
    for by_id, in_body in bodies[:3]:  # warm: sessions, connection, the store's pages
        client.post("/v2/models/ml/rank", by_id), client.post("/v2/models/ml/rank", in_body)

    def alternate() -> None:
        for by_id, in_body in bodies:
            seconds, from_store = client.post("/v2/models/ml/rank", by_id)
            latencies["by ID"].append(seconds)
            seconds, from_body = client.post("/v2/models/ml/rank", in_body)
            latencies["in body"].append(seconds)
            assert from_store["order"] == from_body["order"]  # the same user side, whichever way it came
            np.testing.assert_allclose(from_store["probabilities"], from_body["probabilities"], rtol=0, atol=1e-6)

    benchmark.pedantic(alternate, rounds=ROUNDS, iterations=1)
    summary = {name: {"p50 ms": round(float(np.percentile(values, 50)) * 1e3, 2), "p99 ms": round(float(np.percentile(values, 99)) * 1e3, 2)}
               for name, values in latencies.items()}
    summary["p50 by ID / in body"] = round(summary["by ID"]["p50 ms"] / summary["in body"]["p50 ms"], 3)
    summary["p99 by ID / in body"] = round(summary["by ID"]["p99 ms"] / summary["in body"]["p99 ms"], 3)
    summary.update(requests=len(latencies["by ID"]), cpu=cpu_model())
    benchmark.extra_info.update(summary)
    print(f"\n{backend}: rank of {CANDIDATES} candidates: {summary}", file=sys.stderr)


def test_events_ingest_over_http(benchmark, server: tuple[str, str, str]) -> None:
    backend, url, _ = server
    client = Client(url)
    sent = {size: 0 for size in EVENT_BATCHES}
    seconds = {size: 0.0 for size in EVENT_BATCHES}
    counter = iter(range(10**9))

    def alternate() -> None:
        for size, requests in EVENT_BATCHES.items():
            batches = [json.dumps({"events": [{"id": f"{backend}-{k}", "user_id": 2000 + k % 500, "item_id": 1 + k % 1682,
                                               "time": 1.0e9 + k} for k in (next(counter) for _ in range(size))]}).encode()
                       for _ in range(requests)]
            started = time.perf_counter()
            for body in batches:
                _, answer = client.post("/v2/events", body)
                assert answer == {"accepted": size, "duplicates": 0}
            seconds[size] += time.perf_counter() - started
            sent[size] += size * requests

    benchmark.pedantic(alternate, rounds=ROUNDS, iterations=1)
    summary = {f"{size} per request: events/s": round(sent[size] / seconds[size]) for size in EVENT_BATCHES}
    summary.update(events=sum(sent.values()), cpu=cpu_model())
    benchmark.extra_info.update(summary)
    print(f"\n{backend}: events over HTTP: {summary}", file=sys.stderr)


def test_bulk_ingest_script_runs_both_backends(tmp_path: Path) -> None:
    """benchmarks/store_ingest.py, whose figures are on the results page, at a size CI affords."""
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "store_ingest.py"), "20000", "--scratch", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.strip("|").split("|") for line in result.stdout.splitlines() if line.startswith("| 20,000 |")]
    assert [row[1].strip() for row in rows] == list(BACKENDS)
    assert all(int(row[3].replace(",", "")) > 0 and int(row[5].replace(",", "")) == 20_000 for row in rows)

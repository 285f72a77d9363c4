"""The behaviour store: histories served from it are the ones `prepare` built (every MovieLens-100k test sample, as
of its time), and events are stored as the issue asks: idempotent retries, out-of-order events placed by time,
all-or-nothing batches, a cap per user, durable across a restart, concurrent writers and readers."""

from __future__ import annotations

import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_export.data.samples import raw_columns, read_table
from din_export.data.spec import load_spec
from din_runtime import InputError, Predictor
from din_runtime.stores import StoreError, StoreFields, checked_events, open_store
from helpers import ML100K, ML100K_RECIPE, start_redis, start_server, tensor
from helpers import post_json as post

FIELDS = StoreFields("user_id", "item_id")
BACKENDS = ("sqlite", "redis")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    """One real redis-server for the module, on a free port, its files in a temporary folder."""
    folder = tmp_path_factory.mktemp("redis")
    process, port = start_redis(folder)
    yield process, port, folder
    process.terminate()
    process.wait(timeout=30)


class Databases:
    """A fresh store URL per test: a new SQLite file, or the next of Redis's 16 numbered databases, emptied."""

    def __init__(self, redis_port: int | None, folder: Path) -> None:
        self.redis_port, self.folder, self.next = redis_port, folder, 0

    def url(self, backend: str) -> str:
        self.next += 1
        if backend == "sqlite":
            return f"sqlite:///{self.folder / f'store-{self.next}.db'}"
        import redis

        number = self.next % 16
        redis.Redis(port=self.redis_port).flushdb() if number == 0 else redis.Redis(port=self.redis_port, db=number).flushdb()
        return f"redis://127.0.0.1:{self.redis_port}/{number}"


@pytest.fixture(scope="module")
def databases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Databases:
    port = request.getfixturevalue("redis_server")[1]
    return Databases(port, tmp_path_factory.mktemp("stores"))


def load_movielens(url: str) -> None:
    result = CliRunner().invoke(main, ["events", "load", "--recipe", str(ML100K_RECIPE), "--log", str(ML100K / "ml-100k.inter"),
                                       "--items", str(ML100K / "ml-100k.item"), "--users", str(ML100K / "ml-100k.user"), "--store", url])
    assert result.exit_code == 0, result.output
    assert "loaded 100,000 behaviours of 100,000 events" in result.output and "943 users' attributes" in result.output


@pytest.fixture(scope="module", params=BACKENDS)
def movielens_store(request: pytest.FixtureRequest, databases: Databases, ml100k_samples: Path) -> str:
    """MovieLens-100k's log loaded into each backend by the real command, with the recipe `prepare` read."""
    url = databases.url(request.param)
    load_movielens(url)
    return url


def test_every_test_sample_scores_the_same_from_the_user_and_candidate_alone(movielens_store: str, ml100k_samples: Path,
                                                                            ml100k_bundle: Path) -> None:
    """The training/serving skew test: each test sample that prepare wrote, scored from its user ID, its candidate
    (the movie and its release year) and the store as of the sample's time, equals the prepared row's score."""
    predictor = Predictor.load(ml100k_bundle, providers="cpu")
    spec = load_spec(ml100k_samples / "spec.toml")
    table = read_table(ml100k_samples / "test.parquet", spec)
    columns = raw_columns(table, spec)
    expected = predictor.predict(columns)
    store = open_store(movielens_store)
    try:
        given = {name: columns[name] for name in ("user_id", "item_id", "release_year")}  # gender, age, histories: the store's
        served = predictor.predict(given, store=store, as_of=table.column("event_time").to_numpy())
        assert len(served) == table.num_rows == 19_192
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
        row = int(np.argmax(columns["hist_item_id"].lengths))  # the longest history: cut to max_len from the store too
        user = {"user_id": columns["user_id"][row].item()}
        candidates = {"item_id": columns["item_id"][:5].tolist(), "release_year": columns["release_year"][:5].tolist()}
        as_of = float(table.column("event_time")[row].as_py())
        by_store = predictor.rank(user, candidates, store=store, as_of=as_of)
        replicated = predictor.predict({**candidates, "user_id": [user["user_id"]] * 5}, store=store, as_of=as_of)
        np.testing.assert_allclose(by_store.probabilities, np.sort(replicated)[::-1], rtol=0, atol=1e-6)
    finally:
        store.close()


def events(*rows: tuple) -> list[dict]:
    return [{"id": identity, "user_id": user, "item_id": item, "time": time} for identity, user, item, time in rows]


@pytest.mark.parametrize("backend", BACKENDS)
def test_retries_count_once_late_events_are_placed_by_time_and_ties_keep_arrival_order(databases: Databases, backend: str) -> None:
    url = databases.url(backend)
    store = open_store(url, FIELDS, keep=4)
    try:
        assert store.add(checked_events(events(("a", 1, 10, 5.0), ("b", 1, 11, 7.0)), FIELDS)) == (2, 0)
        assert store.add(checked_events(events(("b", 1, 11, 7.0), ("c", 1, 12, 6.0)), FIELDS)) == (1, 1)  # a retry, a late one
        assert store.add(checked_events(events(("d", 1, 13, 7.0)), FIELDS)) == (1, 0)  # same time as b: after it
        (history,) = store.histories([1], [None], 10)
        assert history.items == [10, 12, 11, 13] and history.times == [5.0, 6.0, 7.0, 7.0]
        (before,) = store.histories(["1"], [7.0], 10)  # strictly before 7; the user's key as text is the same user
        assert before.items == [10, 12]
        assert store.add(checked_events(events(("e", 1, 14, 8.0)), FIELDS)) == (1, 0)
        (capped,) = store.histories([1], [None], 10)
        assert capped.items == [12, 11, 13, 14]  # keep=4: the oldest went
    finally:
        store.close()
    reopened = open_store(url)  # a new connection finds every acknowledged event, and the fields
    try:
        assert reopened.fields == FIELDS and reopened.count() == 4
        with pytest.raises(StoreError, match="holds"):
            open_store(url, StoreFields("user_id", "movie"))
    finally:
        reopened.close()


@pytest.mark.parametrize(("bad", "message"), [
    ({"user_id": 1, "item_id": 2, "time": 1.0}, "feature 'id': event 1: missing"),
    ({"id": "y", "item_id": 2, "time": 1.0}, "feature 'user_id': event 1: missing"),
    ({"id": "y", "user_id": 1, "item_id": 2, "time": "late"}, "feature 'time': event 1: must be a finite number"),
    ({"id": "y", "user_id": 1.5, "item_id": 2, "time": 1.0}, "feature 'user_id': event 1: must be an integer or a non-empty string"),
    ({"id": "x", "user_id": 1, "item_id": 2, "time": 1.0}, "feature 'id': event 1: 'x' is given twice in this batch"),
])
def test_a_bad_event_refuses_the_whole_batch_naming_its_index_and_field(tmp_path: Path, bad: dict, message: str) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", FIELDS)  # the check comes before any backend
    try:
        with pytest.raises(InputError) as raised:
            store.add(checked_events([{"id": "x", "user_id": 1, "item_id": 2, "time": 0.0}, bad], FIELDS))
        assert str(raised.value).startswith(message) and store.count() == 0
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_writers_and_readers_lose_and_double_nothing(databases: Databases, backend: str) -> None:
    store = open_store(databases.url(backend), FIELDS, keep=10_000)
    counts: list[tuple[int, int]] = []

    def writer(worker: int) -> None:
        for batch in range(20):  # every batch posted twice, as a client retrying after a timeout
            sent = events(*[(f"{worker}-{batch}-{i}", worker % 3, i, float(batch * 10 + i)) for i in range(10)])
            counts.append(store.add(checked_events(sent, FIELDS)))
            counts.append(store.add(checked_events(sent, FIELDS)))

    def reader() -> None:
        for _ in range(200):
            for history in store.histories([0, 1, 2], [None, None, None], 50):
                assert history.times == sorted(history.times)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert sum(a for a, _ in counts) == store.count() == 6 * 20 * 10
        assert sum(d for _, d in counts) == 6 * 20 * 10
    finally:
        store.close()


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, databases: Databases, ml100k_bundle: Path) -> Iterator[tuple[str, str]]:
    """The MovieLens bundle served with each backend, MovieLens loaded into it (the tests post events to it)."""
    store_url = databases.url(request.param)
    load_movielens(store_url)
    process, url = start_server(ml100k_bundle, "ml", "--store", store_url)
    yield url, store_url
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_the_server_fills_each_request_from_the_store_as_of_its_time(served: tuple[str, str], ml100k_samples: Path,
                                                                     ml100k_bundle: Path) -> None:
    """Test samples scored over HTTP by user and candidate alone, as of each sample's time (one request per time):
    the prepared rows' scores; and a request that sends its histories is served as before."""
    url, _ = served
    predictor = Predictor.load(ml100k_bundle, providers="cpu")
    spec = load_spec(ml100k_samples / "spec.toml")
    table = read_table(ml100k_samples / "test.parquet", spec).slice(0, 400)
    columns = raw_columns(table, spec)
    expected = predictor.predict(columns)
    times = table.column("event_time").to_numpy()
    for time in np.unique(times):
        rows = np.flatnonzero(times == time)
        inputs = [tensor(name, columns[name][rows].tolist()) for name in ("user_id", "item_id", "release_year")]
        status, answer = post(url, "/v2/models/ml/infer", {"inputs": inputs, "parameters": {"as_of": float(time)}})
        assert status == 200, answer
        np.testing.assert_allclose(answer["outputs"][0]["data"], expected[rows], rtol=0, atol=1e-6)
    status, answer = post(url, "/v2/models/ml/infer", {"inputs": [tensor("user_id", [1])]})
    assert status == 400 and answer["feature"] == "item_id"  # the candidate is the client's to send


@pytest.mark.slow
def test_an_event_posted_is_in_the_next_requests_history(served: tuple[str, str], ml100k_bundle: Path) -> None:
    url, store_url = served
    request = {"user": {"user_id": 1}, "candidates": {"item_id": [50, 172], "release_year": [1977.0, 1980.0]},
               "explain": True, "parameters": {"as_of": 2.5e9}}  # the behaviours' ages taken at that time
    status, before = post(url, "/v2/models/ml/rank", request)
    assert status == 200
    sent = {"events": [{"id": "fresh-1", "user_id": 1, "item_id": 1682, "time": 2.0e9}]}
    assert post(url, "/v2/events", sent) == (200, {"accepted": 1, "duplicates": 0})
    assert post(url, "/v2/events", sent) == (200, {"accepted": 0, "duplicates": 1})  # a retry counts once
    status, after = post(url, "/v2/models/ml/rank", request)
    assert status == 200 and len(after["weights"][0]) == min(50, len(before["weights"][0]) + 1)
    store = open_store(store_url)
    try:
        (history,) = store.histories([1], [2.5e9], 50)
        assert history.items[-1] == 1682
        predictor = Predictor.load(ml100k_bundle, providers="cpu")
        direct = predictor.rank({"user_id": 1, "hist_item_id": history.items, "hist_time": history.times, "event_time": 2.5e9,
                                 **store.user_values([1])[0]}, {k: v for k, v in request["candidates"].items()})
        assert after["order"] == direct.order.tolist()
        np.testing.assert_allclose(after["probabilities"], direct.probabilities, rtol=0, atol=1e-6)
    finally:
        store.close()
    status, error = post(url, "/v2/events", {"events": [{"id": "ok", "user_id": 1, "item_id": 1, "time": 1.0}, {"id": "bad", "user_id": 1}]})
    assert status == 400 and error["error"] == "feature 'item_id': event 1: missing"
    status, error = post(url, "/v2/models/ml/infer", {"inputs": [tensor("user_id", [1]), tensor("item_id", [50]),
                                                                tensor("release_year", [1977.0])], "parameters": {"as_of": "now"}})
    assert status == 400 and "parameters.as_of must be a finite number" in error["error"]
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'din_events_total{result="accepted"} 1.0' in metrics and 'din_events_total{result="duplicate"} 1.0' in metrics
    assert 'din_events_total{result="refused"} 1.0' in metrics and 'din_store_seconds_count{operation="read"}' in metrics
    assert "din_store_behaviours 100001.0" in metrics


@pytest.mark.slow
def test_a_stopped_redis_fails_requests_fast_with_503_and_serving_resumes_when_it_returns(ml100k_bundle: Path,
                                                                                         tmp_path: Path) -> None:
    """Redis stopped under traffic: requests that need it answer 503 in one line within its timeout (none hangs),
    readiness goes false, and both come back by themselves once Redis is back with its data."""
    import time

    import redis

    folder = tmp_path / "redis"
    folder.mkdir()
    redis_process, port = start_redis(folder)
    store_url = f"redis://127.0.0.1:{port}/0"
    load_movielens(store_url)
    redis.Redis(port=port).execute_command("BGREWRITEAOF")  # everything loaded is on disk before Redis stops
    time.sleep(1)
    process, url = start_server(ml100k_bundle, "ml", "--store", store_url)
    request = {"user": {"user_id": 1}, "candidates": {"item_id": [50, 172], "release_year": [1977.0, 1980.0]}}
    try:
        status, expected = post(url, "/v2/models/ml/rank", request)
        assert status == 200
        redis_process.terminate()
        redis_process.wait(timeout=30)
        started = time.monotonic()
        status, error = post(url, "/v2/models/ml/rank", request)
        assert status == 503 and error["error"].startswith(f"redis store {store_url}:") and time.monotonic() - started < 5
        with pytest.raises(urllib.error.HTTPError) as unready:
            urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=10)
        assert unready.value.code == 503
        redis_process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                                          "--appendonly", "yes", "--appendfsync", "always"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, answer = post(url, "/v2/models/ml/rank", request)
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200 and answer["probabilities"] == expected["probabilities"]  # the data came back with Redis
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=10) as response:
            assert response.status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
        redis_process.terminate()
        redis_process.wait(timeout=30)


@pytest.mark.slow
def test_an_event_posted_to_one_replica_is_served_by_another_sharing_redis_within_100_ms(databases: Databases,
                                                                                         ml100k_bundle: Path) -> None:
    """Two servers on one Redis (a cluster of replicas): each event acknowledged by the first is in the very next
    request the second serves, and that request answers within 100 ms of the acknowledgement."""
    import time

    store_url = databases.url("redis")
    first, first_url = start_server(ml100k_bundle, "ml", "--store", store_url)
    second, second_url = start_server(ml100k_bundle, "ml", "--store", store_url)
    request = {"user": {"user_id": 7, "gender": "M", "occupation": "other", "age": 30.0},
               "candidates": {"item_id": [50, 172], "release_year": [1977.0, 1980.0]}, "explain": True}
    try:
        post(second_url, "/v2/models/ml/rank", request)  # connections and sessions warm
        for k in range(10):
            status, answer = post(first_url, "/v2/events", {"events": [{"id": f"e{k}", "user_id": 7, "item_id": 100 + k, "time": 1e9 + k}]})
            acknowledged = time.perf_counter()
            assert (status, answer) == (200, {"accepted": 1, "duplicates": 0})
            status, ranked = post(second_url, "/v2/models/ml/rank", request)
            seen = time.perf_counter() - acknowledged
            assert status == 200 and len(ranked["weights"][0]) == k + 1 and seen < 0.1, (k, seen)
    finally:
        for process in (first, second):
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.slow
def test_every_event_acknowledged_before_sigterm_is_stored(tmp_path: Path, ml100k_bundle: Path) -> None:
    """Writers post while the server gets SIGTERM: every event answered 200 is in the store after the exit (SQLite
    commits before the answer), whatever the server refused or never answered."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    process, url = start_server(ml100k_bundle, "ml", "--store", store_url)
    acknowledged: list[list[dict]] = []
    done = threading.Event()

    def write(writer: int) -> None:
        for batch in range(10_000):
            if done.is_set():
                return
            events = [{"id": f"{writer}-{batch}-{k}", "user_id": writer, "item_id": k + 1, "time": float(batch * 10 + k)} for k in range(5)]
            try:
                status, _ = post(url, "/v2/events", {"events": events})
            except (urllib.error.URLError, ConnectionError):
                return
            if status == 200:
                acknowledged.append(events)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in writers:
        thread.start()
    import time

    while len(acknowledged) < 40:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    done.set()
    for thread in writers:
        thread.join(timeout=60)
    assert process.returncode == 0
    store = open_store(store_url)
    try:
        stored = {(u, t) for u in range(4) for t in store.histories([u], [None], 100_000)[0].times}
        sent = {(e["user_id"], e["time"]) for events in acknowledged for e in events}
        assert len(sent) >= 200 and sent <= stored
    finally:
        store.close()

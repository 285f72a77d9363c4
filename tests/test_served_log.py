"""The served log and its join (issue 32's "Done when"): a server with a behaviour store and --log-requests scores
rank and infer requests by user ID; clicks are reported for some rows; `prepare --served` labels the logged rows by
them; every sample carries exactly the features that were served (its histories the store's as of the request, its
score from the prepared row equal to the score served) and the label its click gave it, by either join."""

from __future__ import annotations

import csv
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_export.data.samples import raw_columns, read_table
from din_export.data.spec import load_spec
from din_runtime import Predictor
from din_runtime.served_log import Served, ServedLog, served_table
from din_runtime.stores import open_store
from helpers import ML100K, ML100K_RECIPE, post_json, start_server, tensor

pytestmark = pytest.mark.slow  # servers, stores and a trained MovieLens bundle: the full run, not the inner loop
USERS = 24  # rank requests, one per user, as of the user's first test sample
CANDIDATES = 20


@dataclass
class Session:
    """What the test served and clicked: per (user, item, time) the probability served and whether it was clicked."""

    log: Path
    store_url: str
    served: dict[tuple[int, int, float], float] = field(default_factory=dict)
    clicked: set[tuple[int, int, float]] = field(default_factory=set)
    metrics: str = ""


def _load_store(url: str) -> None:
    result = CliRunner().invoke(main, ["events", "load", "--recipe", str(ML100K_RECIPE), "--log", str(ML100K / "ml-100k.inter"),
                                       "--items", str(ML100K / "ml-100k.item"), "--users", str(ML100K / "ml-100k.user"), "--store", url])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, ml100k_samples: Path, ml100k_bundle: Path) -> Iterator[Session]:
    """Serve with the store and the log (files rolled every 100 rows), rank for USERS users and infer for a few,
    click some rows, write the clicks both ways (by request id; as events of user, item and time), stop the server
    with SIGTERM (the log is written out as it stops)."""
    folder = tmp_path_factory.mktemp("served")
    store_url = f"sqlite:///{folder / 'store.db'}"
    _load_store(store_url)
    process, url = start_server(ml100k_bundle, "ml", "--store", store_url, "--log-requests", str(folder / "log"), "--log-max-rows", "100")
    result = Session(folder / "log", store_url)
    by_request, as_events = [], []
    spec = load_spec(ml100k_samples / "spec.toml")
    test = read_table(ml100k_samples / "test.parquet", spec)
    items = pq.read_table(ml100k_samples / "items.parquet").slice(0, 400)
    rng = np.random.default_rng(0)
    users, first = np.unique(test.column("user_id").to_numpy(), return_index=True)
    try:
        for k, row in enumerate(first[:USERS]):
            user, as_of = int(users[k]), float(test.column("event_time")[int(row)].as_py())
            chosen = items.take(pa.array(rng.choice(items.num_rows, CANDIDATES, replace=False)))
            candidates = {"item_id": chosen.column("item_id").to_pylist(), "release_year": chosen.column("release_year").to_pylist()}
            status, answer = post_json(url, "/v2/models/ml/rank", {"id": f"rank-{k}", "user": {"user_id": user},
                                                                   "candidates": candidates, "parameters": {"as_of": as_of}})
            assert status == 200 and answer["id"] == f"rank-{k}", answer
            for position, probability in zip(answer["order"], answer["probabilities"], strict=True):
                result.served[user, candidates["item_id"][position], as_of] = probability
            for position in answer["order"][:1] + answer["order"][5:6]:  # the best and the sixth are clicked
                item = candidates["item_id"][position]
                result.clicked.add((user, item, as_of))
                by_request.append({"request_id": f"rank-{k}", "item_id": item})
                as_events.append({"user_id": user, "item_id": item, "time": as_of + 30})
        # An infer request without an id: the server gives it one, in the response, for its clicks.
        pair = [int(users[USERS]), int(users[USERS + 1])]
        as_of = float(test.column("event_time")[int(first[USERS + 1])].as_py())
        status, answer = post_json(url, "/v2/models/ml/infer", {"inputs": [tensor("user_id", pair), tensor("item_id", [50, 172]),
                                                                           tensor("release_year", [1977.0, 1980.0])],
                                                                "parameters": {"as_of": as_of}})
        assert status == 200 and len(answer["id"]) == 32, answer
        for user, item, probability in zip(pair, [50, 172], answer["outputs"][0]["data"], strict=True):
            result.served[user, item, as_of] = probability
        result.clicked.add((pair[0], 50, as_of))
        by_request.append({"request_id": answer["id"], "item_id": 50})
        as_events.append({"user_id": pair[0], "item_id": 50, "time": as_of + 30})
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, process.stderr.read()
    for name, rows in (("by-request.csv", by_request), ("as-events.csv", as_events)):
        with open(folder / name, "w", newline="") as stream:
            writer = csv.DictWriter(stream, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    yield result


def _prepare(session: Session, out: Path, *join: str) -> dict[tuple[int, int, float], int]:
    clicks = session.log.parent / ("by-request.csv" if not join else "as-events.csv")
    result = CliRunner().invoke(main, ["prepare", "--spec", str(ML100K_RECIPE), "--served", str(session.log), "--clicks", str(clicks),
                                       "--out", str(out), *join])
    assert result.exit_code == 0, result.output
    samples = pa.concat_tables(pq.read_table(out / f"{split}.parquet") for split in ("train", "valid", "test"))
    keys = zip(samples.column("user_id").to_pylist(), samples.column("item_id").to_pylist(), samples.column("event_time").to_pylist(),
               strict=True)
    return dict(zip(keys, samples.column("label").to_pylist(), strict=True))


def test_the_log_holds_every_scored_row_in_whole_rolled_files(session: Session) -> None:
    files = sorted((session.log / "ml" / "1").iterdir())
    assert len(files) >= 4 and all(f.name.startswith("served-") and f.suffix == ".parquet" for f in files)  # no temporary left
    logged = pa.concat_tables(pq.read_table(f) for f in files)
    assert logged.num_rows == len(session.served) == USERS * CANDIDATES + 2
    keys = zip(logged.column("user_id").to_pylist(), logged.column("item_id").to_pylist(), logged.column("time").to_pylist(), strict=True)
    served = np.array([session.served[key] for key in keys])
    np.testing.assert_allclose(logged.column("probability").to_numpy(), served, rtol=0, atol=1e-7)
    assert set(logged.column("model").to_pylist()) == {"ml"} and set(logged.column("version").to_pylist()) == {1}


def test_prepared_samples_carry_exactly_what_was_served_and_its_clicks(session: Session, tmp_path: Path, ml100k_bundle: Path) -> None:
    labels = _prepare(session, tmp_path / "joined")
    assert set(labels) == set(session.served)
    assert {key for key, label in labels.items() if label == 1} == session.clicked
    spec = load_spec(tmp_path / "joined" / "spec.toml")
    predictor = Predictor.load(ml100k_bundle, providers="cpu")
    store = open_store(session.store_url)
    try:
        for split in ("train", "valid", "test"):
            table = read_table(tmp_path / "joined" / f"{split}.parquet", spec)
            scores = predictor.predict(raw_columns(table, spec))  # the prepared row scores as the served row did
            keys = zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), table.column("event_time").to_pylist(),
                       strict=True)
            np.testing.assert_allclose(scores, [session.served[key] for key in keys], rtol=0, atol=1e-6)
            users, times = table.column("user_id").to_pylist(), table.column("event_time").to_pylist()
            histories = store.histories(users, times, 50)
            assert table.column("hist_item_id").to_pylist() == [h.items[-50:] for h in histories]
    finally:
        store.close()


def test_the_window_join_labels_as_the_request_join(session: Session, tmp_path: Path) -> None:
    by_request = _prepare(session, tmp_path / "request")
    assert _prepare(session, tmp_path / "window", "--join", "window", "--window", "60") == by_request
    assert set(_prepare(session, tmp_path / "short", "--join", "window", "--window", "10").values()) == {0}  # clicks 30 s late


def test_join_flags_are_checked_in_one_line(session: Session, tmp_path: Path) -> None:
    base = ["prepare", "--spec", str(ML100K_RECIPE), "--out", str(tmp_path / "out")]
    for extra, message in ((["--served", str(session.log)], "--served needs --clicks"),
                           (["--served", str(session.log), "--clicks", "x.csv", "--log", "y.csv"], "give one"),
                           (["--served", str(session.log), "--clicks", "x.csv", "--join", "window"], "--join window needs --window"),
                           (["--log", "y.csv", "--clicks", "x.csv"], "--clicks applies to --served")):
        result = CliRunner().invoke(main, base + extra)
        assert result.exit_code == 2 and message in result.output, result.output


def test_a_full_queue_drops_and_counts_rows_and_never_blocks(tmp_path: Path, ml100k_bundle: Path) -> None:
    predictor = Predictor.load(ml100k_bundle, providers="cpu")
    counts: dict[str, int] = {}
    log = ServedLog(tmp_path / "log", max_rows=10, max_seconds=60, queue_rows=5,
                    on_rows=lambda result, count: counts.__setitem__(result, counts.get(result, 0) + count))
    columns = {"user_id": [1, 2, 3], "item_id": [50, 172, 1], "release_year": [1977.0, None, 1995.0], "hist_item_id": [[1, 2], [], [3] * 80],
               "gender": ["M", "F", "M"], "occupation": ["other"] * 3, "age": [30.0, 40.0, 20.0], "genre": ["Drama"] * 3,
               "hist_genre": [["Drama", "Comedy"], [], ["Action"] * 80], "hist_time": [[5.0, 6.0], [], [1.0] * 80],
               "event_time": [10.0, 10.0, 10.0]}
    rows = Served("r", 1.0, "ml", 1, predictor.encoder, columns, predictor.predict(columns))
    assert log.record(rows) is True
    assert log.record(rows) is False  # 3 queued + 3 > 5: dropped at once, counted
    log.close()
    assert counts == {"dropped": 3, "logged": 3}
    (written,) = (tmp_path / "log" / "ml" / "1").iterdir()
    table = pq.read_table(written)
    assert table.column("release_year").null_count == 1
    assert [len(h) for h in table.column("hist_item_id").to_pylist()] == [2, 0, 50]  # the most recent max_len the model read
    assert table.column("hist_time").to_pylist()[0] == [5.0, 6.0] and table.column("event_time").to_pylist() == [10.0] * 3
    assert served_table(rows).column("probability").to_pylist() == table.column("probability").to_pylist()


def test_the_metric_counts_logged_rows(ml100k_bundle: Path, tmp_path: Path) -> None:
    process, url = start_server(ml100k_bundle, "ml", "--log-requests", str(tmp_path / "log"), "--log-max-seconds", "0.05")
    try:
        status, _ = post_json(url, "/v2/models/ml/infer", {"inputs": [tensor("user_id", [1, 2]), tensor("item_id", [50, 172]),
                                                                     tensor("release_year", [1977.0, 1980.0]), tensor("age", [30.0, 40.0]),
                                                                     tensor("gender", ["M", "F"]), tensor("occupation", ["other", "writer"]),
                                                                     tensor("hist_item_id", ["1 2 3", "4"]), tensor("hist_time", ["1 2 3", "4"]),
                                                                     tensor("event_time", [9.0, 9.0])], "id": "mine"})
        assert status == 200
        import time
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as response:
                metrics = response.read().decode()
            if 'din_served_rows_total{result="logged"} 2.0' in metrics:
                break
            time.sleep(0.05)
        assert 'din_served_rows_total{result="logged"} 2.0' in metrics
        (written,) = (tmp_path / "log" / "ml" / "1").iterdir()  # written by age, while serving
        assert pq.read_table(written).column("request_id").to_pylist() == ["mine", "mine"]
    finally:
        process.terminate()
        process.wait(timeout=30)

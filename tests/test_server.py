"""`din-runtime serve` as a client meets it: a real server process on 127.0.0.1, talked to with tritonclient.http
(Triton's own client, binary tensors by default) and with plain JSON."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from din_export.data.synthetic import generate
from din_runtime import Predictor
from helpers import start_server

MODEL = "din"
FEATURES = ("user_id", "item_id", "cate_id", "price", "hist_item_id", "hist_cate_id")


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[str]:
    process, url = start_server(bundle, MODEL, "--max-batch", "64", "--max-delay-ms", "5", "--max-body-mb", "1", "--max-queue", "64")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def rows() -> dict:
    return generate(40, seed=3).to_pydict()


def triton_inputs(rows: dict, predictor: Predictor, binary: bool = True) -> list[httpclient.InferInput]:
    """One tensor per feature: INT64 IDs, FP32 numbers, BYTES histories (space-separated IDs)."""
    inputs = []
    for name in FEATURES:
        if name.startswith("hist_"):
            array = np.array([" ".join(map(str, history)).encode() for history in rows[name]], dtype=np.object_)
            datatype = "BYTES"
        elif name == "price":
            array, datatype = np.asarray(rows[name], dtype=np.float32), "FP32"
        else:
            array, datatype = np.asarray(rows[name], dtype=np.int64), "INT64"
        tensor = httpclient.InferInput(name, [len(array)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def in_parallel(work, count: int) -> None:
    """work(0) ... work(count - 1), each in a thread of its own, all joined (bounded in time)."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def post(url: str, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{url}{path}", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_metadata_and_health(server: str, predictor: Predictor) -> None:
    client = httpclient.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("user_id", "INT64"), ("item_id", "INT64"), ("cate_id", "INT64"), ("price", "FP32"), ("hist_item_id", "BYTES"), ("hist_cate_id", "BYTES")]
    assert metadata["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1]}]


@pytest.mark.parametrize("binary", [True, False])
def test_inference_equals_predict(server: str, predictor: Predictor, rows: dict, binary: bool) -> None:
    client = httpclient.InferenceServerClient(server)
    output = httpclient.InferRequestedOutput("probability", binary_data=binary)
    result = client.infer(MODEL, triton_inputs(rows, predictor, binary), outputs=[output])
    np.testing.assert_allclose(result.as_numpy("probability"), predictor.predict(rows), rtol=0, atol=1e-6)
    single = client.infer(MODEL, triton_inputs({k: v[:1] for k, v in rows.items()}, predictor, binary), outputs=[output])
    np.testing.assert_allclose(single.as_numpy("probability"), predictor.predict(rows)[:1], rtol=0, atol=1e-6)


def test_concurrent_clients_are_batched_and_each_gets_its_own_rows(server: str, predictor: Predictor, rows: dict) -> None:
    expected = predictor.predict(rows)
    results: dict[int, np.ndarray] = {}

    def client_thread(i: int) -> None:
        client = httpclient.InferenceServerClient(server)
        for _ in range(5):
            part = {name: column[i:i + 1 + i % 3] for name, column in rows.items()}
            results[i] = client.infer(MODEL, triton_inputs(part, predictor)).as_numpy("probability")
            np.testing.assert_allclose(results[i], expected[i:i + 1 + i % 3], rtol=0, atol=1e-6)

    in_parallel(client_thread, 16)
    assert sorted(results) == list(range(16))
    with urllib.request.urlopen(f"http://{server}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    batch_count = float(next(line for line in metrics.splitlines() if line.startswith("din_batch_rows_count")).split()[-1])
    batch_rows = float(next(line for line in metrics.splitlines() if line.startswith("din_batch_rows_sum")).split()[-1])
    assert batch_rows / batch_count > 1  # some calls carried more than one request's rows
    assert "din_request_seconds_bucket" in metrics and "din_queue_depth" in metrics


def test_bad_requests_get_400_naming_feature_and_row(server: str, predictor: Predictor, rows: dict) -> None:
    body = {"inputs": [{"name": "user_id", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                       {"name": "item_id", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                       {"name": "cate_id", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                       {"name": "price", "shape": [2], "datatype": "BYTES", "data": ["8.5", "abc"]},
                       {"name": "hist_item_id", "shape": [2], "datatype": "BYTES", "data": ["1 2", ""]},
                       {"name": "hist_cate_id", "shape": [2], "datatype": "BYTES", "data": ["1 2", ""]}]}
    status, error = post(server, f"/v2/models/{MODEL}/infer", json.dumps(body).encode())
    assert status == 400 and error["feature"] == "price" and error["row"] == 1 and "'abc' is not a number" in error["error"]
    status, error = post(server, f"/v2/models/{MODEL}/infer", b"{not json")
    assert status == 400 and "not valid JSON" in error["error"]
    with pytest.raises(InferenceServerException, match="missing from the input"):
        httpclient.InferenceServerClient(server).infer(MODEL, triton_inputs(rows, predictor)[1:])
    status, error = post(server, "/v2/models/other/infer", json.dumps(body).encode())
    assert status == 404
    connection = http.client.HTTPConnection(server, timeout=10)  # a 2 MiB body announced: refused before it is sent
    connection.putrequest("POST", f"/v2/models/{MODEL}/infer")
    connection.putheader("Content-Length", str(2 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    connection.close()


def test_rank_endpoint_equals_predictor_rank(server: str, predictor: Predictor, rows: dict) -> None:
    user = {"user_id": rows["user_id"][0], "hist_item_id": rows["hist_item_id"][0], "hist_cate_id": rows["hist_cate_id"][0]}
    candidates = {"item_id": rows["item_id"], "cate_id": rows["cate_id"], "price": rows["price"]}
    status, ranking = post(server, f"/v2/models/{MODEL}/rank", json.dumps({"user": user, "candidates": candidates, "top_k": 5}).encode())
    expected = predictor.rank(user, candidates, top_k=5)
    assert status == 200 and ranking["order"] == expected.order.tolist()
    np.testing.assert_allclose(ranking["probabilities"], expected.probabilities, rtol=0, atol=1e-6)
    status, error = post(server, f"/v2/models/{MODEL}/rank", json.dumps({"user": user, "candidates": {"price": [1.0]}}).encode())
    assert status == 400 and "missing from candidates" in error["error"]


def test_a_full_queue_answers_503_and_the_server_lives_on(bundle: Path, predictor: Predictor, rows: dict) -> None:
    process, url = start_server(bundle, MODEL, "--max-batch", "1", "--max-queue", "1")
    try:
        statuses: list[int] = []
        body = json.dumps({"inputs": [{"name": name, "shape": [40], "datatype": "BYTES" if name.startswith("hist_") else
                                       "FP32" if name == "price" else "INT64",
                                       "data": [" ".join(map(str, h)) for h in rows[name]] if name.startswith("hist_") else rows[name]}
                                      for name in FEATURES]}).encode()

        def hammer(_: int) -> None:
            for _ in range(10):
                statuses.append(post(url, f"/v2/models/{MODEL}/infer", body)[0])

        in_parallel(hammer, 12)
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        assert post(url, f"/v2/models/{MODEL}/infer", body)[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_sigterm_drains_requests_in_flight_and_exits_zero(bundle: Path, predictor: Predictor, rows: dict) -> None:
    process, url = start_server(bundle, MODEL, "--max-delay-ms", "300", "--max-batch", "100000")  # a request waits 300 ms for company
    outcome: dict[str, np.ndarray] = {}

    def slow_request() -> None:
        outcome["probabilities"] = httpclient.InferenceServerClient(url).infer(MODEL, triton_inputs(rows, predictor)).as_numpy("probability")

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.1)  # the request is in the batcher's window
    process.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert process.wait(timeout=30) == 0
    np.testing.assert_allclose(outcome["probabilities"], predictor.predict(rows), rtol=0, atol=1e-6)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=2)

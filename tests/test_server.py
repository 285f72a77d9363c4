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
from helpers import post_json as post
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


def request(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, str, dict]:
    """(status, content type, JSON body) of any request, errors included."""
    connection = http.client.HTTPConnection(url, timeout=30)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body is not None else {})
    response = connection.getresponse()
    answer = response.status, response.getheader("Content-Type"), json.loads(response.read() or b"{}")
    connection.close()
    return answer


def infer_body(rows: dict, **replaced: dict) -> dict:
    """A two-row JSON infer request of the built-in features; `replaced` swaps whole input entries by name."""
    inputs = []
    for name in FEATURES:
        datatype = "BYTES" if name.startswith("hist_") else "FP32" if name == "price" else "INT64"
        data = [" ".join(map(str, h)) for h in rows[name][:2]] if name.startswith("hist_") else rows[name][:2]
        inputs.append(replaced.get(name, {"name": name, "shape": [2], "datatype": datatype, "data": data}))
    return {"inputs": inputs}


@pytest.mark.parametrize("entry, message", [
    ({"name": "user_id", "shape": [2], "datatype": "INT64", "data": [1, 2 ** 63]}, "outside INT64's range"),
    ({"name": "user_id", "shape": [2], "datatype": "INT8", "data": [1, 300]}, "outside INT8's range [-128, 127]"),
    ({"name": "user_id", "shape": [2], "datatype": "UINT32", "data": [-1, 2]}, "outside UINT32's range"),
    ({"name": "user_id", "shape": [2], "datatype": "INT64", "data": [1, 1.5]}, "1.5 is not an integer, as INT64 needs"),
    ({"name": "price", "shape": [2], "datatype": "FP32", "data": [1.0, 1e39]}, "outside FP32's range"),
    ({"name": "price", "shape": [2], "datatype": "FP16", "data": [1.0, 70000.0]}, "outside FP16's range"),
    ({"name": "price", "shape": [2], "datatype": "FP32", "data": [1.0, "2"]}, "'2' is not a number, as FP32 needs"),
    ({"name": "price", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0]}, "shape [3] but 2 values"),
    ({"name": "hist_item_id", "shape": [2], "datatype": "BYTES", "data": [[[1]], []]}, "not nested lists"),
])
def test_a_value_outside_its_datatype_is_refused_naming_input_and_element(server: str, rows: dict, entry: dict, message: str) -> None:
    status, kind, error = request(server, "POST", f"/v2/models/{MODEL}/infer", json.dumps(infer_body(rows, **{entry["name"]: entry})).encode())
    assert status == 400 and kind == "application/json" and f"input '{entry['name']}'" in error["error"] and message in error["error"]


def test_in_range_values_of_every_integer_and_float_datatype_are_served(server: str, predictor: Predictor, rows: dict) -> None:
    """The range checks refuse only what is outside: small IDs as INT8 or UINT16 and prices as FP64 score as INT64 and FP32 do."""
    expected = predictor.predict({name: column[:2] for name, column in rows.items()})
    for id_type, price_type in (("INT32", "FP64"), ("UINT16", "FP16"), ("INT64", "FP32")):
        ids = {name: {"name": name, "shape": [2], "datatype": id_type, "data": [v % 100 + 1 for v in rows[name][:2]]}
               for name in ("user_id",)}
        body = infer_body(rows, price={"name": "price", "shape": [2], "datatype": price_type, "data": [8.5, None]}, **ids)
        status, _, answer = request(server, "POST", f"/v2/models/{MODEL}/infer", json.dumps(body).encode())
        assert status == 200 and len(answer["outputs"][0]["data"]) == 2
    status, _, answer = request(server, "POST", f"/v2/models/{MODEL}/infer", json.dumps(infer_body(rows)).encode())
    np.testing.assert_allclose(answer["outputs"][0]["data"], expected, rtol=0, atol=1e-6)


def test_protocol_refusals_are_one_json_line(server: str, rows: dict) -> None:
    body = infer_body(rows)
    twice = {"inputs": body["inputs"] + [body["inputs"][0]]}
    status, _, error = request(server, "POST", f"/v2/models/{MODEL}/infer", json.dumps(twice).encode())
    assert status == 400 and error["error"] == "input 'user_id' is given twice; give each input once"
    nested: list = [1]
    for _ in range(40):
        nested = [nested]
    for deep in (b"[" * 100_000 + b"]" * 100_000, json.dumps({**body, "parameters": {"x": nested}}).encode()):
        for path in (f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/rank", f"/v2/models/{MODEL}/explain", "/v2/repository/index"):
            status, kind, error = request(server, "POST", path, deep)
            assert status == 400 and kind == "application/json" and "nests deeper than 32 levels" in error["error"], path
    status, kind, error = request(server, "GET", "/v2/no/such/path")
    assert status == 404 and kind == "application/json" and error == {"error": "no route for GET /v2/no/such/path"}
    status, kind, error = request(server, "GET", f"/v2/models/{MODEL}/infer")
    assert status == 405 and kind == "application/json" and error == {"error": f"GET is not allowed on /v2/models/{MODEL}/infer"}
    status, _, error = request(server, "POST", "/v2/repository/index", b" " * (2 << 20))  # every route's body is bounded
    assert status == 413 and "limit" in error["error"]
    status, _, error = request(server, "POST", "/v2/repository/index", b'{"ready": "yes"}')
    assert status == 400 and error["error"] == "'ready' must be true or false, not 'yes'"
    with urllib.request.urlopen(f"http://{server}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'din_errors_total{kind="no_route"}' in metrics and 'din_errors_total{kind="too_large"}' in metrics


def test_responses_carry_the_request_id_in_one_envelope(server: str, rows: dict) -> None:
    body = {**infer_body(rows), "id": "req-7"}
    for path in ("infer", "explain"):
        status, _, answer = request(server, "POST", f"/v2/models/{MODEL}/{path}", json.dumps(body).encode())
        assert status == 200 and (answer["id"], answer["model_name"], answer["model_version"]) == ("req-7", MODEL, "1")
    user = {"user_id": rows["user_id"][0], "hist_item_id": rows["hist_item_id"][0], "hist_cate_id": rows["hist_cate_id"][0]}
    rank = {"user": user, "candidates": {"item_id": rows["item_id"][:3], "price": rows["price"][:3]}, "id": 9}
    status, _, answer = request(server, "POST", f"/v2/models/{MODEL}/rank", json.dumps(rank).encode())
    assert status == 200 and (answer["id"], answer["model_name"], answer["model_version"]) == (9, MODEL, "1")

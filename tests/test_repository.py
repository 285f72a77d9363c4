"""`din-runtime serve REPO`: a model repository in Triton's layout served with versions, Triton's repository
extension, zero-downtime swaps under real tritonclient traffic, bad versions refused while the current one serves,
and names from URLs that never reach outside the repository. Real server processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.http as httpclient
from test_server import post, triton_inputs

from din_export.config import ModelConfig, TrainConfig
from din_export.data.source import DataSource
from din_export.data.spec import load_spec
from din_export.data.synthetic import SPEC_PATH, generate
from din_export.pipeline import train_and_export
from din_runtime import Predictor
from helpers import start_server

MODEL = "din"
SMALL = ModelConfig(embedding_dim=4, attention_hidden=(8,), mlp_hidden=(8,))


def _bundle(out: Path, seed: int, spec_text: str | None = None) -> Path:
    spec = None
    if spec_text is not None:
        (out.parent / f"{out.name}.toml").write_text(spec_text)
        spec = load_spec(out.parent / f"{out.name}.toml")
    train_and_export(DataSource(synthetic_samples=1200), out, spec or load_spec(SPEC_PATH), SMALL,
                     TrainConfig(epochs=1, batch_size=128, seed=seed, progress=False))
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Versions of one model (v1 and v2 of other seeds, so other weights; v3 is v1's bundle again, under its own
    number), and one whose inputs differ (no price)."""
    folder = tmp_path_factory.mktemp("versions")
    found = {f"v{seed}": _bundle(folder / f"v{seed}", seed) for seed in (1, 2)}
    found["v3"] = found["v1"]
    no_price = SPEC_PATH.read_text().replace('[features.price]\nkind = "numeric"\nfill = "mean"\nnormalize = "zscore"\n', "")
    assert "price" not in no_price
    found["other_inputs"] = _bundle(folder / "other", 4, no_price)
    return found


@pytest.fixture(scope="module")
def rows() -> dict:
    return generate(24, seed=9).to_pydict()


def publish(source: Path, model_folder: Path, version: int) -> Path:
    """Copy a bundle in as a version, the way a deploy should: into a hidden folder, then one rename."""
    model_folder.mkdir(parents=True, exist_ok=True)
    staging = model_folder / f".incoming-{version}"
    shutil.copytree(source, staging)
    os.replace(staging, model_folder / str(version))
    return model_folder / str(version)


def status_of(url: str, path: str) -> int:
    """The status of a POST, whatever the body (a path that matches no route gets Starlette's plain 404)."""
    request = urllib.request.Request(f"http://{url}{path}", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def index(url: str, ready: bool = False) -> list[dict]:
    status, body = post(url, "/v2/repository/index", json.dumps({"ready": ready}).encode())
    assert status == 200
    return body


def state(url: str, version: int) -> tuple[str, str]:
    entry = next((e for e in index(url) if e["name"] == MODEL and e["version"] == str(version)), None)
    return ("", "") if entry is None else (entry["state"], entry["reason"])  # ("", ""): not seen yet


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def infer(client: httpclient.InferenceServerClient, rows: dict, version: str = "") -> tuple[str, np.ndarray]:
    result = client.infer(MODEL, triton_inputs(rows, None), model_version=version)
    return result.get_response()["model_version"], result.as_numpy("probability")


@pytest.fixture
def serving(tmp_path: Path) -> Iterator:
    """start(options...) -> url: a server on the repository tmp_path/repo, stopped at the end of the test."""
    started: list[subprocess.Popen] = []

    def start(*options: str) -> str:
        process, url = start_server(tmp_path / "repo", None, *options)
        started.append(process)
        return url
    start.processes = started  # type: ignore[attr-defined]
    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def test_version_policies_read_as_triton_writes_them(tmp_path: Path) -> None:
    from din_runtime.repository import RepositoryError, VersionPolicy, check_name, check_version

    def policy(text: str) -> VersionPolicy:
        (tmp_path / "config.pbtxt").write_text(text)
        return VersionPolicy.read(tmp_path)

    assert policy('name: "din"\n') == VersionPolicy("latest", 1)
    assert policy("version_policy: { latest: { num_versions: 3 }}").candidates([1, 5, 2])[:3] == [5, 2, 1]
    assert policy("version_policy { specific { versions: [1, 3] } }").candidates([1, 2, 3]) == [3, 1]
    assert policy("version_policy: { all: {}}").wanted() is None
    with pytest.raises(RepositoryError, match="num_versions"):
        policy("version_policy: { latest: { num_versions: 0 }}")
    for bad in ("..", ".", "a/b", "a\\b", ".staging", ""):
        with pytest.raises(RepositoryError):
            check_name(bad)
    for bad in ("0", "-1", "01", "1.5", "x"):
        with pytest.raises(RepositoryError):
            check_version(bad)
    assert check_version("12") == 12


@pytest.mark.slow
def test_latest_n_serves_the_newest_and_a_version_can_be_pinned(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    model = tmp_path / "repo" / MODEL
    for number in (1, 2, 3):
        publish(bundles[f"v{number}"], model, number)
    (model / "config.pbtxt").write_text('name: "din"\nversion_policy: { latest: { num_versions: 2 } }\n')
    url = serving()
    client = httpclient.InferenceServerClient(url)
    expected = {n: Predictor.load(bundles[f"v{n}"], providers="cpu").predict(rows) for n in (2, 3)}
    version, probabilities = infer(client, rows)
    assert version == "3" and np.allclose(probabilities, expected[3], atol=1e-6)
    version, probabilities = infer(client, rows, "2")
    assert version == "2" and np.allclose(probabilities, expected[2], atol=1e-6)
    with pytest.raises(Exception, match="no version 1 loaded"):
        infer(client, rows, "1")
    assert client.get_model_metadata(MODEL)["versions"] == ["2", "3"]
    assert client.is_model_ready(MODEL, "2") and not client.is_model_ready(MODEL, "1")
    assert [(e["version"], e["state"]) for e in index(url)] == [("1", "UNAVAILABLE"), ("2", "READY"), ("3", "READY")]
    assert [e["version"] for e in index(url, ready=True)] == ["2", "3"]
    user = {k: rows[k][0] for k in ("user_id", "hist_item_id", "hist_cate_id")}
    candidates = {k: rows[k][:5] for k in ("item_id", "cate_id", "price")}
    status, ranked = post(url, f"/v2/models/{MODEL}/versions/2/rank", json.dumps({"user": user, "candidates": candidates}).encode())
    assert status == 200 and ranked["model_version"] == "2"
    reference = Predictor.load(bundles["v2"], providers="cpu").rank(user, candidates)
    assert ranked["order"] == reference.order.tolist()
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'din_model_version{model="din"} 3.0' in metrics and 'din_model_loads_total{model="din",result="success"} 2.0' in metrics
    assert 'din_request_seconds_count{endpoint="infer",model="din",version="2"}' in metrics


@pytest.mark.slow
def test_specific_versions_and_several_models_side_by_side(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    for number in (1, 2, 3):
        publish(bundles[f"v{number}"], tmp_path / "repo" / MODEL, number)
    (tmp_path / "repo" / MODEL / "config.pbtxt").write_text("version_policy: { specific: { versions: [1, 3] } }\n")
    publish(bundles["other_inputs"], tmp_path / "repo" / "no-price", 7)
    url = serving()
    client = httpclient.InferenceServerClient(url)
    assert client.get_model_metadata(MODEL)["versions"] == ["1", "3"]
    assert client.get_model_metadata("no-price")["versions"] == ["7"]
    assert {(e["name"], e["version"], e["state"]) for e in index(url, ready=True)} == {("din", "1", "READY"), ("din", "3", "READY"),
                                                                                         ("no-price", "7", "READY")}


@pytest.mark.slow
def test_a_triton_repository_written_by_din_export_serves_unchanged(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    from click.testing import CliRunner

    from din_export.cli import main

    result = CliRunner().invoke(main, ["triton", str(bundles["v1"]), "--repository", str(tmp_path / "repo"), "--name", MODEL])
    assert result.exit_code == 0, result.output
    url = serving()
    version, probabilities = infer(httpclient.InferenceServerClient(url), rows)
    assert version == "1" and np.allclose(probabilities, Predictor.load(bundles["v1"], providers="cpu").predict(rows), atol=1e-6)


@pytest.mark.slow
def test_versions_swap_under_load_without_one_failed_request(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    """Eight clients send without pause while versions 2, a corrupt 3 and 4 are published one after another."""
    model = tmp_path / "repo" / MODEL
    publish(bundles["v1"], model, 1)
    url = serving("--poll", "0.5")
    expected = {n: Predictor.load(bundles[f"v{n}"], providers="cpu").predict(rows) for n in (1, 2, 3)}
    expected[4] = expected[3]  # version 4 is the third bundle again, under another number
    answers: list[tuple[float, str, np.ndarray]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client_loop() -> None:
        client = httpclient.InferenceServerClient(url)  # each client its own connection
        while not stop.is_set():
            try:
                version, probabilities = infer(client, rows)
                answers.append((time.monotonic(), version, probabilities))
            except BaseException as error:  # noqa: BLE001 - every failure counts
                failures.append(error)

    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        swapped = {}
        publish(bundles["v2"], model, 2)
        wait_until(lambda: state(url, 2)[0] == "READY")
        swapped[2] = time.monotonic()
        staging = model / ".incoming-3"
        shutil.copytree(bundles["v3"], staging)
        with open(staging / "model.onnx", "r+b") as graph:
            graph.seek(100)
            graph.write(b"damaged")
        os.replace(staging, model / "3")
        wait_until(lambda: state(url, 3)[0] == "UNAVAILABLE" and "sha256" in state(url, 3)[1])
        time.sleep(1)
        publish(bundles["v3"], model, 4)
        wait_until(lambda: state(url, 4)[0] == "READY")
        swapped[4] = time.monotonic()
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures[:3]
    assert len(answers) > 100
    for _, version, probabilities in answers:  # every response is wholly one loaded version's
        np.testing.assert_allclose(probabilities, expected[int(version)], rtol=0, atol=1e-6)
    assert {version for _, version, _ in answers} == {"1", "2", "4"}  # never the corrupt 3
    settle = 0.5
    assert all(version in ("2", "4") for at, version, _ in answers if swapped[2] + settle < at)
    assert all(version == "4" for at, version, _ in answers if swapped[4] + settle < at)
    assert state(url, 1)[0] == "UNAVAILABLE" and state(url, 2)[0] == "UNAVAILABLE"  # latest 1: released
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'din_model_loads_total{model="din",result="failure"} 1.0' in metrics and 'din_model_version{model="din"} 4.0' in metrics


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["graph", "manifest", "inputs", "half-written"])
def test_a_bad_version_is_refused_with_its_reason_and_the_current_keeps_serving(bundles: dict, rows: dict, tmp_path: Path, serving,
                                                                               damage: str) -> None:
    model = tmp_path / "repo" / MODEL
    publish(bundles["v1"], model, 1)
    url = serving("--poll", "0.2")
    staging = model / ".incoming-2"
    shutil.copytree(bundles["other_inputs"] if damage == "inputs" else bundles["v2"], staging)
    if damage == "graph":
        (staging / "rank.onnx").write_bytes(b"not a graph")
    elif damage == "manifest":
        (staging / "manifest.json").write_text("{ not json")
    elif damage == "half-written":
        (staging / "manifest.json").unlink()  # a copy still under way: the manifest not there yet
    os.replace(staging, model / "2")
    reasons = {"graph": "sha256", "manifest": "not valid JSON", "inputs": "inputs differ from version 1",
               "half-written": "no manifest.json"}
    wait_until(lambda: state(url, 2)[0] == "UNAVAILABLE" and reasons[damage] in state(url, 2)[1])
    client = httpclient.InferenceServerClient(url)
    assert infer(client, rows)[0] == "1" and client.is_server_ready() and client.is_model_ready(MODEL)
    if damage == "half-written":  # once the copy completes, the version is picked up
        shutil.copy2(bundles["v2"] / "manifest.json", model / "2" / "manifest.json")
        wait_until(lambda: state(url, 2)[0] == "READY")
        assert infer(client, rows)[0] == "2"


@pytest.mark.slow
def test_a_broken_config_changes_nothing_served(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    model = tmp_path / "repo" / MODEL
    publish(bundles["v1"], model, 1)
    url = serving("--poll", "0.2")
    (model / "config.pbtxt").write_text("version_policy: { latest: { num_versions: 0 } }\n")
    publish(bundles["v2"], model, 2)
    time.sleep(1.5)  # several scans
    client = httpclient.InferenceServerClient(url)
    assert infer(client, rows)[0] == "1" and state(url, 1) == ("READY", "")


@pytest.mark.slow
def test_names_from_urls_never_reach_outside_the_repository(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    publish(bundles["v1"], tmp_path / "repo" / MODEL, 1)
    outside = tmp_path / "outside"
    publish(bundles["v2"], outside, 1)
    (tmp_path / "repo" / "escape").symlink_to(outside, target_is_directory=True)  # a model folder leaving the repository
    url = serving("--model-control", "explicit")
    assert not [e for e in index(url) if e["name"] == "escape" and e["state"] == "READY"]
    for name in ("..", ".hidden", "..%2F..%2Foutside", "%2E%2E", "escape", "%2Ftmp"):
        assert status_of(url, f"/v2/repository/models/{name}/load") in (400, 404), name
        assert status_of(url, f"/v2/models/{name}/infer") in (400, 404), name
    status, body = post(url, "/v2/repository/models/escape/load", b"")
    assert status == 400 and "leaves the repository" in body["error"]
    assert status_of(url, f"/v2/models/{MODEL}/versions/..%2F1/infer") in (400, 404)
    assert status_of(url, f"/v2/models/{MODEL}/versions/-1/infer") == 400
    assert not [e for e in index(url) if e["name"] == "escape"]  # nothing of what lies outside was read
    assert infer(httpclient.InferenceServerClient(url), rows)[0] == "1"


@pytest.mark.slow
def test_load_and_unload_only_under_explicit_control(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    publish(bundles["v1"], tmp_path / "repo" / MODEL, 1)
    polled = serving("--poll", "5")
    status, body = post(polled, f"/v2/repository/models/{MODEL}/unload", b"")
    assert status == 400 and "not allowed with --model-control poll" in body["error"]
    url = serving("--model-control", "explicit")
    client = httpclient.InferenceServerClient(url)
    assert status_of(url, f"/v2/repository/models/{MODEL}/unload") == 200
    wait_until(lambda: not client.is_model_ready(MODEL))
    with pytest.raises(Exception, match="no model 'din' is ready"):
        infer(client, rows)
    publish(bundles["v2"], tmp_path / "repo" / MODEL, 2)
    assert status_of(url, f"/v2/repository/models/{MODEL}/load") == 200
    assert infer(client, rows)[0] == "2"
    publish(bundles["other_inputs"], tmp_path / "repo" / "second", 1)  # a model folder added later
    assert status_of(url, "/v2/repository/models/second/load") == 200
    assert client.is_model_ready("second")


@pytest.mark.slow
def test_sighup_rescans_the_repository(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    publish(bundles["v1"], tmp_path / "repo" / MODEL, 1)
    url = serving("--model-control", "explicit")
    publish(bundles["v2"], tmp_path / "repo" / MODEL, 2)
    serving.processes[0].send_signal(signal.SIGHUP)
    wait_until(lambda: state(url, 2)[0] == "READY")
    assert infer(httpclient.InferenceServerClient(url), rows)[0] == "2"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_unload_returns_the_memory_of_a_large_version(tmp_path: Path, serving) -> None:
    large, table = tmp_path / "large", tmp_path / "many-items.parquet"
    pq.write_table(generate(4000, seed=0, num_items=200_000), table)  # tens of thousands of item rows
    train_and_export(DataSource(data=table), large, load_spec(SPEC_PATH), ModelConfig(embedding_dim=128, attention_hidden=(8,), mlp_hidden=(8,)),
                     TrainConfig(epochs=1, batch_size=256, progress=False))
    publish(large, tmp_path / "repo" / "large", 1)
    url = serving("--model-control", "explicit")
    pid = serving.processes[0].pid
    graphs_mb = sum(f.stat().st_size for f in large.glob("*.onnx")) / 2**20
    assert status_of(url, "/v2/repository/models/large/unload") == 200
    time.sleep(1)
    before = _rss_mb(pid)
    assert status_of(url, "/v2/repository/models/large/load") == 200
    loaded = _rss_mb(pid)
    assert status_of(url, "/v2/repository/models/large/unload") == 200
    time.sleep(1)
    after = _rss_mb(pid)
    print(f"\nRSS MB: before load {before:.0f}, loaded {loaded:.0f}, after unload {after:.0f}; graphs {graphs_mb:.0f} MB", file=sys.stderr)
    assert loaded - before > 0.5 * graphs_mb, (before, loaded, graphs_mb)  # the version was really resident
    assert after <= before * 1.10, (before, loaded, after)


def test_one_thread_pool_runs_every_model_the_server_loads(bundles: dict, rows: dict, tmp_path: Path, serving) -> None:
    """`serve --thread-pool shared` (the default): every session of every model runs on one pool of --threads, so three
    models (two graphs each) hold five fewer threads than with `per-session`, a pool per session. Both score as
    Predictor does."""
    expected = Predictor.load(bundles["v1"], providers="cpu").predict(rows)
    threads = {}
    for pool in ("shared", "per-session"):
        repo = tmp_path / f"repo-{pool}"
        for number in range(3):
            publish(bundles["v1"], repo / f"m{number}", 1)
        process, url = start_server(repo, None, "--threads", "2", "--thread-pool", pool)
        serving.processes.append(process)
        client = httpclient.InferenceServerClient(url)
        for number in range(3):
            np.testing.assert_allclose(client.infer(f"m{number}", triton_inputs(rows, None)).as_numpy("probability"), expected, atol=1e-6)
        client.infer("m0", triton_inputs({name: values[:1] for name, values in rows.items()}, None))  # a small call too
        threads[pool] = len(os.listdir(f"/proc/{process.pid}/task"))
    print(f"\nthreads of a server of three models: {threads}", file=sys.stderr)
    # per-session: six sessions of 2 threads (one worker thread each) and a 1-thread one for small calls; shared: one pool
    assert threads["per-session"] - threads["shared"] >= 5, threads

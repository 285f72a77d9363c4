"""Helpers shared by tests/ and benchmarks/ (importable as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REFERENCE_MAX_LEN = 200
SMALL_MODEL = {"embedding_dim": 8, "attention_hidden": (16, 8), "mlp_hidden": (32, 16)}


def build_bundle(out: Path, samples: int = 3000, epochs: int = 2, batch_size: int = 128, spec_path: Path | None = None,
                 **model_options) -> Path:
    from din_export.config import ModelConfig, TrainConfig
    from din_export.data.source import DataSource
    from din_export.data.spec import load_spec
    from din_export.pipeline import train_and_export

    train_and_export(DataSource(synthetic_samples=samples), out, load_spec(spec_path) if spec_path else None,
                     model_config=ModelConfig(**{**SMALL_MODEL, **model_options}),
                     train_config=TrainConfig(epochs=epochs, batch_size=batch_size, progress=False))
    return out


ML100K = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ml-100k"
ML100K_MISSING = (f"MovieLens-100k is not at {ML100K}: fetch it with `din-export datasets ml-100k --to {ML100K}` "
                  "(GroupLens' archive, checksum-checked) to run the tests that need it")


def need_ml100k() -> None:
    """Skip the calling test or fixture, saying how to get the data, where MovieLens-100k is absent."""
    import pytest

    if not (ML100K / "ml-100k.inter").is_file():
        pytest.skip(ML100K_MISSING)
ML100K_RECIPE = Path(__file__).resolve().parent.parent / "examples" / "movielens-100k.toml"


USER_SIDE = ("user_id", "hist_item_id", "hist_cate_id")  # the built-in data's user-side features; the rest describe the item


def rank_against_predict(predictor, rows: dict, user: int, top_k: int | None = None) -> tuple:
    """Rank every row's item for the user of row `user`, and predict on the replicated rows: (ranking, predict's
    probabilities of the replicated rows). The built-in data's columns, as lists."""
    count = len(rows["item_id"])
    user_row = {name: rows[name][user] for name in USER_SIDE}
    candidates = {name: column for name, column in rows.items() if name not in USER_SIDE}
    ranking = predictor.rank(user_row, candidates, top_k=top_k)
    return ranking, predictor.predict({**candidates, **{name: [value] * count for name, value in user_row.items()}})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(bundle: Path, name: str | None, *options: str, cwd: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`din-runtime serve` in a process of its own on a free port of 127.0.0.1, serving `bundle` as `name` (or a
    model repository, with name None), once ready."""
    port = free_port()
    named = ["--name", name] if name is not None else []
    process = subprocess.Popen([sys.executable, "-m", "din_runtime", "serve", str(bundle), "--port", str(port), *named,
                                "--providers", "cpu", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {process.stderr.read()}") from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not become ready in 60 s")


REDIS_MISSING = "redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)"


def start_redis(folder: Path) -> tuple[subprocess.Popen, int]:
    """A real redis-server on a free port of 127.0.0.1, its files in `folder` (append-only, so a restart keeps every
    acknowledged write); skips, saying why, where redis-server is absent."""
    import shutil

    import pytest

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(REDIS_MISSING)
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                                "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not answer in 20 s")


def post_json(url: str, path: str, body: dict | bytes) -> tuple[int, dict]:
    """POST a JSON body (an object, or its bytes as they are) to the server at `url`: (status, the JSON answer),
    errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{url}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def tensor(name: str, values: list) -> dict:
    """A KServe v2 JSON input tensor of `values`, its datatype from them."""
    datatype = "BYTES" if any(isinstance(v, str) for v in values) else "FP32" if any(isinstance(v, float) for v in values) else "INT64"
    return {"name": name, "shape": [len(values)], "datatype": datatype, "data": values}

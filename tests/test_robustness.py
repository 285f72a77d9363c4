"""What a model server meets: bad and odd inputs, damaged manifests and files, kills mid-run, many calls."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from din_export.cli import main
from din_runtime import BundleError, InputError, Predictor
from din_runtime.manifest import sha256_of

MAX_LEN = 50


def good_rows(keys: dict, n: int = 3, length: int = 5) -> dict:
    rng = np.random.default_rng(n * 100 + length)
    return {"user_id": list(rng.choice(keys["user_id"], n)), "item_id": list(rng.choice(keys["item_id"], n)),
            "cate_id": list(rng.choice(keys["cate_id"], n)), "price": list(rng.random(n) * 20),
            "hist_item_id": [list(rng.choice(keys["item_id"], length)) for _ in range(n)],
            "hist_cate_id": [list(rng.choice(keys["cate_id"], length)) for _ in range(n)]}


def finite_probabilities(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1)))


@pytest.mark.parametrize(("edit", "feature", "row", "problem"), [
    (lambda r: r.pop("price"), "price", None, "missing"),
    (lambda r: r["item_id"].append(r["item_id"][0]), "item_id", None, "rows"),
    (lambda r: r["hist_item_id"].__setitem__(1, 7), "hist_item_id", 1, "must be a list"),
    (lambda r: r["hist_item_id"].__setitem__(2, [[1, 2], [3]]), "hist_item_id", None, "nested"),
    (lambda r: r["price"].__setitem__(1, "cheap"), "price", 1, "not a number"),
    (lambda r: r["item_id"].__setitem__(2, 1.5), "item_id", 2, "not an integer"),
    (lambda r: r["hist_cate_id"].__setitem__(0, r["hist_cate_id"][0][:2]), "hist_cate_id", 0, "differs"),
])
def test_bad_input_names_feature_row_and_problem(predictor: Predictor, keys: dict, edit, feature: str, row, problem: str) -> None:
    rows = good_rows(keys)
    edit(rows)
    with pytest.raises(InputError) as error:
        predictor.predict(rows)
    assert isinstance(error.value, ValueError)
    assert error.value.feature == feature and error.value.row == row and problem in str(error.value)


def test_odd_but_valid_inputs_give_finite_probabilities(predictor: Predictor, keys: dict) -> None:
    rows = good_rows(keys, n=4)
    rows["extra_feature"] = ["ignored"] * 4  # unknown keys (a label column, say) are ignored
    rows["price"] = [float("nan"), float("inf"), None, -float("inf")]  # filled with the training fill value
    assert finite_probabilities(predictor.predict(rows))
    unknown = good_rows(keys, n=4)
    oov = good_rows(keys, n=4)
    unknown["item_id"] = [-5, 2**62, 10**30, 987654321]  # negative, huge, beyond int64, never seen
    oov["item_id"] = [987654321] * 4
    assert np.array_equal(predictor.predict(unknown), predictor.predict(oov))  # all out-of-vocabulary, never an index
    feed = predictor.encode(unknown)
    assert feed["item_id"].min() >= 0 and feed["item_id"].max() < len(keys["item_id"]) + 3


def test_long_histories_keep_the_most_recent_and_every_length_works(predictor: Predictor, keys: dict) -> None:
    long = good_rows(keys, n=2, length=MAX_LEN + 30)
    recent = {k: ([h[-MAX_LEN:] for h in v] if k.startswith("hist") else v) for k, v in long.items()}
    assert np.array_equal(predictor.predict(long), predictor.predict(recent))
    for length in range(0, MAX_LEN + 1):
        assert finite_probabilities(predictor.predict(good_rows(keys, n=1, length=length)))
    assert predictor.predict({k: [] for k in long}).shape == (0,)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_well_typed_batch_equals_its_rows_one_at_a_time(predictor: Predictor, keys: dict, data) -> None:
    n = data.draw(st.integers(1, 6))
    ids = st.one_of(st.sampled_from(keys["item_id"]), st.integers(-(2**63), 2**63 - 1))
    lengths = data.draw(st.lists(st.integers(0, 70), min_size=n, max_size=n))
    rows = {
        "user_id": data.draw(st.lists(st.one_of(st.sampled_from(keys["user_id"]), st.integers(-1000, 10**9)), min_size=n, max_size=n)),
        "item_id": data.draw(st.lists(ids, min_size=n, max_size=n)),
        "cate_id": data.draw(st.lists(st.sampled_from(keys["cate_id"]), min_size=n, max_size=n)),
        "price": data.draw(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), min_size=n, max_size=n)),
        "hist_item_id": [data.draw(st.lists(ids, min_size=k, max_size=k)) for k in lengths],
        "hist_cate_id": [data.draw(st.lists(st.sampled_from(keys["cate_id"]), min_size=k, max_size=k)) for k in lengths],
    }
    together = predictor.predict(rows)
    assert finite_probabilities(together)
    alone = np.concatenate([predictor.predict({k: v[i:i + 1] for k, v in rows.items()}) for i in range(n)])
    assert np.max(np.abs(together - alone)) <= 1e-5


@settings(max_examples=60, deadline=None)
@given(content=st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10).map(json.dumps)))
def test_any_garbage_manifest_raises_the_bundle_error(tmp_path_factory: pytest.TempPathFactory, content) -> None:
    folder = tmp_path_factory.mktemp("garbage")
    (folder / "manifest.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BundleError):
        Predictor.load(folder)


def test_model_with_external_data_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "external"
    shutil.copytree(bundle, copy)
    model = onnx.load(str(copy / "model.onnx"))
    onnx.save(model, str(copy / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    (copy / "weights.bin").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["onnx"]["sha256"] = sha256_of(copy / "model.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cannot load"):
        Predictor.load(copy, providers="cpu")


def test_cli_errors_are_one_line_with_exit_2_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    from din_export.data.synthetic import SPEC_PATH

    malformed = tmp_path / "bad.csv"
    malformed.write_text("user_id,item_id\n1,2,3\n")
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(malformed), "--spec", str(SPEC_PATH), "--quiet"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "bad.csv" in result.output
    debug = subprocess.run([sys.executable, "-m", "din_export", "--debug", "train-and-export", "--data", str(malformed),
                            "--spec", str(SPEC_PATH), "--quiet"], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(tmp_path / "absent.csv"), "--spec", str(SPEC_PATH)])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "absent.csv' does not exist" in result.output
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC_PATH.read_text().replace('kind = "numeric"', 'kind = "number"'))
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(malformed), "--spec", str(spec)])
    assert result.exit_code == 2 and "feature 'price': kind must be one of" in result.output


@pytest.mark.slow
def test_kill_at_any_point_leaves_the_previous_bundle_or_the_new_one(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "din_export", "train-and-export", "--samples", "3000", "--epochs", "2",
            "--embedding-dim", "8", "--quiet", "--out", str(tmp_path / "bundle")]
    assert subprocess.run(args, capture_output=True, timeout=300).returncode == 0
    for delay in (0.5, 3.0, 6.0, 9.0):
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
        assert sha256_of(tmp_path / "bundle" / "model.onnx") == manifest["onnx"]["sha256"]  # complete, old or new
        Predictor.load(tmp_path / "bundle", providers="cpu")


@pytest.mark.slow
def test_threads_and_memory_under_sustained_calls(predictor: Predictor, keys: dict) -> None:
    batches = [good_rows(keys, n=int(n), length=int(n) * 3) for n in range(1, 9)]
    expected = [predictor.predict(b) for b in batches]

    def worker(index: int) -> bool:
        return all(np.array_equal(predictor.predict(batches[(index + i) % 8]), expected[(index + i) % 8]) for i in range(1000))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(worker, range(8)))

    def resident_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    for i in range(1000):
        predictor.predict(batches[i % 8])
    after_1000 = resident_mib()
    for i in range(9000):
        predictor.predict(batches[i % 8])
    assert resident_mib() - after_1000 < 20  # MiB: no growth with the number of calls


def test_din_runtime_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    table = tmp_path / "in.csv"
    table.write_text("user_id\n1\n")
    command = [sys.executable, "-m", "din_runtime", "predict", str(tmp_path / "no-bundle"), str(table), str(tmp_path / "out.csv")]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stderr.strip().count("\n") == 0 and "no manifest.json" in plain.stderr
    debug = subprocess.run(command[:3] + ["--debug"] + command[3:], capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "BundleError" in debug.stderr
    assert not (tmp_path / "out.csv").exists()

"""The behaviours' times: `prepare` writes each behaviour's time beside its history (both layouts), the model sees
each behaviour's age at the row's own time in log2 buckets, and every serving path computes the same ages as
training: predict, rank, the server (with the times sent, or filled from the behaviour store), Triton's raw-input
graph and the served log. Every graph of every model passes parity with the ages as an input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from test_prepare import reference_histories, write_log
from test_raw_inputs import raw_feed, raw_session

from din_export.bundle import load_bundle
from din_export.cli import main
from din_export.config import ModelConfig, TrainConfig
from din_export.data.prepare import prepare
from din_export.data.samples import raw_columns, read_table
from din_export.data.source import DataSource
from din_export.data.spec import SpecError, load_spec, spec_from_dict
from din_export.data.splits import encode_split
from din_export.data.synthetic import LOG_SPEC_PATH
from din_export.export.graph_files import export_verified
from din_export.model.family import build_model
from din_export.model.layers import AgeRecency
from din_export.pipeline import train_and_export
from din_runtime import InputError, Predictor
from din_runtime.encoding import FeatureEncoder
from din_runtime.schema import FeatureSchema
from din_runtime.stores import open_store
from helpers import SMALL_MODEL, post_json, start_server, tensor

USER_SIDE = ("user_id", "gender", "age", "session_depth", "hist_item_id", "hist_category", "hist_time", "event_time")
ENCODING = [{"name": "item", "kind": "categorical", "key_type": "int", "keys": list(range(1, 31))},
            {"name": "hist", "kind": "sequence", "shares": "item", "max_len": 4},
            {"name": "when", "kind": "times", "at": "now"}]


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the log's folder, the samples prepared with the behaviours' times, a small DIN trained on them)."""
    folder = tmp_path_factory.mktemp("timed")
    sources = write_log(folder / "log", events=4000)
    recipe = folder / "recipe.toml"
    recipe.write_text(LOG_SPEC_PATH.read_text())  # the built-in log's recipe, which has the behaviours' times
    prepare(recipe, sources, folder / "samples")
    prepare(recipe, sources, folder / "reference", layout="reference")
    samples = folder / "samples"
    source = DataSource(samples / "train.parquet", samples / "valid.parquet", samples / "test.parquet")
    train_and_export(source, folder / "bundle", load_spec(samples / "spec.toml"), ModelConfig(**SMALL_MODEL),
                     TrainConfig(epochs=1, batch_size=256, progress=False))
    return folder / "log", samples, folder / "bundle"


def test_prepare_writes_each_behaviours_time_beside_its_history(timed: tuple[Path, Path, Path]) -> None:
    """Each sample's times are its history's behaviours' times (the user's events strictly before the sample, the
    most recent 50, oldest first); the reference layout reads back the same."""
    log_folder, samples, _ = timed
    log = pq.read_table(log_folder / "log.parquet")
    table = pq.read_table(samples / "train.parquet")
    picked = table.take(pa.array(np.random.default_rng(0).choice(table.num_rows, 120, replace=False)))
    users, times = picked.column("user_id").to_pylist(), picked.column("event_time").to_pylist()
    expected = reference_histories(log, "user_id", "timestamp", "timestamp", users, times, 50)
    assert picked.column("hist_time").to_pylist() == [[float(t) for t in row] for row in expected]
    assert [len(t) for t in picked.column("hist_time").to_pylist()] == [len(h) for h in picked.column("hist_item_id").to_pylist()]
    spec = load_spec(samples / "spec.toml")
    for split in ("train", "test"):
        inline, referenced = (read_table(folder / f"{split}.parquet", spec) for folder in (samples, samples.parent / "reference"))
        assert referenced.column("hist_time").to_pylist() == inline.column("hist_time").to_pylist()


def test_ages_fall_in_log2_buckets_with_exact_power_of_two_bounds() -> None:
    ages = torch.tensor([[0, 1, 2, 3, 4, 7, 8, 2**37, 2**38 - 1, 2**38, 2**62]])
    assert AgeRecency(4).buckets(ages).tolist() == [[0, 1, 2, 2, 3, 3, 4, 38, 38, 39, 39]]


def test_the_encoder_takes_ages_at_each_rows_time_and_names_what_is_wrong() -> None:
    encoder = FeatureEncoder(FeatureSchema.from_manifest(ENCODING))
    feed = encoder.encode({"item": [1, 2], "hist": [[1, 2, 3, 4, 5], []], "when": [[10, 20, 30, 40, 55], []], "now": [50, 7]})
    np.testing.assert_array_equal(feed["when"], [[30, 20, 10, 0], [0, 0, 0, 0]])  # the most recent 4; one ahead of its row: 0
    assert feed["when"].dtype == np.int64 and feed["hist"].shape == feed["when"].shape
    fractions = encoder.encode({"item": [1], "hist": [[1, 2]], "when": [[8.5, 9.25]], "now": [10.0]})["when"]
    np.testing.assert_array_equal(fractions, [[1, 0]])  # whole units: 1.5 and 0.75 fall in the buckets of 1 and 0
    for columns, field, problem in (
        ({"item": [1], "hist": [[1, 2]], "when": [[1, None]], "now": [5]}, "when", "missing or not finite"),
        ({"item": [1], "hist": [[1, 2]], "when": [[1, 2]]}, "now", "missing from the input"),
        ({"item": [1], "hist": [[1, 2]], "when": [[1]], "now": [5]}, "when", "history length differs"),
        ({"item": [1], "hist": [[1]], "when": [["soon"]], "now": [5]}, "when", "is not a number"),
    ):
        with pytest.raises(InputError) as error:
            encoder.encode(columns)
        assert error.value.feature == field and problem in str(error.value)


def test_a_spec_has_one_times_feature_and_its_row_time_is_no_feature() -> None:
    base = {"label": "y", "features": {"item": {"kind": "categorical"}, "hist": {"kind": "sequence", "shares": "item", "max_len": 5}}}
    for extra, message in (({"a": {"kind": "times"}, "b": {"kind": "times"}}, "one times feature"),
                           ({"a": {"kind": "times", "at": "item"}}, "at must name the column")):
        with pytest.raises(SpecError, match=message):
            spec_from_dict({**base, "features": {**base["features"], **extra}})


@pytest.mark.parametrize("variant", ["din", "dien", "bst"])  # din-seq's graphs are DIN's behind the encoder bst tests
def test_every_graph_of_every_model_takes_the_ages_and_passes_parity(variant: str, tmp_path: Path) -> None:
    """Untrained models with the ages as an input: model, rank and explain graphs within 1e-5 of PyTorch on every
    length (0, 1, 2, max_len, 3 x max_len), ages across all buckets and on their bounds; the ages change the score."""
    torch.manual_seed(0)
    din = build_model(FeatureSchema.from_manifest(ENCODING), ModelConfig(variant=variant, **SMALL_MODEL)).eval()
    with torch.no_grad():
        din.age_recency.table.weight.normal_(std=1.0)  # trained tables are far from their initial 0.02
    sections = export_verified(din, tmp_path)
    assert all(section is None or section["parity"]["max_abs_diff"] < 1e-5 for section in sections.values())
    item, history = torch.tensor([3, 3]), torch.tensor([[1, 2, 3], [1, 2, 3]])
    with torch.inference_mode():
        scores = din(item, history, torch.tensor([[1, 2, 3], [10**6, 10**7, 10**8]]))
    assert scores[0] != scores[1]


def test_a_row_scores_with_its_times_as_in_training_through_predict_rank_and_the_raw_input_graph(
        timed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, samples, bundle = timed
    spec = load_spec(samples / "spec.toml")
    table = read_table(samples / "test.parquet", spec)
    columns = raw_columns(table, spec)
    predictor = Predictor.load(bundle, providers="cpu")
    din = load_bundle(bundle).din
    split = encode_split(table, spec, predictor.encoder)
    with torch.inference_mode():  # the training pipeline's score: its encoded split through the PyTorch model
        trained = din.probability(din(*[torch.from_numpy(a) for a in split.rows(np.arange(len(split))).values()]))
    np.testing.assert_allclose(predictor.predict(columns), trained.numpy(), rtol=0, atol=1e-5)
    rows = table.slice(0, 40).to_pydict()
    user = {name: rows[name][7] for name in USER_SIDE}
    candidates = {name: rows[name] for name in ("item_id", "category", "price")}
    ranked = predictor.rank(user, candidates)
    replicated = predictor.predict({**candidates, **{name: [value] * 40 for name, value in user.items()}})
    np.testing.assert_allclose(ranked.scores, replicated, rtol=0, atol=1e-6)
    (raw,) = raw_session(bundle, tmp_path).run(["probability"], raw_feed(predictor, rows, 60))
    np.testing.assert_allclose(raw, predictor.predict(rows), rtol=0, atol=1e-5)
    for precision in ("fp16", "int8"):  # the ages are whole units, int64: no conversion touches their buckets
        reduced = CliRunner().invoke(main, ["export", str(bundle), "--precision", precision, "--force", "--out", str(tmp_path / precision)])
        assert reduced.exit_code == 0 and "validation AUC" in reduced.output, reduced.output


@pytest.mark.slow
def test_the_server_takes_the_times_or_fills_them_from_the_store_and_logs_them(timed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Over HTTP: rows sent with their times and each row's time score as predict does; rows sent with the user and
    the candidate alone, as of each row's time, get history and times from the store (loaded from the log by the
    real command) and score the same; the served log holds the times and the row's time."""
    log_folder, samples, bundle = timed
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    loaded = CliRunner().invoke(main, ["events", "load", "--recipe", str(log_folder.parent / "recipe.toml"), "--log",
                                       str(log_folder / "log.parquet"), "--items", str(log_folder / "items.parquet"), "--users",
                                       str(log_folder / "users.parquet"), "--store", store_url])
    assert loaded.exit_code == 0, loaded.output
    spec = load_spec(samples / "spec.toml")
    table = read_table(samples / "test.parquet", spec).slice(0, 30)
    rows = {name: values for name, values in table.to_pydict().items() if name != "label"}
    sent = {name: [" ".join(map(str, v)) for v in values] if name.startswith("hist_") else values for name, values in rows.items()}
    predictor = Predictor.load(bundle, providers="cpu")
    expected_sent = predictor.predict(sent)  # histories as the protocol carries them: text
    # what the store holds per behaviour: the item and its time (the categories are looked up from the items)
    expected = predictor.predict({name: values for name, values in rows.items() if name != "hist_category"})
    process, url = start_server(bundle, "timed", "--store", store_url, "--log-requests", str(tmp_path / "served"))
    try:
        inputs = [tensor(name, values) for name, values in sent.items() if name != "event_time"]
        inputs.append({"name": "event_time", "datatype": "FP64", "shape": [30], "data": rows["event_time"]})
        status, answer = post_json(url, "/v2/models/timed/infer", {"inputs": inputs})
        assert status == 200, answer
        np.testing.assert_allclose(answer["outputs"][0]["data"], expected_sent, rtol=0, atol=1e-6)
        for row in range(5):
            given = [tensor(name, [rows[name][row]]) for name in ("user_id", "item_id", "category", "price", "session_depth")]
            status, answer = post_json(url, "/v2/models/timed/infer", {"inputs": given, "parameters": {"as_of": rows["event_time"][row]}})
            assert status == 200, answer
            np.testing.assert_allclose(answer["outputs"][0]["data"], expected[row:row + 1], rtol=0, atol=1e-6)
        alone = [tensor(name, [rows[name][0]]) for name in ("user_id", "item_id", "category", "price", "session_depth")]
        # neither the row's time nor as_of: every stored behaviour, the row scored now by the server's clock (ages of
        # years here: a second apart crosses no log2 bucket)
        status, answer = post_json(url, "/v2/models/timed/infer", {"inputs": alone})
        store = open_store(store_url)
        try:
            now = predictor.predict({entry["name"]: entry["data"] for entry in alone}, store=store)
        finally:
            store.close()
        assert status == 200 and abs(answer["outputs"][0]["data"][0] - now[0]) < 1e-6, (answer, now)
    finally:
        process.terminate()
        process.wait(timeout=30)
    logged = pq.read_table(next((tmp_path / "served").rglob("*.parquet")))
    assert {"hist_time", "event_time"} <= set(logged.column_names)

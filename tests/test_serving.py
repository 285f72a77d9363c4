"""Serving settings: chunked large batches, session options, provider fallback, many threads at once."""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from din_export.data.synthetic import generate
from din_runtime import Predictor
from din_runtime.errors import ProviderError
from din_runtime.predictor import SMALL_CALL_ROWS, session_options_for
from din_runtime.providers import CPU, CUDA, OPENVINO
from helpers import rank_against_predict


def rows(count: int, seed: int) -> dict:
    table = generate(count, seed=seed)
    return {name: table.column(name).to_pylist() for name in table.column_names}


def test_large_batches_run_in_chunks_with_the_same_result(bundle: Path) -> None:
    batch = rows(50, seed=1)
    whole = Predictor.load(bundle, providers="cpu").predict(batch)
    chunked = Predictor.load(bundle, providers="cpu", session_rows=7).predict(batch)
    assert np.max(np.abs(whole - chunked)) <= 1e-6 and chunked.shape == (50,)


def test_session_settings_are_applied_and_checked(bundle: Path) -> None:
    predictor = Predictor.load(bundle, providers="cpu", threads=1, optimization="basic")
    assert predictor.session.get_session_options().intra_op_num_threads == 1
    assert predictor.predict(rows(3, seed=2)).shape == (3,)
    with pytest.raises(ValueError, match="optimization must be one of"):
        Predictor.load(bundle, optimization="fastest")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        Predictor.load(bundle, threads=0)


def test_small_calls_run_on_one_thread_with_the_batch_results(bundle: Path) -> None:
    predictor = Predictor.load(bundle, providers="cpu", threads=2)
    batch = rows(40, seed=3)
    whole = predictor.predict(batch)
    singles = np.concatenate([predictor.predict({name: column[i:i + 1] for name, column in batch.items()}) for i in range(40)])
    assert np.max(np.abs(whole - singles)) <= 1e-6
    assert predictor._session_for(1).get_session_options().intra_op_num_threads == 1
    assert predictor._session_for(SMALL_CALL_ROWS + 1) is predictor.session
    # one thread asked for, or the caller's own session options: one session for every call
    for single in (Predictor.load(bundle, providers="cpu", threads=1),
                   Predictor.load(bundle, providers="cpu", session_options=session_options_for(2))):
        assert single._session_for(1) is single.session


def test_cuda_with_fallback_warns_instead_of_raising(bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="din_runtime"):
        predictor = Predictor.load(bundle, providers="cuda", fallback=True)
    if predictor.providers[0] == CUDA:
        assert not caplog.records
    else:
        assert predictor.providers == [CPU]
        assert "fallback=True" in caplog.text


def test_openvino_runs_with_parity_or_is_refused_in_one_line(bundle: Path) -> None:
    """OpenVINO's plugin provider where it is installed and offers a CPU device (Intel); else a one-line refusal
    saying which of the two is missing, and with fallback the CPU provider."""
    try:
        import onnxruntime_ep_openvino  # noqa: F401 - only whether it is there
        installed = True
    except ImportError:
        installed = False
    batch = rows(300, seed=5)
    try:
        predictor = Predictor.load(bundle, providers="openvino")
    except ProviderError as error:
        message = str(error)
        assert "\n" not in message and message.startswith("OpenVINO was asked for")
        assert ("not installed" in message) is not installed and ("no CPU device" in message) is installed
        assert Predictor.load(bundle, providers="openvino", fallback=True).providers == [CPU]
        return
    assert predictor.providers[0] == OPENVINO  # no silent fallback to ONNX Runtime's CPU kernels
    expected = Predictor.load(bundle, providers="cpu").predict(batch)
    assert np.max(np.abs(predictor.predict(batch) - expected)) <= 1e-5


def test_many_threads_get_the_sequential_results(bundle: Path) -> None:
    predictor = Predictor.load(bundle, providers="cpu")
    batches = [rows(int(n), seed=i) for i, n in enumerate(np.random.default_rng(0).integers(1, 40, 64))]
    expected = [predictor.predict(b) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(5):
            results = list(pool.map(predictor.predict, batches))
            assert all(np.array_equal(r, e) for r, e in zip(results, expected, strict=True))


def test_predict_and_rank_from_many_threads_get_the_sequential_results(bundle: Path) -> None:
    predictor = Predictor.load(bundle, providers="cpu")
    batches = [rows(int(n), seed=100 + i) for i, n in enumerate(np.random.default_rng(1).integers(2, 40, 32))]

    def both(batch: dict) -> tuple[np.ndarray, np.ndarray]:
        ranking, _ = rank_against_predict(predictor, batch, user=0)
        return predictor.predict(batch), ranking.probabilities

    expected = [both(b) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            for (p, r), (pe, re) in zip(pool.map(both, batches), expected, strict=True):
                assert np.array_equal(p, pe) and np.array_equal(r, re)

"""Fixtures shared by tests/ and benchmarks/: small real bundles trained once per test run, whichever pytest-xdist
worker asks first (the others wait for it and read the same folder)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from helpers import ML100K, ML100K_RECIPE, REFERENCE_MAX_LEN, SMALL_MODEL, build_bundle, need_ml100k


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """`build(folder)` once per test run across every xdist worker (filelock's lock on the run's shared temporary
    folder; a worker that finds it built reuses it). Tests only read what it holds."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DIN bundle trained on the built-in data."""
    return built_once(tmp_path_factory, "bundle", lambda folder: build_bundle(folder / "din")) / "din"


@pytest.fixture(scope="module")
def predictor(bundle: Path):
    """The bundle's Predictor on the CPU (modules that need another override this)."""
    from din_runtime import Predictor

    return Predictor.load(bundle, providers="cpu")


@pytest.fixture(scope="module")
def torch_threads() -> Iterator[Callable[[int], None]]:
    """Set PyTorch's threads for one module's measurements and put them back after it: a module that runs next on
    the same xdist worker keeps the worker's share, as the commands it starts do (a resumed run compared bitwise with
    an uninterrupted one differed where a benchmark module had left the worker at 2 threads and the subprocess ran 1)."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def keys(predictor) -> dict[str, list]:
    """The vocabulary keys of each categorical feature of the predictor's bundle."""
    return {f["name"]: f["keys"] for f in predictor.manifest["encoding"] if f["kind"] == "categorical"}



@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DIN at the reference sizes (embedding 18 per field, attention 80-40, MLP 200-80) on the built-in data, with
    histories kept up to 200 behaviours, for latency benchmarks. Latency does not depend on how well the weights
    are trained; one short epoch gives real weights."""
    from din_export.data.synthetic import SPEC_PATH

    def build(folder: Path) -> None:
        spec = folder / "spec.toml"
        spec.write_text(SPEC_PATH.read_text().replace("max_len = 50", f"max_len = {REFERENCE_MAX_LEN}"))
        build_bundle(folder / "din", samples=2000, epochs=1, spec_path=spec, embedding_dim=18, attention_hidden=(80, 40),
                     mlp_hidden=(200, 80), mlp_activation="prelu")  # the activation the README's latency tables were measured with

    return built_once(tmp_path_factory, "reference-bundle", build) / "din"


@pytest.fixture(scope="session")
def ml100k_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-100k prepared with the committed recipe (read from ../shared, never copied)."""
    from din_export.data.prepare import prepare
    from din_export.data.rules import Sources

    need_ml100k()

    def build(folder: Path) -> None:
        prepare(ML100K_RECIPE, Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item", ML100K / "ml-100k.user"), folder / "samples")

    return built_once(tmp_path_factory, "ml100k-samples", build) / "samples"


@pytest.fixture(scope="session")
def ml100k_bundle(ml100k_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DIN trained one epoch on the prepared MovieLens-100k samples."""
    from din_export.config import ModelConfig, TrainConfig
    from din_export.data.source import DataSource
    from din_export.data.spec import load_spec
    from din_export.pipeline import train_and_export

    def build(folder: Path) -> None:
        source = DataSource(ml100k_samples / "train.parquet", ml100k_samples / "valid.parquet", ml100k_samples / "test.parquet")
        train_and_export(source, folder / "ml-100k-din", load_spec(ml100k_samples / "spec.toml"), ModelConfig(**SMALL_MODEL),
                         TrainConfig(epochs=1, batch_size=512, progress=False))

    return built_once(tmp_path_factory, "ml100k-bundle", build) / "ml-100k-din"


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker gets its share of the cores for PyTorch's threads (and so do the commands its tests
    start): two workers of two threads each on two cores spend a third of their CPU time spinning."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:
        return
    threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every benchmark is `slow`: CI runs them once as tests (--benchmark-disable), the inner loop is tests/ alone."""
    benchmarks = Path(__file__).parent / "benchmarks"
    for item in items:
        if benchmarks in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)

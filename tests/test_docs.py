"""The README and the docs site as a reader meets them: every Python and shell snippet runs as written, in page order,
in a project folder laid out as the docs assume (`.venv`, `examples/`, `../shared`), with `din-runtime serve` lines
started as real servers on 127.0.0.1 and the snippets after them talking to those servers. The site builds with
`mkdocs build --strict`, the spec reference table matches the code, and no page speaks of our own history."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from din_export.config import DROPOUT_BY_VARIANT, HOLDOUT, ModelConfig, TrainConfig
from din_export.data.recipe import SECTION_KEYS, SamplingConfig, SplitConfig
from din_export.data.spec import ALLOWED_KEYS, PREPARE_KEYS, TOP_LEVEL_KEYS, FeatureSpec, _toml_value
from helpers import ML100K, start_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SNIPPET = re.compile(r"^```(python|bash)\n(.*?)^```", flags=re.S | re.M)
# A snippet, or an output block: a text block right after an `<!-- output -->` line shows what the snippet before it
# printed (tested against a real run, numbers masked).
BLOCK = re.compile(r"^(?:```(python|bash)\n(.*?)^```|<!-- output -->\n```text\n(.*?)^```)", flags=re.S | re.M)
NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")
SERVER_PORT = "8000"  # the port the docs' serve lines and clients use


def pages() -> list[Path]:
    """The README, then the site's pages in the order of mkdocs.yml's navigation."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python/name:", ""))["nav"]

    def walk(entries) -> list[str]:
        found = []
        for entry in entries:
            for value in entry.values():
                found += walk(value) if isinstance(value, list) else [value]
        return found

    return [README] + [ROOT / "docs" / name for name in walk(nav)]


def snippets(page: Path) -> list[tuple[str, str]]:
    return SNIPPET.findall(page.read_text(encoding="utf-8"))


def snippets_with_output(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, the output block shown after it or None) of each snippet, in page order."""
    found: list[tuple[str, str, str | None]] = []
    for language, code, shown in BLOCK.findall(page.read_text(encoding="utf-8")):
        if language:
            found.append((language, code, None))
        else:
            assert found and found[-1][2] is None, f"{page.name}: an output block follows no snippet, or a second one follows it"
            found[-1] = (found[-1][0], found[-1][1], shown)
    return found


def masked(text: str) -> list[str]:
    """Printed lines with every number masked (times, metrics and counts vary from run to run; words must not)."""
    return [NUMBER.sub("#", line.rstrip()) for line in text.strip().splitlines()]


def readme_commands() -> tuple[str, str]:
    """The README's two fresh-machine commands: install and run the main job; run the tests."""
    install, tests = snippets(README)[0][1].strip().splitlines()
    return install, tests


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Path:
    """A project root as the docs assume it, beside a `shared/` holding the data where the checkout has it."""
    base = tmp_path_factory.mktemp("reader")
    root = base / "project"
    root.mkdir()
    (root / ".venv").symlink_to(Path(sys.prefix))  # the environment running the tests
    for name in ("examples", "benchmarks", "din_export", "runtime", "tests"):
        (root / name).symlink_to(ROOT / name)
    if ML100K.is_dir():
        (base / "shared" / "data").mkdir(parents=True)
        (base / "shared" / "data" / "ml-100k").symlink_to(ML100K)
    shutil.copytree(bundle, root / "models" / "synthetic-din")  # until getting-started trains the real one
    return root


class Reader:
    """Runs one page's snippets in order: Python in one namespace per page, shell with bash -e, servers kept running
    for the rest of the page."""

    def __init__(self, root: Path) -> None:
        self.root, self.namespace, self.servers, self.port = root, {"__name__": "__docs__"}, [], None
        self.env = {**os.environ, "PATH": f"{root / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def local(self, code: str) -> str:
        return code if self.port is None else code.replace(f"localhost:{SERVER_PORT}", f"127.0.0.1:{self.port}")

    def python(self, code: str, where: str) -> str:
        """Run the snippet; what it printed."""
        import contextlib
        import io

        previous, printed = Path.cwd(), io.StringIO()
        os.chdir(self.root)
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(self.local(code), where, "exec"), self.namespace)  # noqa: S102 - the docs' own code
        finally:
            os.chdir(previous)
        return printed.getvalue()

    def bash(self, code: str, where: str) -> str:
        """Run the snippet; what it printed on standard output."""
        lines = []
        for line in code.splitlines():
            serve = re.search(r"din-runtime serve (\S+)(.*)$", line)
            if serve:  # a server the next lines talk to: started for real, on a free port
                options = serve.group(2).replace(f"--port {SERVER_PORT}", "").split()
                bundle = self.root / serve.group(1)
                name = bundle.name if (bundle / "manifest.json").is_file() else None  # else a model repository
                process, url = start_server(bundle, name, *options, cwd=self.root)  # relative paths in options: the project's
                self.servers.append(process)
                self.port = url.rsplit(":", 1)[1]
                continue
            lines.append(line)
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", self.local("\n".join(lines))], cwd=self.root, env=self.env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{where} failed:\n{code}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        return result.stdout

    def close(self) -> None:
        for process in self.servers:
            process.terminate()
            process.wait(timeout=30)


def test_the_readme_opens_with_the_two_commands_ci_runs() -> None:
    install, tests = readme_commands()
    assert install.startswith("python3 -m venv .venv && ") and install.endswith("din-export train-and-export")
    assert "[test]" in tests and tests.endswith("python -m pytest --benchmark-disable")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for part in install.split(" && ") + tests.split(" && "):  # each step, in CI with pip's quiet flags
        assert part.replace(".venv/bin/pip install", ".venv/bin/pip install --quiet --disable-pip-version-check") in ci or part in ci, part
    assert install in (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_the_first_command_installs_nothing_only_tests_docs_or_spark_need() -> None:
    """The lean install: the project's own dependencies hold no test runner, docs builder, Spark or benchmark peer, and
    each of those is in the extra the docs name for it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lean = " ".join(project["dependencies"])
    for package in ("pytest", "mkdocs", "pyspark", "openvino", "tritonclient", "hypothesis", "ruff", "onnxruntime-gpu", "[dev]", "[test]"):
        assert package not in lean, package
    extras = project["optional-dependencies"]
    assert any("pyspark" in r for r in extras["spark"]) and any(r.startswith("mkdocs") for r in extras["docs"])
    assert "din-export[spark,docs]" in extras["test"] and any(r.startswith("pytest") for r in extras["test"])
    assert "din-runtime[serve]" in project["dependencies"]  # serving is part of what the first command installs


@pytest.mark.slow
@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_snippet_runs_as_written(page: Path, project: Path) -> None:
    """Each snippet runs, in page order; where the page shows what one printed (an output block), the real run
    prints the same lines, numbers aside."""
    found = snippets_with_output(page)
    if page == README:
        found = found[1:]  # the fresh-machine commands: CI runs them (the test above holds the two together)
    if any("../shared" in code for _, code, _ in found) and not ML100K.is_dir():
        pytest.skip(f"{page.name} reads MovieLens-100k: din-export datasets ml-100k --to {ML100K}")
    reader = Reader(project)
    try:
        for index, (language, code, shown) in enumerate(found):
            where = f"{page.name} snippet {index + 1}"
            printed = getattr(reader, language)(code, where)
            if shown is not None:
                assert masked(printed) == masked(shown), f"{where} printed, numbers masked:\n" + "\n".join(masked(printed))
    finally:
        reader.close()


def test_the_outputs_shown_are_checked_and_the_readme_shows_the_getting_started_run() -> None:
    """The README shows the main job's output as getting started does (whose block the run above checks), and the
    masking keeps every word: a changed phase name or metric would fail."""
    (readme_output,) = [shown for _, _, shown in snippets_with_output(README) if shown is not None]
    shown = [s for _, code, s in snippets_with_output(ROOT / "docs" / "getting-started.md") if s is not None]
    assert readme_output in shown
    assert masked("time: training 26.6 s (read 0.6, export onnx 3.1)") == ["time: training # s (read #, export onnx #)"]
    assert masked("auc 0.8297, ece 0.0228, 1.79e-07 over 1,639 users") == ["auc #, ece #, # over # users"]


@pytest.mark.slow
def test_the_serving_snippets_answer_what_predict_answers(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    """Beyond running: the curl request and the tritonclient example of the serving guide get predict's numbers."""
    from din_runtime import Predictor

    page = (ROOT / "docs" / "guides" / "serving.md").read_text(encoding="utf-8")
    (shell,) = [code for language, code in SNIPPET.findall(page) if language == "bash" and "din-runtime serve" in code]
    (client,) = [code for language, code in SNIPPET.findall(page) if "httpclient.InferenceServerClient" in code]
    folder = tmp_path / "models" / "synthetic-din"
    shutil.copytree(bundle, folder)
    process, url = start_server(folder, "synthetic-din")
    try:
        curl = shell[shell.index("curl "):].replace(f"localhost:{SERVER_PORT}", url)
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30, check=True).stdout
        expected = Predictor.load(folder, providers="cpu").predict(
            {"user_id": [17], "item_id": [2222], "price": [8.23], "hist_item_id": [[1306, 639, 1455]]})
        outputs = json.loads(answer)["outputs"][0]
        assert outputs["shape"] == [1]
        np.testing.assert_allclose(outputs["data"], expected, rtol=0, atol=1e-6)
        printed: list = []
        monkeypatch.setattr("builtins.print", lambda *values: printed.extend(values))
        exec(compile(client.replace(f"localhost:{SERVER_PORT}", url), "serving.md", "exec"), {})  # noqa: S102
        assert printed[0].shape == (2,)
    finally:
        process.terminate()
        process.wait(timeout=30)


def spec_reference() -> dict[tuple[str, str], str]:
    """(section, key) -> default cell of the spec guide's reference table."""
    rows = {}
    for line in (ROOT / "docs" / "guides" / "spec.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith("`") and cells[0] not in ("section", "---"):
            rows[cells[0], cells[1].strip("`")] = cells[3]
    return rows


def test_the_spec_reference_lists_every_key_with_the_codes_default() -> None:
    rows = spec_reference()
    expected = {("(top level)", key) for key in TOP_LEVEL_KEYS - set(SECTION_KEYS) - {"model", "training"}}
    expected |= {("features.NAME", key) for keys in (*ALLOWED_KEYS.values(), *PREPARE_KEYS.values()) for key in keys}
    expected |= {(section, key) for section, keys in SECTION_KEYS.items() for key in keys}
    expected |= {("model", f.name) for f in dataclasses.fields(ModelConfig)} | {("training", f.name) for f in dataclasses.fields(TrainConfig)}
    assert set(rows) == expected, (sorted(expected - set(rows)), sorted(set(rows) - expected))

    def default_of(value) -> str:
        return f"`{_toml_value(list(value) if isinstance(value, tuple) else value)}`"

    for config, section in ((ModelConfig(), "model"), (TrainConfig(), "training")):
        for field in dataclasses.fields(config):
            expected_cell = default_of(getattr(config, field.name))
            if field.name == "dropout" and section == "model":  # by variant: the rest's, then each variant's own
                expected_cell += "".join(f", {default_of(rate)} for {variant}" for variant, rate in DROPOUT_BY_VARIANT.items())
            assert rows[section, field.name] == expected_cell, (section, field.name)
    feature = FeatureSpec("x", "numeric")
    for key in ("min_count", "fill", "normalize", "source", "first_token"):
        assert rows["features.NAME", key] == default_of(getattr(feature, key)), key
    assert rows["sampling", "strategy"] == default_of(SamplingConfig.strategy)
    assert rows["sampling", "seed"] == default_of(SamplingConfig.seed)
    assert rows["sampling", "keep_negatives"] == default_of(SamplingConfig.keep_negatives)
    assert rows["sampling", "negatives"].startswith(default_of(SamplingConfig.negatives))
    assert rows["split", "mode"] == default_of(SplitConfig.mode)
    for key in ("valid", "test"):
        assert all(f"`{value}` ({mode})" in rows["split", key] for mode, value in HOLDOUT.items()), key


def test_no_page_speaks_of_our_history() -> None:
    for page in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        found = re.findall(r"issue [0-9]+|before this work", text, flags=re.I)
        assert not found, (page, found)

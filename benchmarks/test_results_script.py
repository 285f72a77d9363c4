"""benchmarks/results.py, the one script behind the results pages, kept from rotting: it lists its measurements,
refuses an unknown one, and writes a table headed by date, CPU, versions and command, whole or not at all."""

import importlib.util
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def load_results():
    spec = importlib.util.spec_from_file_location("results", HERE / "results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["results"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_it_lists_every_measurement_the_pages_include() -> None:
    listed = subprocess.run([sys.executable, str(HERE / "results.py"), "--list"], capture_output=True, text=True, timeout=60, check=True)
    names = set(listed.stdout.split())
    included = set()
    for page in (HERE.parent / "docs" / "results").glob("*.md"):
        included |= {line.split("generated/")[1].removesuffix('.md"') for line in page.read_text().splitlines() if line.startswith("--8<--")}
    assert included and included <= names
    refused = subprocess.run([sys.executable, str(HERE / "results.py"), "no-such-table"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "unknown measurement" in refused.stderr


def test_a_table_is_written_with_its_provenance(tmp_path: Path, monkeypatch) -> None:
    results = load_results()
    monkeypatch.setattr(results, "OUT", tmp_path)
    output = "noise\n| a | b |\n|---|---|\n| 1 | 2 |\nmore noise\n| c |\n|---|\n"
    target = results.write("example", "python benchmarks/example.py", results.tables_in(output), 61.0)
    text = target.read_text()
    assert results.cpu_model() in text and "torch" in text and "`python benchmarks/example.py`" in text and "1.0 minutes" in text
    assert "| 1 | 2 |" in text and "noise" not in text and not list(tmp_path.glob("*.partial"))

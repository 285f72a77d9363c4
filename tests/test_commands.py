"""Both command lines as a user meets them: quick help without torch, versions, exact option names, one-line
errors, `python -m`, and the 0.1.0 name of --precision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_runtime.manifest import read_manifest, sha256_of

FIXTURE = Path(__file__).parent / "fixtures" / "bundle-0.1.0"


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_help_imports_neither_torch_nor_onnx_runtime() -> None:
    probe = python("-c", "import sys; from din_export.cli import main\n"
                         "try:\n    main(['train-and-export', '--help'])\nexcept SystemExit:\n    pass\n"
                         "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    assert probe.returncode == 0, probe.stderr
    assert "--embedding-dim" in probe.stdout
    assert probe.stdout.strip().endswith("[]")


def test_both_packages_run_as_modules_and_report_their_version() -> None:
    for package, program in (("din_export", "din-export"), ("din_runtime", "din-runtime")):
        result = python("-m", package, "--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{program}, version ")


def test_runtime_rejects_an_abbreviated_option_in_one_line(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("user_id\n1\n")
    result = python("-m", "din_runtime", "predict", str(FIXTURE), str(source), str(tmp_path / "out.csv"), "--id-colum", "user_id")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: No such option '--id-colum'. Did you mean '--id-column'?"]
    assert not (tmp_path / "out.csv").exists()


def test_runtime_errors_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("user_id,item_id\nalice,1\n")
    result = python("-m", "din_runtime", "predict", str(FIXTURE), str(source), str(tmp_path / "out.csv"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: feature 'cate_id': {source}: missing from the input"]


@pytest.mark.slow
def test_variant_is_a_hidden_alias_of_precision(tmp_path: Path) -> None:
    runner = CliRunner()
    assert "--variant" not in runner.invoke(main, ["export", "--help"]).output
    result = runner.invoke(main, ["export", str(FIXTURE), "--out", str(tmp_path / "b"), "--variant", "int8", "--force"])
    assert result.exit_code == 0, result.output
    assert "--variant is now --precision" in result.output
    assert read_manifest(tmp_path / "b")["onnx"]["precision"] == "int8"
    disagree = runner.invoke(main, ["export", str(FIXTURE), "--out", str(tmp_path / "b"), "--variant", "fp16", "--precision", "int8"])
    assert disagree.exit_code == 2 and "--variant is the old name of --precision; give --precision alone" in disagree.output


def test_exported_graphs_carry_no_build_paths_and_the_manifest_hashes_the_shipped_file(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    for section in ("onnx", "ranking"):
        path = bundle / manifest[section]["file"]
        model = onnx.load(str(path))
        assert sum(len(node.metadata_props) for node in model.graph.node) == 0
        assert b"stack_trace" not in path.read_bytes() and str(Path(__file__).parent.parent).encode() not in path.read_bytes()
        assert manifest[section]["sha256"] == sha256_of(path)

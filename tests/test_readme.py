"""The README's Python snippets run as written, against a real bundle in the place they name."""

import re
import shutil
from pathlib import Path

import numpy as np

from din_export.export.triton import write_repository

README = Path(__file__).resolve().parent.parent / "README.md"
NETWORK_LINES = ("InferenceServerClient(", "client.infer(")  # the Triton snippet's two lines that need a live server


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def snippet(marker: str) -> str:
    """The one Python snippet of the README that contains `marker`."""
    (found,) = [code for code in python_snippets() if marker in code]
    return found


def shell_snippet(marker: str) -> str:
    (found,) = [code for code in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S) if marker in code]
    return found


def test_serving_ranking_and_triton_client_snippets_run(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    serving, ranking, triton = (snippet(marker) for marker in ('p = Predictor.load("models/synthetic-din")', "p.rank(", "grpcclient"))
    shutil.copytree(bundle, tmp_path / "models" / "synthetic-din")  # where the snippets look, relative to the project root
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(serving + ranking, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["probs"].shape == (2,) and np.all((namespace["probs"] >= 0) & (namespace["probs"] <= 1))
    assert len(namespace["ranking"].order) == 2
    offline = "\n".join(line for line in triton.splitlines() if not any(call in line for call in NETWORK_LINES))
    exec(compile(offline, "README.md", "exec"), namespace)  # noqa: S102
    assert [t.name() for t in namespace["inputs"]] == list(namespace["feed"])
    model_name = re.search(r'client\.infer\("([^"]+)"', triton).group(1)
    written = write_repository(tmp_path / "models" / "synthetic-din", tmp_path / "triton-models", None, False, 4096, 1, 2)
    assert written.name == model_name  # the name the snippet calls is the one `din-export triton` gives

"""Writing a bundle so that nothing on disk is ever half-written: build in a hidden sibling folder, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from din_runtime.files import write_atomic

__all__ = ["staged_bundle", "write_atomic", "write_json"]


@contextmanager
def staged_bundle(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on success it replaces `out` by rename, on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(staging, 0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        retired = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, retired)
        os.rename(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, out)


def write_json(path: Path, data: Any) -> None:
    def dump(temporary: Path) -> None:
        temporary.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    write_atomic(path, dump)

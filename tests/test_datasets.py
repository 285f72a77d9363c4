"""`din-export datasets ml-100k`: the real download code, run against a small archive in GroupLens' layout that the
test builds and serves from a local HTTP server on 127.0.0.1; the files it writes prepare with the MovieLens recipe."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_export.data.prepare import prepare
from din_export.data.rules import Sources
from helpers import ML100K_RECIPE

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def small_archive() -> bytes:
    """ml-100k.zip's layout and formats (ISO-8859-1, | and tab separators) with 12 users and 30 items."""
    ratings = "".join(f"{u}\t{1 + (u * 7 + k * 3) % 30}\t{1 + k % 5}\t{880000000 + u * 1000 + k}\n" for u in range(1, 13) for k in range(30))
    items = []
    for i in range(1, 31):
        flags = ["1" if g in (i % 19, (i * 5) % 19) else "0" for g in range(19)]
        title = "Misérables, Les (1995)" if i == 1 else "unknown" if i == 2 else f"Movie {i} ({1990 + i % 9})"
        items.append("|".join([str(i), title, "" if i == 2 else f"01-Jan-{1990 + i % 9}", "", "http://example"] + flags))
    users = "".join(f"{u}|{20 + u}|{'MF'[u % 2]}|{['student', 'other', 'writer'][u % 3]}|{10000 + u}\n" for u in range(1, 13))
    genre = "".join(f"{name}|{index}\n" for index, name in enumerate(GENRES))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in (("u.data", ratings), ("u.item", "\n".join(items) + "\n"), ("u.user", users), ("u.genre", genre)):
            archive.writestr(f"ml-100k/{name}", text.encode("latin-1"))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, bytes]]:
    """(URL of the archive on a local HTTP server, the archive's bytes)."""
    archive = small_archive()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            if self.path != "/ml-100k.zip":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(archive)))
            self.end_headers()
            self.wfile.write(archive)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/ml-100k.zip", archive
    server.shutdown()
    server.server_close()


def test_download_checks_the_checksum_and_writes_the_atomic_files(served, tmp_path: Path) -> None:
    url, archive = served
    md5 = hashlib.md5(archive, usedforsecurity=False).hexdigest()
    out = tmp_path / "ml-100k"
    result = CliRunner().invoke(main, ["datasets", "ml-100k", "--to", str(out), "--url", url, "--md5", md5])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    items = (out / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    assert items[0] == "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
    first = items[1].split("\t")
    assert first[:3] == ["1", "Misérables, Les", "1995"] and first[3] == "Action Comedy"  # genres 1 and 5
    assert items[2].split("\t")[:3] == ["2", "unknown", ""]
    inter = (out / "ml-100k.inter").read_text(encoding="utf-8").splitlines()
    assert inter[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float" and len(inter) == 1 + 12 * 30
    # the recipe in examples/ reads them as it reads the copy in ../shared
    summary = prepare(ML100K_RECIPE, Sources(out / "ml-100k.inter", out / "ml-100k.item", out / "ml-100k.user"), tmp_path / "samples")
    assert summary["events"] == 360 and pq.read_table(tmp_path / "samples" / "train.parquet").num_rows > 0


def test_a_wrong_checksum_writes_nothing(served, tmp_path: Path) -> None:
    url, _ = served
    out = tmp_path / "ml-100k"
    result = CliRunner().invoke(main, ["datasets", "ml-100k", "--to", str(out), "--url", url])  # GroupLens' MD5, another archive
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "MD5" in result.output, result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_unreachable_url_is_one_line(served, tmp_path: Path) -> None:
    url, _ = served
    result = CliRunner().invoke(main, ["datasets", "ml-100k", "--to", str(tmp_path / "x"), "--url", url.replace("ml-100k.zip", "absent.zip")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "cannot be downloaded" in result.output, result.output

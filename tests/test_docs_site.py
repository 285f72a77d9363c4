"""The built docs site works anywhere: it builds with `mkdocs build --strict`, no page loads a script, a style or a
font from outside the site (the docs work offline and behind a firewall), and the architecture page's diagram
renders to an SVG in a real browser (Debian's headless Chromium) reading the site from 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where a page or stylesheet loads something: script src, link href (styles, fonts, icons), CSS url() and @import.
LOADS = re.compile(r"""<script[^>]*\bsrc=["']([^"']+)|<link[^>]*\bhref=["']([^"']+)|url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""", re.I)
OUTSIDE = re.compile(r"^(https?:)?//", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def outside_loads(text: str, html: bool) -> list[str]:
    """The addresses outside the site that a page (or stylesheet) loads from. A page's <link> counts only where it
    loads something (a stylesheet, font, icon or preload); links to other pages and canonical URLs do not."""
    found = []
    for match in LOADS.finditer(text):
        address = next(group for group in match.groups() if group)
        if match.group(2) is not None:
            tag = text[match.start():text.index(">", match.start())]
            if not html or not re.search(r"""\brel=["'](stylesheet|preload|preconnect|icon|modulepreload|manifest)""", tag, re.I):
                continue
        if OUTSIDE.match(address):
            found.append(address)
    return found


def test_the_site_builds_strictly(site: Path) -> None:
    assert (site / "reference" / "cli" / "index.html").is_file()
    assert (site / "assets" / "mermaid" / "mermaid.min.js").is_file()


def test_no_page_loads_a_script_style_or_font_from_outside_the_site(site: Path) -> None:
    files = sorted(site.rglob("*.html")) + sorted(site.rglob("*.css"))
    assert len(files) > 20
    outside = {str(file.relative_to(site)): loads for file in files
               if (loads := outside_loads(file.read_text(encoding="utf-8", errors="replace"), file.suffix == ".html"))}
    assert not outside, outside
    # the check itself finds what it looks for
    assert outside_loads('<script src="https://unpkg.com/mermaid@11/dist/mermaid.min.js"></script>', True)
    assert outside_loads('<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">', True)
    assert outside_loads("@font-face{src:url(//fonts.gstatic.com/x.woff2)}", False)
    assert not outside_loads('<link rel="canonical" href="https://example.org/x/">', True)


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site over HTTP on a free port of 127.0.0.1."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_architecture_diagram_renders_to_an_svg_in_a_browser(served: str, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    dom = dump_dom(f"{served}/architecture/", tmp_path / "profile")
    diagrams = re.findall(r'<div class="mermaid"[^>]*>(.*?)</div>', dom, flags=re.S)
    assert diagrams, f"no diagram on the architecture page; its DOM ends: {dom[-1500:]}"
    assert all(diagram.lstrip().startswith("<svg") for diagram in diagrams), [d[:200] for d in diagrams]
    assert "flowchart LR" not in dom  # no diagram left as its source text


# Added to each page with a table: once it has loaded, writes which of its tables need a horizontal scroll bar.
TABLE_PROBE = ('<script>addEventListener("load", () => setTimeout(() => { const over = []; '
               'document.querySelectorAll(".md-typeset__scrollwrap").forEach((wrap, i) => { '
               'if (wrap.scrollWidth > wrap.clientWidth + 1) over.push(i + 1); }); const out = document.createElement("pre"); '
               'out.id = "table-overflow"; out.textContent = JSON.stringify(over); document.body.appendChild(out); }, 100));</script>')
LAPTOP = (1280, 900)


def dump_dom(url: str, profile: Path, window: tuple[int, int] = LAPTOP) -> str:
    """The page's DOM after its scripts ran, from headless Chromium that reaches nothing outside 127.0.0.1."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={profile}",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--window-size={window[0]},{window[1]}",
               "--virtual-time-budget=30000", "--dump-dom", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_every_table_fits_the_page_of_a_laptop_screen(site: Path, served: str, tmp_path: Path) -> None:
    """No table of any page needs a horizontal scroll bar (which hides its last columns) in a window 1,280 pixels
    wide: each page with a table is measured in the browser, with a probe added to the served copy."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    pages = sorted(p for p in site.rglob("index.html") if "<table" in p.read_text(encoding="utf-8"))
    assert len(pages) > 5
    for page in pages:
        page.write_text(page.read_text(encoding="utf-8").replace("</body>", TABLE_PROBE + "</body>"), encoding="utf-8")

    def overflowing(index_page: Path) -> tuple[str, list[int]]:
        path = f"/{index_page.parent.relative_to(site)}/".replace("/./", "/")
        dom = dump_dom(served + path, tmp_path / f"profile-{abs(hash(path))}")
        found = re.search(r'<pre id="table-overflow">(.*?)</pre>', dom, flags=re.S)
        assert found, f"{path}: the probe did not run"
        return path, json.loads(found.group(1))

    with ThreadPoolExecutor(max_workers=2) as pool:
        measured = dict(pool.map(overflowing, pages))
    assert {path: tables for path, tables in measured.items() if tables} == {}

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
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # nothing outside 127.0.0.1 is reachable
               "--virtual-time-budget=15000", "--dump-dom", f"{served}/architecture/"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    diagrams = re.findall(r'<div class="mermaid"[^>]*>(.*?)</div>', result.stdout, flags=re.S)
    assert diagrams, "no diagram on the architecture page"
    assert all(diagram.lstrip().startswith("<svg") for diagram in diagrams), [d[:200] for d in diagrams]
    assert "flowchart LR" not in result.stdout  # no diagram left as its source text

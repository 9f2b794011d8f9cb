"""Screenshots of every page of the built book in headless Chromium, offline, with checks.

    python bench/screenshot_book.py [--html book/_build/html] [--out build/screenshots] [--toc _toc.yml]

Serves the HTML on localhost and renders each page of the table of contents (root first, then the
chapters) with Debian's Chromium (``apt-get install chromium``), with every other host unresolvable, so
the pages must be self-contained. For each page it writes ``NAME.png`` (the full page height, capped at
``--max-height``) and ``NAME-top.png`` (the first screen), and checks:

* the page is not blank: enough dark (text-like) pixels and contrast, in the first screen and overall;
* it has text (the rendered DOM's visible text);
* it loads no script or stylesheet from another host (a CDN would leave an offline reader without it);
* math is rendered: one MathJax ``mjx-container`` per math element of the page and no raw TeX
  (``$$``, ``\\frac``, ...) in the visible text outside code;
* nothing overflows the content column (tables, outputs, code, display math end inside the article,
  or scroll inside it), so the right-hand table of contents is never covered; what scrolls is listed,
  and display math may not need a scroll (a hidden term reads as a wrong equation);
* ``index.html`` redirects to the root page.

Exits 1 if a check fails. The DOM measurements come from a small probe script that the local server
appends to each page it serves (the files on disk are not changed).
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

WIDTH, SCREEN = 1280, 1000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         # offline: every host but this machine is unresolvable, whatever network the machine has
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--virtual-time-budget=15000"]

# Appended to every page served: measures the rendered page into <html data-probe="{json}">.
PROBE = r"""<script>(function () {
  function describe(e) {
    return e.tagName.toLowerCase() + (typeof e.className === "string" && e.className ? "." + e.className.trim().split(/\s+/).join(".") : "")
      + ": " + (e.innerText || e.textContent || "").replace(/\s+/g, " ").trim().slice(0, 50);
  }
  function probe() {
    var d = document.documentElement;
    var article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
    var limit = article.getBoundingClientRect().right + 1, over = [];
    article.querySelectorAll("table, div.cell_output > *, div.highlight, pre, mjx-container[display='true'], img").forEach(function (e) {
      var right = e.getBoundingClientRect().right;
      for (var a = e.parentElement; a && a !== article; a = a.parentElement) {
        if (getComputedStyle(a).overflowX !== "visible") { right = Math.min(right, a.getBoundingClientRect().right); break; }
      }
      if (right > limit) over.push(describe(e));
    });
    var scrolling = [], wideMath = [];
    article.querySelectorAll("div.cell_output > div.output, div.pst-scrollable-table-container, div.math, mjx-container[display='true']").forEach(function (e) {
      if (e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1) {
        (e.matches("div.math, mjx-container") ? wideMath : scrolling).push(describe(e));
      }
    });
    d.setAttribute("data-probe", JSON.stringify({
      height: Math.max(d.scrollHeight, document.body.scrollHeight),
      mjx: document.querySelectorAll("mjx-container").length,
      overflow: over.slice(0, 5), overflow_count: over.length, scrolling: scrolling, wide_math: wideMath}));
  }
  window.addEventListener("load", probe);
  setInterval(probe, 250);
})();</script>"""

RAW_TEX = re.compile(r"\$\$|\\(frac|sum|mathrm|mathcal|tilde|ell|qquad|log|Big|alpha|beta)\b|\$[^$\s][^$]*\$")


class ProbeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the book, appending :data:`PROBE` to HTML pages."""

    def log_message(self, *args):
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", PROBE.encode() + b"</body>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


class VisibleText(HTMLParser):
    """The text a reader sees, without scripts, styles, code blocks and MathJax's assistive MathML."""

    SKIP = {"script", "style", "pre", "code", "mjx-assistive-mml", "noscript", "template"}

    def __init__(self):
        super().__init__()
        self.depth, self.parts = 0, []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)

    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.parts)).strip()


def toc_pages(toc: Path) -> list[str]:
    spec = yaml.safe_load(toc.read_text())
    names = [spec["root"]]
    for entry in spec.get("chapters", []) + [c for part in spec.get("parts", []) for c in part.get("chapters", [])]:
        if "file" in entry:
            names.append(entry["file"])
    return [Path(n).with_suffix("").as_posix() for n in names]


def chromium(browser: str, url: str, *args: str, height: int = SCREEN) -> str:
    """Chromium's stdout for ``url`` (``--dump-dom``) or its ``--screenshot``, in a fresh profile."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}",
                               *args, url], check=True, capture_output=True, timeout=180, text=True)
    return done.stdout


def pixel_stats(image: Image.Image) -> tuple[float, float]:
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    return float((pixels < 100).mean()), float(pixels.std())


def check_page(browser: str, base: str, html_dir: Path, name: str, out: Path, max_height: int) -> list[str]:
    problems = []
    page = f"{name}.html"
    source = (html_dir / page).read_text(encoding="utf-8")
    external = re.findall(r'<(?:script[^>]*\ssrc|link[^>]*\shref)="(https?://[^"]+)"', source)
    if external:
        problems.append(f"loads from another host: {', '.join(sorted(set(external)))}")
    math_elements = len(re.findall(r'class="math[ "]', source))

    dom = chromium(browser, f"{base}/{page}", "--dump-dom")
    found = re.search(r'data-probe="([^"]*)"', dom)
    probe = json.loads(html.unescape(found[1])) if found else {}
    if not probe:
        problems.append("the probe did not run (page did not load?)")
    parser = VisibleText()
    parser.feed(dom[dom.find("<body"):] if "<body" in dom else dom)
    text = parser.text()
    if len(text) < 200:
        problems.append(f"little visible text ({len(text)} characters)")
    raw = sorted({m[0] for m in RAW_TEX.finditer(text)})
    if raw:
        problems.append(f"raw TeX in the visible text: {raw[:6]}")
    if math_elements and probe.get("mjx", 0) < math_elements:
        problems.append(f"math not rendered: {probe.get('mjx', 0)} mjx-container for {math_elements} math elements")
    if probe.get("wide_math"):
        problems.append(f"display math wider than the column (hidden behind a scroll): {probe['wide_math']}")
    if probe.get("overflow_count"):
        problems.append(f"{probe['overflow_count']} element(s) overflow the content column: {probe['overflow']}")

    height = min(max(int(probe.get("height", SCREEN)), SCREEN), max_height)
    full = out / f"{name}.png"
    chromium(browser, f"{base}/{page}", f"--screenshot={full.resolve()}", height=height)
    image = Image.open(full)
    image.crop((0, 0, WIDTH, min(SCREEN, image.height))).save(out / f"{name}-top.png")
    dark_top, std_top = pixel_stats(image.crop((0, 0, WIDTH, min(SCREEN, image.height))))
    dark, std = pixel_stats(image)
    if not (dark_top > 0.005 and std_top > 20 and dark > 0.003 and std > 15):
        problems.append(f"looks blank: text-like pixels {dark_top:.1%} (first screen) / {dark:.1%}, "
                        f"std {std_top:.0f} / {std:.0f}")
    print(f"{'OK  ' if not problems else 'FAIL'} {full}: {image.width}x{image.height}"
          f"{' (capped)' if probe.get('height', 0) > max_height else ''}, text {len(text)} chars, "
          f"text-like pixels {dark_top:.1%} first screen / {dark:.1%}, math {probe.get('mjx', 0)}/{math_elements}")
    for problem in problems:
        print(f"     {name}: {problem}")
    for element in probe.get("scrolling", []):
        print(f"     {name}: scrolls horizontally inside the column (fine): {element}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", default="book/_build/html")
    parser.add_argument("--out", default="build/screenshots")
    parser.add_argument("--toc", default=str(Path(__file__).resolve().parent.parent / "_toc.yml"))
    parser.add_argument("--width", type=int, default=1280, help="window width (the right-hand TOC shows from 1200)")
    parser.add_argument("--max-height", type=int, default=16000, help="cap on the full-page screenshot height")
    args = parser.parse_args()
    global WIDTH
    WIDTH = args.width
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no Chromium found: apt-get install chromium", file=sys.stderr)
        return 1
    html_dir, out = Path(args.html), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pages = toc_pages(Path(args.toc))
    failures = 0
    index = html_dir / "index.html"
    if not index.exists() or not re.search(rf'url=(\./)?{re.escape(pages[0])}\.html', index.read_text()):
        print(f"FAIL {index}: missing or not a redirect to {pages[0]}.html")
        failures += 1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(ProbeHandler, directory=str(html_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        for name in pages:
            if not (html_dir / f"{name}.html").exists():
                print(f"FAIL {name}.html: not built")
                failures += 1
                continue
            failures += bool(check_page(browser, base, html_dir, name, out, args.max_height))
    finally:
        server.shutdown()
    print(f"{len(pages)} pages: {'all OK' if not failures else f'{failures} failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

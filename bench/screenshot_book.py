"""Screenshots of the built book in headless Chromium: the index and the paper-tables page.

    python bench/screenshot_book.py [--html book/_build/html] [--out build/screenshots]

Serves the HTML on localhost, renders each page with Debian's Chromium (``apt-get install chromium``)
and checks the screenshot is a real page: mostly not blank, with dark text pixels and, for the tables
page, enough rendered content. Exits 1 if a check fails.
"""

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

PAGES = {"index": "index.html", "paper_tables": "05_paper_tables.html"}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         # the pages reference a CDN (MathJax) that an offline machine cannot reach: bound the wait
         "--virtual-time-budget=15000"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", default="book/_build/html")
    parser.add_argument("--out", default="build/screenshots")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no Chromium found: apt-get install chromium", file=sys.stderr)
        return 1
    html, out = Path(args.html), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    failures = 0
    try:
        for name, page in PAGES.items():
            target = out / f"{name}.png"
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,2000",
                                f"--screenshot={target.resolve()}", f"http://127.0.0.1:{server.server_port}/{page}"],
                               check=True, capture_output=True, timeout=120)
            pixels = np.asarray(Image.open(target).convert("L"), dtype=np.float32)
            dark = float((pixels < 100).mean())
            varied = float(pixels.std())
            ok = dark > 0.005 and varied > 20
            failures += not ok
            print(f"{'OK  ' if ok else 'FAIL'} {target}: {pixels.shape[1]}x{pixels.shape[0]}, "
                  f"text-like pixels {dark:.1%}, std {varied:.0f}")
    finally:
        server.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

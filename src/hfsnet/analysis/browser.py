"""Open a report in headless Chromium: check that every image decoded, take a screenshot.

A copy of the page gets a small script that, once the page has loaded, writes into the title
how many ``<img>`` elements decoded (``naturalWidth > 0``) and how tall the page is; Chromium's
``--dump-dom`` prints the DOM after that, and the title is read back from it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hfsnet.errors import HfsnetError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, no sandbox (we run as root in containers), and nothing that reaches the network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")
WIDTH = 1200  # px, screenshot width
MAX_HEIGHT = 20000  # px; taller pages are cut off
_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  const height = document.documentElement.scrollHeight;
  document.title = `probe:${loaded}/${images.length}/${height}`;
});
</script>"""
_TITLE = re.compile(r"<title>probe:(\d+)/(\d+)/(\d+)</title>")


class BrowserError(HfsnetError):
    """Chromium is missing or could not render the page."""


@dataclass
class PageCheck:
    images_loaded: int
    images_total: int
    height: int  # px at WIDTH


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(args: list[str], *, timeout_s: float) -> str:
    binary = find_chromium()
    if binary is None:
        raise BrowserError("chromium: not installed (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="hfsnet-chromium-") as profile:
        done = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise BrowserError(f"chromium exited with {done.returncode}: "
                           f"{done.stderr.strip()[-500:]}")
    return done.stdout


def check_page(html_path: Path, *, timeout_s: float = 120.0) -> PageCheck:
    """Load ``html_path`` in headless Chromium; count decoded images, measure the height."""
    page = html_path.read_text()
    with tempfile.TemporaryDirectory(prefix="hfsnet-probe-") as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.replace("</body>", _PROBE + "</body>", 1))
        dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                        timeout_s=timeout_s)
    match = _TITLE.search(dom)
    if match is None:
        raise BrowserError(f"{html_path}: the page's load event never reported back")
    loaded, total, height = (int(g) for g in match.groups())
    return PageCheck(loaded, total, height)


def screenshot(html_path: Path, png_path: Path, *, height: int,
               timeout_s: float = 120.0) -> Path:
    """A full-page PNG of ``html_path`` at WIDTH x ``height`` px (capped at MAX_HEIGHT)."""
    size = f"{WIDTH},{min(max(height, 100), MAX_HEIGHT)}"
    _chromium([f"--window-size={size}", "--virtual-time-budget=10000",
               f"--screenshot={png_path.resolve()}", html_path.resolve().as_uri()],
              timeout_s=timeout_s)
    if not png_path.exists():
        raise BrowserError(f"chromium wrote no screenshot to {png_path}")
    return png_path

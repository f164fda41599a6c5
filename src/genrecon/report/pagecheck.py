"""Render the report in headless Chromium and list what a reader would find broken.

A page can be written without error and still be broken for its reader: a link to a file that was
never made, an image that does not decode, a Python traceback printed into an output cell, a NaN
in a table, an "Out[3]:" prompt. Rendering in a real browser is the honest check of all of these:
the browser itself says whether each <img> loaded (naturalWidth > 0), and what text it shows.

Usage: `python -m genrecon.report results/report` (exit 1 on problems), or
`check_report_pages(Path("results/report"))` -> list of problems (empty when all is well).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|An Exception was encountered at")
PROMPT = re.compile(r"\b(?:In|Out)\s*\[\s*\d*\s*\]\s*:")
MISSING_CELLS = {"nan", "NaN", "None", "<NA>", "NaT"}

# Defined in the <head> of a wrapper page whose iframes (one per report page, same file://
# origin thanks to --allow-file-access-from-files) call inspect(this) when they load: it records
# what the browser rendered into #result, which --dump-dom prints once every frame has loaded.
_SCRIPT = """
var results = {};
function inspect(frame) {
  var doc = frame.contentDocument, page = frame.getAttribute('data-page');
  if (!doc || !doc.body) { results[page] = {error: 'page did not load'}; }
  else {
    var attrs = [];
    doc.querySelectorAll('a[href], link[href], area[href]').forEach(function (e) {
      attrs.push(['href', e.tagName.toLowerCase(), e.getAttribute('href')]);
    });
    doc.querySelectorAll('script[src], iframe[src], source[src], embed[src]').forEach(function (e) {
      attrs.push(['src', e.tagName.toLowerCase(), e.getAttribute('src')]);
    });
    var images = [];
    doc.querySelectorAll('img').forEach(function (img) {
      images.push({src: (img.getAttribute('src') || '').slice(0, 80),
                   ok: img.complete && img.naturalWidth > 0});
    });
    var cells = [];
    doc.querySelectorAll('td, th').forEach(function (c) { cells.push(c.textContent.trim()); });
    results[page] = {attrs: attrs, images: images, cells: cells, text: doc.body.innerText};
  }
  document.getElementById('result').textContent = JSON.stringify(results);
}
"""


class BrowserMissing(RuntimeError):
    """No Chromium to render with (Debian: apt-get install chromium)."""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser, or None."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class _ResultParser(HTMLParser):
    """Pulls the text of <pre id="result"> out of the dumped wrapper DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre" and ("id", "result") in attrs:
            self.inside = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.text.append(data)


def _render(pages: list[Path], browser: str, timeout: float) -> dict[str, dict]:
    """Load every page in one headless browser and return what each rendered."""
    with tempfile.TemporaryDirectory(prefix="genrecon-pagecheck-") as tmp:
        frames = "\n".join(
            f'<iframe data-page="{html.escape(page.name)}" onload="inspect(this)" '
            f'src="{html.escape(page.resolve().as_uri())}"></iframe>'
            for page in pages
        )
        wrapper = Path(tmp) / "wrapper.html"
        wrapper.write_text(
            f"<!doctype html><html><head><script>{_SCRIPT}</script></head>"
            f'<body><pre id="result">{{}}</pre>{frames}</body></html>'
        )
        command = [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            "--dump-dom",
            wrapper.as_uri(),
        ]
        env = {**os.environ, "HOME": tmp}
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    parser = _ResultParser()
    parser.feed(done.stdout)
    text = "".join(parser.text).strip()
    if done.returncode != 0 or not text:
        raise RuntimeError(
            f"{browser} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return json.loads(text)


def _target_missing(page: Path, reference: str) -> bool:
    """Whether a relative (or file:) reference from `page` names a file that does not exist."""
    parts = urlsplit(reference)
    if parts.scheme and parts.scheme != "file":
        return False  # http(s), mailto, data, javascript: not a file of the report
    if not parts.path:
        return False  # "#anchor" or "?query" on the page itself
    path = Path(unquote(parts.path))
    target = path if parts.scheme == "file" or path.is_absolute() else page.parent / path
    return not target.exists()


def page_problems(page: Path, rendered: dict) -> list[str]:
    """What is broken on one rendered page (see the module doc)."""
    name = page.name
    if "error" in rendered:
        return [f"{name}: {rendered['error']}"]
    problems = []
    for kind, tag, reference in rendered["attrs"]:
        if reference is not None and _target_missing(page, reference):
            problems.append(f"{name}: broken link <{tag} {kind}={reference!r}> (no such file)")
    for image in rendered["images"]:
        if not image["ok"]:
            problems.append(f"{name}: image does not load: <img src={image['src']!r}...>")
    text = rendered["text"]
    for match in TRACEBACK.finditer(text):
        start = max(0, match.start() - 80)
        context = " ".join(text[start : match.end() + 120].split())
        problems.append(f"{name}: Python traceback in the page: …{context}…")
    for match in PROMPT.finditer(text):
        problems.append(f"{name}: notebook prompt {match.group(0)!r} in the page")
    for cell in rendered["cells"]:
        if cell in MISSING_CELLS:
            problems.append(f"{name}: table cell shows {cell!r}")
    return problems


def check_report_pages(
    report_dir: str | Path, browser: str | None = None, timeout: float = 120.0
) -> list[str]:
    """Render index.html and every other page of a report directory; return the problems found.

    Fails on: a link (href/src) to a file that does not exist, an <img> the browser could not
    load or decode, a Python traceback, an In/Out prompt, or a NaN/None table cell. Raises
    BrowserMissing when no Chromium is installed.
    """
    report_dir = Path(report_dir)
    browser = browser or find_chromium()
    if browser is None:
        raise BrowserMissing("no chromium found (Debian: apt-get install chromium)")
    index = report_dir / "index.html"
    problems = [] if index.exists() else [f"{index}: missing"]
    pages = sorted(report_dir.glob("*.html"), key=lambda p: (p.name != "index.html", p.name))
    if not pages:
        return problems + [f"{report_dir}: no HTML pages"]
    rendered = _render(pages, browser, timeout)
    for page in pages:
        problems += page_problems(page, rendered.get(page.name, {"error": "not rendered"}))
    return problems


def screenshot(
    page: str | Path, out: str | Path, browser: str | None = None, size: str = "1200,1600"
) -> Path:
    """A PNG of one rendered page, for looking at a page without opening a browser."""
    browser = browser or find_chromium()
    if browser is None:
        raise BrowserMissing("no chromium found (Debian: apt-get install chromium)")
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix="genrecon-shot-") as tmp:
        subprocess.run(
            [
                browser,
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--hide-scrollbars",
                f"--user-data-dir={Path(tmp) / 'profile'}",
                f"--window-size={size}",
                f"--screenshot={out}",
                Path(page).resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            env={**os.environ, "HOME": tmp},
            check=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    report = Path(args[0] if args else "results/report")
    problems = check_report_pages(report)
    for problem in problems:
        print(problem)
    print(f"{report}: {len(problems)} problems")
    return 1 if problems else 0

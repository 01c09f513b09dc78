"""Check the report site's pages in a headless Chromium: images load, relative links resolve.

    python -m mssdf.reports.browser [ROOT] [PAGE ...]

No browser-automation package: :func:`check_pages` serves ``root`` with Python's
:mod:`http.server` on ``127.0.0.1`` (a free port, in a thread) and adds, from memory, a
checker page at :data:`CHECK_PATH`. Chromium (``--headless=new --dump-dom``) opens the
checker, which loads each page in a same-origin iframe (sandboxed to ``allow-same-origin``:
the page's own scripts do not run, so an ``alert()`` cannot hang the check and a page that
builds its content with JavaScript is checked as served) and checks that

* every ``<img>`` has loaded: ``complete && naturalWidth > 0`` (the iframe's load event has
  waited for them; ``loading="lazy"`` ones are made eager and awaited);
* every relative ``<a href>`` (and ``<area href>``) answers HTTP 200 (``HEAD``, ``GET``
  when HEAD is refused); one pointing at ``#fragment`` names an element ``id`` (or ``name``)
  in its target page (same page: the iframe's document; another HTML page: fetched and
  parsed);
* links to other origins (``http(s)://...``, ``mailto:``) are counted as external and not
  fetched; the browser cannot resolve any host other than 127.0.0.1
  (``--host-resolver-rules``), so a check never touches the network.

The checker writes its findings as JSON into a ``<pre>`` of its own DOM. ``--dump-dom``
prints the DOM once the page has finished loading, so the checker page holds its load
event open with an ``<img>`` of :data:`HOLD_PATH`, a request the server answers only when
the checker has written its findings and called :data:`RELEASE_PATH` (or when 80 % of
``timeout_s`` has passed: the findings then say the check did not finish and where it
stopped). No ``--virtual-time-budget``: virtual time runs ahead while the browser decodes
a large page and the budget expires mid-check. Chromium runs with a throw-away profile
(``--user-data-dir``).

Nothing is installed or downloaded: a Chromium or Chrome must be on PATH
(:func:`find_browser`); ``apt-get install chromium`` provides one on Debian/Ubuntu.
"""

from __future__ import annotations

import argparse
import functools
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

#: Executables tried in this order after ``$MSSDF_BROWSER``.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Where the server answers with the checker page (served from memory, never written).
CHECK_PATH = "/__mssdf_check__.html"
#: An image of the checker page the server answers only once the checker calls
#: :data:`RELEASE_PATH`: the page's load event, and so ``--dump-dom``, waits for it.
HOLD_PATH = "/__mssdf_hold__"
RELEASE_PATH = "/__mssdf_release__"

#: Flags of every headless run: no sandbox (containers run as root), no GPU, a fresh
#: profile, no first-run UI, and no host but 127.0.0.1 resolvable (nothing leaves the machine).
HEADLESS_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


class BrowserError(RuntimeError):
    """Chromium could not be run, or the checker did not report."""


def find_browser() -> str | None:
    """The Chromium/Chrome executable: ``$MSSDF_BROWSER`` when it names one, else the first of
    :data:`BROWSERS` on PATH; None when there is none."""
    env = os.environ.get("MSSDF_BROWSER")
    if env:
        found = shutil.which(env)
        if found:
            return found
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


# ----------------------------------------------------------------------------- server
class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder, plus the checker page at :data:`CHECK_PATH` and the hold/release
    requests; quiet."""

    checker: bytes = b""
    released: threading.Event
    hold_s: float = 60.0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == CHECK_PATH:
            self._send_checker(body=True)
        elif path == HOLD_PATH:
            self.released.wait(self.hold_s)
            self._send_empty()
        elif path == RELEASE_PATH:
            self.released.set()
            self._send_empty()
        else:
            super().do_GET()

    def _send_empty(self) -> None:
        self.send_response(204)
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] == CHECK_PATH:
            self._send_checker(body=False)
        else:
            super().do_HEAD()

    def _send_checker(self, body: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.checker)))
        self.end_headers()
        if body:
            self.wfile.write(self.checker)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass


class _Server:
    """``root`` served on 127.0.0.1 at a free port in a daemon thread (a context manager)."""

    def __init__(self, root: Path, checker: str = "", hold_s: float = 60.0) -> None:
        self.released = threading.Event()
        handler = type("Handler", (_Handler,), {"checker": checker.encode(), "released": self.released, "hold_s": hold_s})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.released.set()  # a held request must not keep the server from shutting down
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# ----------------------------------------------------------------------------- checker page
_CHECKER_JS = r"""
const out = document.getElementById("mssdf-check-result");
const problems = [];
const stats = {pages: 0, images: 0, links: 0, fragments: 0, external: 0};
const statusCache = new Map();
const docCache = new Map();

function shortUrl(s) {
  s = String(s);
  if (s.startsWith("data:")) return s.slice(0, Math.max(s.indexOf(","), 0) + 1) + "...";
  return s.length > 120 ? s.slice(0, 117) + "..." : s;
}
function noHash(u) { const v = new URL(u); v.hash = ""; return v.href; }
function status(url) {
  if (!statusCache.has(url)) {
    statusCache.set(url, (async () => {
      try {
        let r = await fetch(url, {method: "HEAD", cache: "no-store"});
        if (r.status === 405 || r.status === 501) r = await fetch(url, {cache: "no-store"});
        return r.status;
      } catch (e) { return "network error: " + e; }
    })());
  }
  return statusCache.get(url);
}
function parsedDoc(url) {
  if (!docCache.has(url)) {
    docCache.set(url, (async () => {
      const r = await fetch(url, {cache: "no-store"});
      const type = r.headers.get("content-type") || "";
      if (!type.includes("html")) return null;
      return new DOMParser().parseFromString(await r.text(), "text/html");
    })());
  }
  return docCache.get(url);
}
function hasAnchor(doc, frag) {
  if (frag === "" || frag.toLowerCase() === "top") return true;
  // as browsers do: the fragment as written first (nbconvert's ids are percent-encoded), then decoded
  const names = [frag];
  try { names.push(decodeURIComponent(frag)); } catch (e) {}
  return names.some((name) => !!(doc.getElementById(name) || doc.getElementsByName(name).length));
}
function loadFrame(url) {
  return new Promise((resolve) => {
    const f = document.createElement("iframe");
    f.width = 1280; f.height = 900;
    f.setAttribute("sandbox", "allow-same-origin");  // the page's own scripts do not run (an alert() would hang the check)
    f.addEventListener("load", () => resolve(f), {once: true});
    f.src = url;
    document.body.appendChild(f);
  });
}
async function checkPage(page) {
  out.textContent = JSON.stringify({done: false, at: page, problems: problems, stats: stats});
  const url = new URL(page, location.href).href;
  const st = await status(noHash(url));
  if (st !== 200) { problems.push(page + ": page not found (HTTP " + st + ")"); return; }
  stats.pages += 1;
  out.textContent = JSON.stringify({done: false, at: page + " loading", problems: problems, stats: stats});
  const frame = await loadFrame(url);
  out.textContent = JSON.stringify({done: false, at: page + " loaded", problems: problems, stats: stats});
  const doc = frame.contentDocument;
  if (!doc) { problems.push(page + ": cannot be inspected (not same-origin)"); frame.remove(); return; }
  const imgs = Array.from(doc.images);
  for (const img of imgs) if (img.loading === "lazy") img.loading = "eager";
  // the iframe's load event waited for its images; only lazy ones made eager above may still be loading
  await Promise.all(imgs.filter((img) => !img.complete).map((img) => new Promise((resolve) => {
    img.addEventListener("load", resolve, {once: true});
    img.addEventListener("error", resolve, {once: true});
  })));
  imgs.forEach((img, i) => {
    stats.images += 1;
    if (!(img.complete && img.naturalWidth > 0)) {
      problems.push(page + ": broken image #" + (i + 1) + " (" + shortUrl(img.getAttribute("src") || "no src") + ")");
    }
  });
  const here = noHash(doc.URL);
  for (const a of Array.from(doc.querySelectorAll("a[href], area[href]"))) {
    const raw = a.getAttribute("href");
    if (!raw.trim()) continue;
    let target;
    try { target = new URL(raw, doc.baseURI); } catch (e) { problems.push(page + ": malformed link '" + raw + "'"); continue; }
    if (target.origin !== location.origin) { stats.external += 1; continue; }
    stats.links += 1;
    const base = noHash(target.href);
    const frag = target.hash.slice(1);
    if (base === here) {
      if (target.hash) { stats.fragments += 1; if (!hasAnchor(doc, frag)) problems.push(page + ": link '" + raw + "' names no element on the page"); }
      continue;
    }
    const st2 = await status(base);
    if (st2 !== 200) { problems.push(page + ": broken link '" + raw + "' (HTTP " + st2 + ")"); continue; }
    if (target.hash) {
      stats.fragments += 1;
      const other = await parsedDoc(base);
      if (other && !hasAnchor(other, frag)) problems.push(page + ": link '" + raw + "' names no element in its target");
    }
  }
  frame.remove();
}
(async () => {
  try {
    for (const page of PAGES) await checkPage(page);
    out.textContent = JSON.stringify({done: true, problems: problems, stats: stats});
  } catch (e) {
    out.textContent = JSON.stringify({done: true, error: String(e && e.stack || e), problems: problems, stats: stats});
  }
  await fetch(RELEASE_PATH, {cache: "no-store"}).catch(() => null);
})();
"""


def _checker_page(pages: list[str]) -> str:
    data = json.dumps(pages).replace("</", "<\\/")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>mssdf page check</title></head><body>"
            '<pre id="mssdf-check-result">{"done": false}</pre>'
            f'<img src="{HOLD_PATH}" alt="" width="1" height="1">'
            f"<script>const PAGES = {data};\nconst HOLD_PATH = {json.dumps(HOLD_PATH)};\n"
            f"const RELEASE_PATH = {json.dumps(RELEASE_PATH)};\n{_CHECKER_JS}</script></body></html>")


def _run(browser: str, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run the browser headless with a throw-away profile; on timeout its whole process group
    (the browser's renderer, GPU and utility processes) is killed."""
    with tempfile.TemporaryDirectory(prefix="mssdf-chromium-", ignore_cleanup_errors=True) as profile:
        cmd = [browser, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, start_new_session=True)
        except OSError as err:
            raise BrowserError(f"{browser}: cannot be run ({err})") from err
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise BrowserError(f"{browser} did not finish within {timeout_s:g} s") from exc
        finally:
            if proc.poll() is None:  # an exception other than the timeout
                _kill_group(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the session start_new_session gave it: only its own processes
    except ProcessLookupError:
        pass
    proc.communicate()


def _stderr_tail(proc: subprocess.CompletedProcess[str], lines: int = 8) -> str:
    return "\n".join((proc.stderr or "").strip().splitlines()[-lines:])


def check_pages(root: Path, pages: list[str], browser: str, timeout_s: float = 60) -> list[str]:
    """Load ``pages`` (paths relative to ``root``) in headless Chromium and list what is broken.

    Args:
        root: the folder served as the site's root (e.g. ``reports``).
        pages: the pages to check, relative to ``root`` (``index.html``, ``html/04_segmentation.html``).
        browser: the Chromium/Chrome executable (:func:`find_browser`).
        timeout_s: wall-clock limit of the browser run.

    Returns:
        Human-readable problems, e.g. ``"html/04_segmentation.html: broken image #3 (...)"``,
        ``"index.html: broken link 'figures/a.png' (HTTP 404)"``; empty when all is fine.

    Raises:
        BrowserError: Chromium cannot run, or the checker did not finish in time.
        FileNotFoundError: ``root`` is not a folder.
    """
    return [str(p) for p in _check(Path(root), pages, browser, timeout_s)["problems"]]


def _check(root: Path, pages: list[str], browser: str, timeout_s: float) -> dict[str, Any]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    with _Server(root, _checker_page([p.lstrip("/") for p in pages]), hold_s=0.8 * timeout_s) as server:
        proc = _run(browser, ["--dump-dom", server.url + CHECK_PATH], timeout_s)
    match = re.search(r'<pre id="mssdf-check-result">(.*?)</pre>', proc.stdout or "", re.S)
    if not match:
        raise BrowserError(f"{browser} printed no checker page (exit {proc.returncode}); it said:\n{_stderr_tail(proc)}")
    result = json.loads(html.unescape(match.group(1)))
    if not result.get("done"):
        raise BrowserError(f"the checker did not finish within {0.8 * timeout_s:g} s; "
                           f"it stopped at {result.get('at', 'the start')!r} of pages {pages}")
    if result.get("error"):
        raise BrowserError(f"the checker failed: {result['error']}")
    return {"problems": list(result.get("problems", [])), "stats": dict(result.get("stats", {}))}


def check_report(root: Path, pages: list[str], browser: str, timeout_s: float = 60) -> dict[str, Any]:
    """:func:`check_pages` with the counts: ``{"problems": [...], "stats": {"pages", "images",
    "links", "fragments", "external"}}`` (links: same-origin links checked; external: not fetched)."""
    return _check(Path(root), pages, browser, timeout_s)


def screenshot(url_or_path: str | Path, png: Path, width: int = 1280, height: int = 2400,
               browser: str | None = None, timeout_s: float = 60) -> Path:
    """A ``width`` x ``height`` PNG of a page (a URL, or a local file opened as ``file://``).

    Raises:
        BrowserError: no browser, or it wrote no screenshot.
    """
    browser = browser or find_browser()
    if not browser:
        raise BrowserError("no Chromium/Chrome on PATH (apt-get install chromium), and MSSDF_BROWSER is not set")
    target = str(url_or_path)
    if not re.match(r"^[a-z][a-z0-9+.-]*://", target):
        target = Path(target).resolve().as_uri()
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    proc = _run(browser, [f"--screenshot={png}", f"--window-size={width},{height}", "--hide-scrollbars",
                          "--virtual-time-budget=5000", target], timeout_s)
    if not png.is_file():
        raise BrowserError(f"{browser} wrote no screenshot of {target} (exit {proc.returncode}):\n{_stderr_tail(proc)}")
    return png


def site_pages(root: Path) -> list[str]:
    """``index.html`` (when present) and every ``html/*.html`` page of ``root``, relative to it."""
    root = Path(root)
    return [p.relative_to(root).as_posix() for p in _site_files(root)]


def _site_files(root: Path) -> Iterator[Path]:
    if (root / "index.html").is_file():
        yield root / "index.html"
    yield from sorted((root / "html").glob("*.html"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mssdf.reports.browser", description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="reports", help="the folder served as the site's root (default reports)")
    ap.add_argument("pages", nargs="*", help="pages relative to ROOT (default: index.html and html/*.html)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds the browser may take")
    args = ap.parse_args(argv)
    browser = find_browser()
    if not browser:
        print("error: no Chromium/Chrome on PATH (apt-get install chromium), and MSSDF_BROWSER is not set", file=sys.stderr)
        return 2
    pages = args.pages or site_pages(Path(args.root))
    if not pages:
        print(f"error: {args.root}: no index.html or html/*.html to check", file=sys.stderr)
        return 2
    try:
        report = check_report(Path(args.root), pages, browser, args.timeout)
    except (BrowserError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems, stats = report["problems"], report["stats"]
    for p in problems:
        print(p)
    print(f"{stats.get('pages', 0)} page(s) checked: {stats.get('images', 0)} images, {stats.get('links', 0)} local links "
          f"({stats.get('fragments', 0)} with a #fragment), {stats.get('external', 0)} external links not fetched; "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

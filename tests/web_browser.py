"""Serve a folder on 127.0.0.1 and drive headless Chromium on it: the web demo's test and bench/browser.py share this.

Chromium and its driver are system packages (Debian: chromium, chromium-driver) that `./setup.sh --dev` installs.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SETUP_HINT = "run ./setup.sh --dev (it installs chromium and chromium-driver, and selenium)"
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> tuple[str, str]:
    """Paths of a Chromium (or Chrome) binary and of chromedriver; a RuntimeError that says how to get them."""
    browser = next((p for p in map(shutil.which, _BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        raise RuntimeError(f"{missing} not found on PATH; the web demo is tested in headless Chromium: {SETUP_HINT}")
    try:
        import selenium  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"selenium is not installed: {SETUP_HINT}") from exc
    return browser, driver


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, format: str, *args: Any) -> None:  # the test output stays readable
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over http on 127.0.0.1 at a free port, from a thread; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


_STARTS = 3  # a loaded CI machine sometimes loses a fresh Chromium before the driver reaches it ("chrome not reachable")


@contextlib.contextmanager
def chromium(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A headless Chromium driven by selenium (the system's chromedriver: no driver download).

    Each start gets its own profile folder and is tried up to three times; the last failure carries the driver's log.
    """
    with tempfile.TemporaryDirectory(prefix="mlcompress-chromium-", ignore_cleanup_errors=True) as scratch:
        driver = _start(Path(scratch), width, height)
        try:
            driver.set_script_timeout(300)
            yield driver
        finally:
            driver.quit()


def _start(scratch: Path, width: int, height: int) -> Any:
    """Start Chromium under chromedriver, retrying a start that the browser did not survive."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_chromium()
    for attempt in range(1, _STARTS + 1):
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                    "--disable-extensions", "--disable-background-networking", f"--window-size={width},{height}",
                    f"--user-data-dir={scratch / f'profile-{attempt}'}"):
            options.add_argument(arg)
        log = scratch / f"chromedriver-{attempt}.log"
        try:
            return webdriver.Chrome(service=Service(executable_path=driver_path, log_output=str(log)), options=options)
        except WebDriverException as exc:
            if attempt == _STARTS:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no driver log)"
                raise RuntimeError(f"Chromium did not start in {_STARTS} tries: {exc.msg}\nchromedriver log:\n{tail}") from exc
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


def wait_ready(driver: Any, timeout_s: float = 120) -> dict[str, Any]:
    """Wait for ``window.mlcompressDemo.ready``; return its timing, or raise with the page's error."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s).until(lambda d: d.execute_script("return !!window.mlcompressDemo"))
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.mlcompressDemo.ready.then(() => done({timing: window.mlcompressDemo.timing}),"
        " (e) => done({error: String(e && e.message || e)}));")
    if "error" in result:
        raise AssertionError(f"the demo page failed: {result['error']}\nbrowser log: {browser_log(driver)}")
    return result["timing"]


def call(driver: Any, expression: str, *args: Any) -> Any:
    """Await a promise-returning JS ``expression`` (it sees ``args``) in the page; raise with its error."""
    result = driver.execute_async_script(
        "const args = Array.from(arguments); const done = args.pop();"
        f"Promise.resolve().then(() => {expression}).then((value) => done({{value}}),"
        " (e) => done({error: String(e && e.message || e)}));", *args)
    if "error" in result:
        raise AssertionError(f"{expression} failed in the page: {result['error']}")
    return result["value"]


def browser_log(driver: Any) -> str:
    """The page's console messages, where the driver gives them (for failure messages)."""
    try:
        return "\n".join(str(e.get("message")) for e in driver.get_log("browser"))
    except Exception:  # not every driver offers logs
        return "(not available)"

"""A headless Chromium driven over the DevTools protocol, for the live page's browser test.

Debian's ``chromium`` package is the browser (scripts/test.sh installs it; browser downloads do
not work here); ``websocket-client`` speaks the protocol. ``Browser`` starts one, opens a page,
evaluates JavaScript, collects console errors and uncaught exceptions, and takes screenshots.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def have_browser() -> bool:
    """True if a Chromium binary and the websocket client are installed."""
    try:
        import websocket  # noqa: F401
    except ImportError:
        return False
    return CHROMIUM is not None


class Browser:
    """One headless Chromium with one page; ``close()`` ends it."""

    def __init__(self, width: int = 1280, height: int = 900):
        import websocket

        self._dir = Path(tempfile.mkdtemp(prefix="chromium-"))
        self._proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={self._dir}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port = self._debugging_port(timeout=30)
        page = next(t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
                    if t["type"] == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._next_id = 0
        self.errors: list[str] = []  # console errors, failed loads and uncaught exceptions, in order
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _debugging_port(self, timeout: float) -> int:
        active = self._dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if active.exists() and active.read_text().strip():
                return int(active.read_text().split()[0])
            if self._proc.poll() is not None:
                raise RuntimeError(f"{CHROMIUM} exited with {self._proc.returncode}")
            time.sleep(0.1)
        raise RuntimeError(f"{CHROMIUM} did not open its DevTools port within {timeout}s")

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result; events that arrive meanwhile are noted."""
        self._next_id += 1
        my_id = self._next_id
        self._ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._note(msg)

    def _note(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = (str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.append("console: " + " ".join(args))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout=30, what=f"{url} to load")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str, interval: float = 0.2):
        """Poll a JavaScript expression until it is truthy (its value is returned)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what} ({expression})")
            time.sleep(interval)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page."""
        size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._ws.close()
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            shutil.rmtree(self._dir, ignore_errors=True)

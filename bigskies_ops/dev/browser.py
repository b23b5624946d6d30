"""Headless Chromium driven over the DevTools protocol (CDP), for the report's test and
``scripts/report_screenshot.py``: open a page, record console errors, exceptions and every
network request, evaluate JavaScript in it, take screenshots at a given width.

Debian's ``chromium`` package (``/usr/bin/chromium``; scripts/install-test-deps.sh installs
it), with the flags that keep it off the network on its own account
(``--disable-background-networking`` and friends) and a fresh profile folder removed on
close. The protocol goes over a WebSocket (websocket-client, the ``test`` extra).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                  # any request that did go out would meet a dead proxy rather than the world
                  "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Browser:
    """One headless Chromium with one page. Use as a context manager; :meth:`close` ends
    the process it started (by its pid) and removes its profile folder."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0):
        import websocket  # the ``test`` extra; imported here so the product never needs it
        binary = binary or chromium_binary()
        if not binary:
            raise RuntimeError("chromium not found (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="bigskies-chromium-")
        self.timeout = timeout
        self.log = Path(self.profile + ".stderr")  # a file, not a pipe: chromium's chatter never blocks it
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                          "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True,
                                         # its singleton socket's folder (org.chromium.Chromium.*) goes
                                         # in the profile, which close() removes, not in /tmp
                                         env={**os.environ, "TMPDIR": self.profile})
        self.events: list[dict] = []
        self._id = 0
        try:
            port_file = Path(self.profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout
            while not port_file.exists() or not port_file.read_text().strip():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chromium did not start: " + self._stderr())
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
                targets = json.load(r)
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                                  suppress_origin=True)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def send(self, method: str, **params) -> dict:
        """Send one CDP command and wait for its answer (events that arrive meanwhile are kept)."""
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for e in self.events:
            if e["method"] == method:
                return e
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(method)

    def open(self, url: str, width: int = 1200, height: int = 900, mobile: bool = False) -> None:
        """Load ``url`` at a window of ``width`` x ``height`` CSS pixels; returns when it has loaded."""
        self.resize(width, height, mobile)
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def resize(self, width: int, height: int = 900, mobile: bool = False) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=mobile)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: str | os.PathLike | None = None, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole page's height with ``full_page``); written to ``path`` if given."""
        params: dict = {"format": "png"}
        if full_page:
            m = self.send("Page.getLayoutMetrics")
            size = m.get("cssContentSize") or m["contentSize"]
            vw = m.get("cssLayoutViewport", {}).get("clientWidth") or size["width"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": vw, "height": size["height"], "scale": 1})
        png = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def problems(self) -> dict:
        """What the page did wrong so far: ``console`` (console errors and warnings, log
        entries of level error), ``exceptions``, and ``requests`` (URLs of every request
        other than the page's own file and ``data:`` URLs)."""
        console = [e["params"] for e in self.events if e["method"] == "Runtime.consoleAPICalled"
                   and e["params"].get("type") in ("error", "warning", "assert")]
        console += [e["params"]["entry"] for e in self.events if e["method"] == "Log.entryAdded"
                    and e["params"]["entry"].get("level") in ("error", "warning")]
        exceptions = [e["params"] for e in self.events if e["method"] == "Runtime.exceptionThrown"]
        urls = [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]
        pages = {e["params"]["documentURL"] for e in self.events if e["method"] == "Network.requestWillBeSent"
                 and e["params"].get("type") == "Document"}
        return {"console": console, "exceptions": exceptions,
                "requests": [u for u in urls if u not in pages and not u.startswith("data:")]}

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        # its own process group (start_new_session): the browser and the helpers it started, nothing else
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # helpers that outlived the browser
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Render a local HTML file in headless Chromium and record every request the page makes.

Talks the Chrome DevTools Protocol over `--remote-debugging-pipe` (JSON messages ending in NUL on fds
3/4, as Puppeteer's pipe mode does), so no extra package is needed. `render()` returns the full-page
PNG, the URLs of all network requests of the page (Network.requestWillBeSent), and console/log
errors (a Content-Security-Policy refusal, a failed load or a script error shows up there).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    env = os.environ.get("DELTASPEC_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    return next((p for n in NAMES if (p := shutil.which(n))), None)


class _Pipe:
    def __init__(self, proc, wfd, rfd):
        self.proc, self.w, self.r = proc, os.fdopen(wfd, "wb", buffering=0), os.fdopen(rfd, "rb", buffering=0)
        self.buf, self.n, self.events = b"", 0, []

    def send(self, method, params=None, session=None, timeout=60.0):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.w.write(json.dumps(msg).encode() + b"\0")
        return self.wait(lambda m: m.get("id") == self.n, timeout)

    def wait(self, pred, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                m = json.loads(raw)
                if "method" in m:
                    self.events.append(m)
                if pred(m):
                    if "error" in m:
                        raise RuntimeError(f"DevTools error: {m['error']}")
                    return m
            chunk = self.r.read(1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        raise TimeoutError("no answer from chromium")


def render(html_path, width: int = 1366, height: int = 900, timeout: float = 90.0, evaluate=()):
    """(png bytes of the full page, [request URLs], [error messages], [values of `evaluate` JS expressions])
    for a local HTML file at a viewport `width` CSS px wide."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("no chromium found")
    url = Path(html_path).resolve().as_uri()
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="deltaspec-chromium-")
    args = [exe, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--disable-default-apps", f"--user-data-dir={profile}", "about:blank"]

    def child_fds():  # chromium reads commands on fd 3 and writes answers on fd 4
        a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)  # via fresh fds: the pipes may sit on 3 or 4
        os.dup2(a, 3)
        os.dup2(b, 4)

    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=child_fds, pass_fds=(3, 4))
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["result"]["targetId"]
        sid = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["result"]["sessionId"]
        for domain in ("Network", "Page", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=sid)
        pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=sid)
        pipe.send("Page.navigate", {"url": url}, session=sid)
        pipe.wait(lambda m: m.get("method") == "Page.loadEventFired", timeout)
        values = [pipe.send("Runtime.evaluate", {"expression": x, "returnByValue": True}, session=sid)
                  ["result"]["result"].get("value") for x in evaluate]
        size = pipe.send("Page.getLayoutMetrics", session=sid)["result"]["cssContentSize"]
        shot = pipe.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}}, session=sid, timeout=timeout)
        png = base64.b64decode(shot["result"]["data"])
        events = [e for e in pipe.events if e.get("sessionId") == sid]
        requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
        errors = [e["params"]["entry"]["text"] for e in events
                  if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")]
        errors += [str(e["params"]) for e in events if e["method"] == "Runtime.exceptionThrown"]
        errors += [str(e["params"]) for e in events if e["method"] == "Network.loadingFailed"]
        return png, requests, errors, values
    finally:
        try:
            pipe.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)

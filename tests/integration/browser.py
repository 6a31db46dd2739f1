"""A real headless Chromium driven over the DevTools protocol (one websocket, flattened sessions), for the status
page's tests: open a page, wait until a condition holds in its live DOM, read it, take a screenshot.

Chromium is Debian's `chromium` package; `make test` installs it when it is missing (.ci/ensure-packages). The
DevTools protocol needs no driver binary and speaks through aiohttp, which the gateway already depends on.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
START_TIMEOUT_S = 30.0  # a cold start on a busy 2-core VM; usually ~1 s
STARTUP_CHECK_S = 0.05
COMMAND_TIMEOUT_S = 10.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the suite runs as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",
    "--window-size=1280,1000",
)


class BrowserError(Exception):
    pass


def chromium_path() -> str:
    """The Chromium binary; a test run in CI fails without it (it never skips there), a developer's is skipped."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    reason = "Chromium is not installed (Debian package `chromium`; `make test` installs it when run as root)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def running_chromium() -> Iterator[str]:
    """A headless Chromium for the duration; yields its browser-level DevTools websocket URL."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        log_path = Path(profile) / "stderr.log"  # a file, not a pipe: Chromium is chatty and a full pipe stalls it
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            yield _devtools_url(process, log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _devtools_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """Chromium prints its DevTools address on start; nothing announces it otherwise, so the log is read until
    the line is there (every STARTUP_CHECK_S) or the process ends."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("DevTools listening on "):
                return line.removeprefix("DevTools listening on ").strip()
        time.sleep(STARTUP_CHECK_S)
    tail = log_path.read_text(errors="replace").splitlines()[-5:]
    raise BrowserError("Chromium did not start: " + " | ".join(tail))


class Browser:
    """One DevTools connection; each Page is a tab attached to it in flattened mode."""

    def __init__(self, session: aiohttp.ClientSession, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console_errors: list[str] = []
        self._reader = asyncio.create_task(self._read(), name="devtools-reader")

    @classmethod
    async def connect(cls, url: str) -> Browser:
        session = aiohttp.ClientSession()
        try:
            socket = await session.ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except BaseException:
            await session.close()
            raise
        return cls(session, socket)

    async def close(self) -> None:
        self._reader.cancel()
        with suppress(asyncio.CancelledError):
            await self._reader
        await self._socket.close()
        await self._session.close()

    async def send(self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None) -> Any:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        answer = self._waiting[message_id] = asyncio.get_running_loop().create_future()
        try:
            await self._socket.send_str(json.dumps(message))
            async with asyncio.timeout(COMMAND_TIMEOUT_S + float(params.get("timeout", 0) if params else 0) / 1000):
                reply = await answer
        finally:
            self._waiting.pop(message_id, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            waiter = self._waiting.get(data.get("id", -1))
            if waiter is not None and not waiter.done():
                waiter.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console_errors.append(str(data["params"]["exceptionDetails"]))
            elif data.get("method") == "Log.entryAdded" and data["params"]["entry"]["level"] == "error":
                self.console_errors.append(data["params"]["entry"]["text"])
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(BrowserError("the DevTools connection closed"))

    async def open(self, url: str) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, target["targetId"], attached["sessionId"])
        await page.send("Runtime.enable")
        await page.send("Log.enable")
        await page.send("Page.enable")
        await page.send("Page.navigate", {"url": url})
        return page


class Page:
    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self._browser = browser
        self.target_id = target_id
        self._session_id = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self._browser.send(method, params, self._session_id)

    async def evaluate(self, expression: str, *, timeout_ms: int = 0) -> Any:
        params: dict[str, Any] = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        if timeout_ms:
            params["timeout"] = timeout_ms  # 0 is not "no limit" to Chromium: it fails the call at once
        result = await self.send("Runtime.evaluate", params)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def wait_for(self, condition_js: str, timeout_s: float) -> float:
        """Waits until `condition_js` (an expression over the live DOM) is true, observing the DOM's changes (no
        polling); returns the seconds it took; BrowserError naming the condition when it did not hold in time."""
        ms = int(timeout_s * 1000)
        expression = f"""new Promise((resolve, reject) => {{
            const started = performance.now();
            const holds = () => {{ try {{ return Boolean({condition_js}); }} catch (e) {{ return false; }} }};
            const done = () => {{ observer.disconnect(); clearTimeout(timer);
                                  resolve((performance.now() - started) / 1000); }};
            const observer = new MutationObserver(() => {{ if (holds()) done(); }});
            const timer = setTimeout(() => {{ observer.disconnect();
                reject(new Error("not within {timeout_s} s: " + {json.dumps(condition_js)})); }}, {ms});
            observer.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
            if (holds()) done();
        }})"""
        return float(await self.evaluate(expression, timeout_ms=ms + 1000))

    async def text(self, selector: str) -> str:
        return str(await self.evaluate(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''"))

    async def screenshot(self) -> bytes:
        shot = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        return base64.b64decode(shot["data"])

    async def close(self) -> None:
        await self._browser.send("Target.closeTarget", {"targetId": self.target_id})

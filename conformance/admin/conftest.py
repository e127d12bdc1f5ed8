"""The broker as a child process for the admin suite: the built binary on
ephemeral loopback ports, its addresses read from its `ready` line.

Waits are for events (a line on a child's stderr, an HTTP answer that
says the awaited state holds) and each has a deadline whose failure names
what was awaited.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
WAIT = 20.0


def binary() -> Path:
    explicit = os.environ.get("FERRYMQ_BIN")
    if explicit:
        return Path(explicit)
    release = REPO / "target" / "release" / "ferrymq"
    return release if release.exists() else REPO / "target" / "debug" / "ferrymq"


class LineWatcher:
    """Reads a child's stream on a thread; `wait_for` blocks on new lines."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for raw in stream:
            self._q.put(raw.decode(errors="replace"))
        self._q.put(None)

    def wait_for(self, needle: str, what: str, timeout: float = WAIT) -> str:
        end = time.monotonic() + timeout
        for line in self.lines:
            if needle in line:
                return line
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; output:\n{''.join(self.lines)}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process exited while waiting for {what}; output:\n{''.join(self.lines)}")
            self.lines.append(line)
            if needle in line:
                return line


class Broker:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ferrymq-admin-"))
        self.proc = subprocess.Popen(
            [
                str(binary()), "serve", "--data-dir", str(self.dir),
                "--amqp", "127.0.0.1:0", "--http", "127.0.0.1:0",
                "--mqtt", "off", "--stomp", "off",
                "--amqps", "off", "--mqtts", "off", "--stomps", "off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "FERRYMQ_LOG": "info"},
        )
        self.log = LineWatcher(self.proc.stderr)
        ready = self.log.wait_for(" ready ", "the broker's ready line")
        addrs = dict(part.split("=", 1) for part in ready.split() if "=" in part and ":" in part)
        self.amqp = addrs["amqp"]
        self.http = addrs["http"]
        self.amqp_host, amqp_port = self.amqp.rsplit(":", 1)
        self.amqp_port = int(amqp_port)

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def api(self, method: str, path: str, body=None, user="guest", password="guest"):
        """One management API call; returns (status, parsed JSON or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method=method)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url(path), timeout=WAIT) as r:
            return r.read().decode()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


def pytest_sessionstart(session):
    if not binary().exists():
        raise pytest.UsageError(f"{binary()} does not exist; build it with cargo build --release or set FERRYMQ_BIN")


@pytest.fixture
def broker():
    b = Broker()
    yield b
    code = b.stop()
    assert code == 0, f"broker exited {code} after SIGTERM:\n{''.join(b.log.lines)}"


def wait_until(what: str, check, timeout: float = WAIT, interval: float = 0.2):
    """Polls `check` (which returns a truthy value once the awaited state
    holds) for a state another process reaches on its own schedule, such as
    Prometheus ingesting scrapes; fails naming `what` at the deadline."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last result: {last!r}")

"""Shared pieces of the conformance suite: the broker as a child process,
event waits with deadlines, and a raw AMQP 0-9-1 socket client for the
cases a well-behaved client library refuses to produce (garbled frames,
methods on unopened channels, oversized frames).

Nothing here sleeps to synchronise: every wait is for an event (a line on
stderr, a frame, a delivery, a confirm) and has a deadline whose failure
message names what was awaited.
"""

from __future__ import annotations

import atexit
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The binary under test; scripts/test builds it and may point elsewhere.
BINARY = Path(os.environ.get("FERRYMQ_BIN", REPO / "target" / "release" / "ferrymq"))

#: Generous bound for any single awaited event.
WAIT = 20.0
#: The contract: SIGTERM ends the process within this many seconds.
SHUTDOWN_GRACE = 5.0


def unique(prefix: str) -> str:
    """A name no other test uses, so tests sharing a broker stay independent."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Timeout(AssertionError):
    """An awaited event did not happen in time."""


def deadline_for(what: str, timeout: float = WAIT):
    """Returns a function that raises Timeout naming `what` once `timeout` has passed."""
    end = time.monotonic() + timeout

    def check() -> float:
        left = end - time.monotonic()
        if left <= 0:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}")
        return left

    return check


# --------------------------------------------------------------------------
# The broker process
# --------------------------------------------------------------------------


class Broker:
    """ferrymq as a child process, on ephemeral loopback ports."""

    def __init__(
        self,
        *extra: str,
        config: str | None = None,
        amqp: str = "127.0.0.1:0",
        stomp: str = "127.0.0.1:0",
        mqtt: str = "off",
    ):
        self.data_dir = tempfile.mkdtemp(prefix="ferrymq-conf-")
        atexit.register(shutil.rmtree, self.data_dir, ignore_errors=True)
        self.args = [
            str(BINARY),
            "serve",
            "--amqp",
            amqp,
            "--mqtt",
            mqtt,
            "--stomp",
            stomp,
            "--http",
            "off",
            "--data-dir",
            self.data_dir,
            *extra,
        ]
        if config is not None:
            path = Path(self.data_dir) / "ferrymq.toml"
            path.write_text(config)
            self.args += ["--config", str(path)]
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.ready_line: str | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.stomp_host: str | None = None
        self.stomp_port: int | None = None
        #: Set only when the broker was started with an MQTT listener.
        self.mqtt_host: str | None = None
        self.mqtt_port: int | None = None

    def spawn(self) -> "Broker":
        """Starts the process without waiting for it to be ready."""
        env = dict(os.environ, FERRYMQ_LOG=os.environ.get("FERRYMQ_LOG", "info"))
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.drainer = threading.Thread(target=self._drain, daemon=True)
        self.drainer.start()
        return self

    def _drain(self) -> None:
        # Read stderr continuously so the broker never blocks on a full pipe.
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def start(self) -> "Broker":
        """Starts the process and waits for its `ready` line."""
        self.spawn()
        left = deadline_for(f"the 'ready' line from {' '.join(self.args)}")
        while True:
            line = next_line(self.lines, left)
            if line is None:
                code = self.proc.wait(timeout=WAIT)
                raise AssertionError(
                    f"broker exited with {code} before 'ready'; stderr:\n" + "\n".join(self.stderr)
                )
            if "ready" in line:
                self.ready_line = line
                break
        for word in self.ready_line.split():
            if word.startswith("amqp="):
                host, _, port = word[len("amqp=") :].rpartition(":")
                self.host, self.port = host.strip("[]"), int(port)
            elif word.startswith("stomp="):
                host, _, port = word[len("stomp=") :].rpartition(":")
                self.stomp_host, self.stomp_port = host.strip("[]"), int(port)
            elif word.startswith("mqtt="):
                host, _, port = word[len("mqtt=") :].rpartition(":")
                self.mqtt_host, self.mqtt_port = host.strip("[]"), int(port)
        return self

    def wait_exit(self, timeout: float = WAIT) -> int:
        """Waits for the process to end by itself."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for the broker to exit")
        # Everything it wrote to stderr, not just what was read so far.
        self.drainer.join(timeout=timeout)
        return code

    def stop(self) -> int:
        """SIGTERM, then the exit code, which must come within the grace period."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=SHUTDOWN_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
            raise AssertionError(f"broker did not exit within {SHUTDOWN_GRACE}s of SIGTERM")

    def kill(self) -> None:
        """Ends the process without ceremony (cleanup after a failed test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)

    def stderr_text(self) -> str:
        return "\n".join(self.stderr)


# --------------------------------------------------------------------------
# Waiting on pika
# --------------------------------------------------------------------------


def next_line(lines: "queue.Queue[str | None]", left) -> str | None:
    """The next line a reader thread queued (None once its stream ended),
    waiting no longer than the deadline `left` (from `deadline_for`) allows."""
    while True:
        try:
            return lines.get(timeout=left())
        except queue.Empty:
            left()


def stop_child(proc: subprocess.Popen) -> None:
    """Ends a client process that exits when its stdin closes; kills it if
    it has not within WAIT."""
    if proc.poll() is not None:
        return
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pump(conn, until, what: str, timeout: float = WAIT) -> None:
    """Processes pika I/O until `until()` is true; fails naming `what`.
    `conn` may be a list of connections, served in turn."""
    conns = conn if isinstance(conn, (list, tuple)) else [conn]
    left = deadline_for(what, timeout)
    while not until():
        for c in conns:
            c.process_data_events(time_limit=min(0.02, left()))


def poll(check, what: str, timeout: float = WAIT, pause=None) -> None:
    """For state that no client can await as an event (a queue deleting
    itself after x-expires): re-check a condition until it holds, bounded.
    `pause` runs between checks (pika's process_data_events, say)."""
    left = deadline_for(what, timeout)
    while not check():
        left()
        if pause is not None:
            pause()
        else:
            time.sleep(0.02)


# --------------------------------------------------------------------------
# A raw AMQP 0-9-1 client
# --------------------------------------------------------------------------

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


def shortstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return bytes([len(b)]) + b


def longstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


def table(items: dict | None = None) -> bytes:
    """A field table; values are str (long string), bool or int (signed 32)."""
    body = b""
    for k, v in (items or {}).items():
        body += shortstr(k)
        if isinstance(v, bool):
            body += b"t" + bytes([int(v)])
        elif isinstance(v, int):
            body += b"I" + struct.pack(">i", v)
        else:
            body += b"S" + longstr(v)
    return longstr(body)


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def method(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack(">HH", class_id, method_id) + args)


def content_header(channel: int, body_size: int, class_id: int = 60) -> bytes:
    return frame(FRAME_HEADER, channel, struct.pack(">HHQH", class_id, 0, body_size, 0))


def body(channel: int, data: bytes) -> bytes:
    return frame(FRAME_BODY, channel, data)


def channel_open(channel: int) -> bytes:
    return method(channel, 20, 10, shortstr(""))


def basic_publish(channel: int, exchange: str, key: str, mandatory=False, immediate=False) -> bytes:
    bits = int(mandatory) | int(immediate) << 1
    return method(channel, 60, 40, struct.pack(">H", 0) + shortstr(exchange) + shortstr(key) + bytes([bits]))


def queue_declare(channel: int, name: str, exclusive=False, auto_delete=False) -> bytes:
    bits = int(exclusive) << 2 | int(auto_delete) << 3
    return method(channel, 50, 10, struct.pack(">H", 0) + shortstr(name) + bytes([bits]) + table())


def basic_consume(channel: int, queue_name: str, tag: str = "", no_ack=False) -> bytes:
    bits = int(no_ack) << 1
    return method(
        channel, 60, 20, struct.pack(">H", 0) + shortstr(queue_name) + shortstr(tag) + bytes([bits]) + table()
    )


def confirm_select(channel: int) -> bytes:
    return method(channel, 85, 10, b"\x00")


class Frame:
    def __init__(self, kind: int, channel: int, payload: bytes):
        self.kind, self.channel, self.payload = kind, channel, payload

    @property
    def method_id(self) -> tuple[int, int] | None:
        if self.kind != FRAME_METHOD:
            return None
        return struct.unpack(">HH", self.payload[:4])

    def __repr__(self) -> str:
        return f"Frame(type={self.kind}, channel={self.channel}, method={self.method_id}, {len(self.payload)} bytes)"


class Closed(Exception):
    """The broker closed the TCP connection."""


class RawAmqp:
    """A hand-driven AMQP 0-9-1 connection: send exactly the bytes a test
    wants and read the broker's frames one by one."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=WAIT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self, n: int, left) -> None:
        while len(self.buf) < n:
            self.sock.settimeout(left())
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed()
            self.buf += chunk

    def read_raw(self, n: int, what: str = "bytes") -> bytes:
        left = deadline_for(what)
        self._fill(n, left)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, what: str = "a frame", timeout: float = WAIT) -> Frame:
        left = deadline_for(what, timeout)
        self._fill(7, left)
        kind, channel, size = struct.unpack(">BHI", self.buf[:7])
        self._fill(7 + size + 1, left)
        payload = self.buf[7 : 7 + size]
        assert self.buf[7 + size : 8 + size] == FRAME_END, "broker sent a frame without frame-end"
        self.buf = self.buf[8 + size :]
        return Frame(kind, channel, payload)

    def expect_method(self, class_id: int, method_id: int, channel: int | None = None) -> Frame:
        """Reads frames (skipping heartbeats) until the named method arrives."""
        what = f"method {class_id}.{method_id}"
        left = deadline_for(what)
        while True:
            f = self.read_frame(what, left())
            if f.kind == FRAME_HEARTBEAT:
                continue
            assert f.method_id == (class_id, method_id) and (channel is None or f.channel == channel), (
                f"expected {what}, got {f!r}: {f.payload!r}"
            )
            return f

    def handshake(
        self,
        user="guest",
        password="guest",
        vhost="/",
        channel_max=0,
        frame_max=0,
        heartbeat=0,
    ) -> tuple[int, int, int]:
        """Runs the handshake; returns the broker's tune (channel_max, frame_max, heartbeat)."""
        self.send(PROTOCOL_HEADER)
        self.expect_method(10, 10)
        response = b"\0" + user.encode() + b"\0" + password.encode()
        self.send(method(0, 10, 11, table({"product": "conformance"}) + shortstr("PLAIN") + longstr(response) + shortstr("en_US")))
        tune = self.expect_method(10, 30)
        offered = struct.unpack(">HIH", tune.payload[4:12])
        self.send(method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, heartbeat)))
        self.send(method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        self.expect_method(10, 41)
        return offered

    def open_channel(self, channel: int) -> None:
        self.send(channel_open(channel))
        self.expect_method(20, 11, channel)

    def expect_connection_close(self) -> tuple[int, str]:
        """Reads until connection.close; answers close-ok; returns (code, text).
        Frames in between (deliveries, heartbeats) are skipped."""
        left = deadline_for("connection.close from the broker")
        while True:
            f = self.read_frame("connection.close from the broker", left())
            if f.method_id == (10, 50):
                code = struct.unpack(">H", f.payload[4:6])[0]
                n = f.payload[6]
                text = f.payload[7 : 7 + n].decode(errors="replace")
                try:
                    self.send(method(0, 10, 51))
                except OSError:
                    pass
                return code, text

    def expect_channel_close(self, channel: int) -> tuple[int, str]:
        left = deadline_for(f"channel.close on channel {channel}")
        while True:
            f = self.read_frame(f"channel.close on channel {channel}", left())
            if f.method_id == (20, 40) and f.channel == channel:
                code = struct.unpack(">H", f.payload[4:6])[0]
                n = f.payload[6]
                text = f.payload[7 : 7 + n].decode(errors="replace")
                self.send(method(channel, 20, 41))
                return code, text

    def expect_eof(self, timeout: float = WAIT) -> list[Frame]:
        """Reads until the broker closes the socket; returns the frames seen."""
        left = deadline_for("the broker to close the socket", timeout)
        seen = []
        while True:
            try:
                seen.append(self.read_frame("the broker to close the socket", left()))
            except Closed:
                return seen


# --------------------------------------------------------------------------
# pika error scopes
# --------------------------------------------------------------------------


def channel_error(ch, action=None):
    """Runs `action` (which the broker should refuse), then a round trip on
    the same channel; returns the ChannelClosedByBroker the broker's
    channel.close raised. Asynchronous refusals (a publish) surface at the
    round trip; synchronous ones in `action` itself."""
    import pika

    try:
        if action is not None:
            action()
        ch.exchange_declare("amq.direct", passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        return e
    raise AssertionError("the broker did not close the channel")


def connection_error(conn, action=None):
    """Runs `action`, then waits for the broker's connection.close; returns
    the ConnectionClosedByBroker it raised."""
    import pika

    try:
        if action is not None:
            action()
        pump(conn, lambda: False, "connection.close from the broker")
    except pika.exceptions.ConnectionClosedByBroker as e:
        return e
    raise AssertionError("the broker did not close the connection")


def usable(conn) -> None:
    """Asserts a connection still works: a channel, a queue, a round trip."""
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.basic_publish("", q, b"still here")
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"still here", "a message published after the error came back"
    ch.close()

"""stomp.py connections to the broker, and a listener that turns its
callbacks into events a test waits for, each with a deadline."""

from __future__ import annotations

import queue

import pytest
import stomp

from conformance.support import WAIT, Timeout, deadline_for

CONNECTIONS = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


class Recorder(stomp.ConnectionListener):
    """Every frame stomp.py hands over, by kind, in order."""

    def __init__(self):
        self.messages: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.heartbeats: queue.Queue = queue.Queue()
        self.disconnected: queue.Queue = queue.Queue()
        self.connections: queue.Queue = queue.Queue()
        self.connected = None

    def on_connected(self, frame):
        self.connections.put(frame)

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers["receipt-id"])

    def on_error(self, frame):
        self.errors.put(frame)

    def on_heartbeat(self):
        self.heartbeats.put(True)

    def on_disconnected(self):
        self.disconnected.put(True)

    @staticmethod
    def _next(q: queue.Queue, what: str, timeout: float = WAIT):
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}") from None

    def message(self, what: str = "a MESSAGE"):
        return self._next(self.messages, what)

    def receipt(self, receipt_id: str) -> None:
        got = self._next(self.receipts, f"RECEIPT {receipt_id}")
        assert got == receipt_id, f"expected RECEIPT {receipt_id}, got {got}"

    def error(self, what: str = "an ERROR frame"):
        return self._next(self.errors, what)

    def closed(self, what: str = "the broker to close the connection") -> None:
        self._next(self.disconnected, what)

    def heartbeat(self, what: str = "a heart-beat from the broker") -> None:
        self._next(self.heartbeats, what)

    def no_message(self, marker: str) -> None:
        """Asserts nothing but the marker message (sent last, by the test)
        arrives: the event that proves an absence."""
        frame = self.message(f"the marker {marker!r}")
        assert frame.body == marker, f"expected only the marker, got {frame.headers} {frame.body!r}"


class Client:
    """A connected stomp.py connection and its recorder."""

    def __init__(self, conn, recorder: Recorder, version: str):
        self.conn, self.events, self.version = conn, recorder, version
        self._receipts = 0

    def receipted(self, call, *args, **kwargs) -> None:
        """Calls a stomp.py method with a fresh receipt header and waits for it."""
        self._receipts += 1
        rid = f"r-{self._receipts}"
        call(*args, headers={**kwargs.pop("headers", {}), "receipt": rid}, **kwargs)
        self.events.receipt(rid)

    def subscribe(self, destination: str, sub_id: str, ack: str = "auto", **headers) -> None:
        self.receipted(self.conn.subscribe, destination, sub_id, ack=ack, headers=headers)

    def ack(self, frame, receipt: str | None = None) -> None:
        h = frame.headers
        if self.version == "1.2":
            self.conn.ack(h["ack"], receipt=receipt)
        elif self.version == "1.1":
            self.conn.ack(h["message-id"], h["subscription"], receipt=receipt)
        else:
            self.conn.ack(h["message-id"], receipt=receipt)
        if receipt:
            self.events.receipt(receipt)

    def nack(self, frame, **headers) -> None:
        h = frame.headers
        if self.version == "1.2":
            self.conn.nack(h["ack"], **headers)
        else:
            self.conn.nack(h["message-id"], h["subscription"], **headers)


def open_client(
    broker, version: str, login="guest", passcode="guest", heartbeats=(0, 0), auto_decode=True, **headers
):
    """Connects, waits for CONNECTED (or raises after WAIT)."""
    kwargs = {} if version == "1.0" else {"heartbeats": heartbeats}
    conn = CONNECTIONS[version](
        [(broker.stomp_host, broker.stomp_port)], reconnect_attempts_max=1, auto_decode=auto_decode, **kwargs
    )
    recorder = Recorder()
    conn.set_listener("recorder", recorder)
    conn.connect(login, passcode, wait=False, headers=headers)
    conn.transport.wait_for_connection(timeout=WAIT)
    # The transport says connected before the listeners have heard of it.
    recorder.connected = recorder._next(recorder.connections, "CONNECTED to reach the listener")
    return Client(conn, recorder, version)


@pytest.fixture
def stomp_client(broker):
    """Opens stomp.py connections; disconnects whatever is left at the end."""
    opened = []

    def open_one(version: str = "1.2", **kwargs):
        c = open_client(broker, version, **kwargs)
        opened.append(c)
        return c

    yield open_one
    for c in opened:
        if c.conn.is_connected():
            try:
                c.conn.disconnect()
            except Exception:
                pass


__all__ = ["Recorder", "Client", "open_client", "deadline_for"]

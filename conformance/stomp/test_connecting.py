"""stomp.py connecting with each version: negotiation, login, heart-beats
both ways, DISCONNECT with a receipt, and errors that close only the
offending connection."""

from __future__ import annotations

import socket

import pytest
import stomp

from conformance.stomp.conftest import open_client
from conformance.support import WAIT, unique

VERSIONS = ["1.0", "1.1", "1.2"]


@pytest.mark.parametrize("version", VERSIONS)
def test_each_version_is_negotiated(stomp_client, version):
    c = stomp_client(version)
    connected = c.events.connected
    assert connected is not None
    if version == "1.0":
        assert "version" not in connected.headers
    else:
        assert connected.headers["version"] == version
    assert connected.headers["server"].startswith("ferrymq/")
    assert connected.headers["session"]


def test_a_bad_passcode_is_refused(broker):
    with pytest.raises(stomp.exception.ConnectFailedException):
        open_client(broker, "1.2", passcode="wrong")


def test_a_bad_passcode_gets_an_error_frame_naming_the_problem(broker):
    sock = socket.create_connection((broker.stomp_host, broker.stomp_port), timeout=WAIT)
    sock.sendall(b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:wrong\n\n\0")
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.startswith(b"ERROR\n"), data
    assert b"message:Bad CONNECT" in data
    assert b"Access refused" in data


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_heart_beats_flow_both_ways(stomp_client, version):
    # stomp.py sends its own every 200 ms and expects ours as often; the
    # broker must keep the connection open while they flow.
    c = stomp_client(version, heartbeats=(200, 200))
    assert c.events.connected.headers["heart-beat"] == "200,200"
    for i in range(5):
        c.events.heartbeat(f"heart-beat {i} from the broker")
    queue = f"/queue/{unique('hb')}"
    c.subscribe(queue, "s")
    c.conn.send(queue, "alive after heart-beats")
    assert c.events.message().body == "alive after heart-beats"


@pytest.mark.parametrize("version", VERSIONS)
def test_disconnect_with_a_receipt(stomp_client, version):
    c = stomp_client(version)
    c.conn.disconnect(receipt="bye")
    c.events.receipt("bye")


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"FROB\n\n\0", b"Bad command"),
        (b"SEND\n\nno destination\0", b"Missing header"),
        (b"SEND\ndestination:/nowhere/x\n\n\0", b"Unknown destination"),
        (b"SEND\ndestination:/queue/q\ncontent-length:3\n\nabcd\0", b"Malformed frame"),
        (b"SEND\ndestination:/queue/q\ncontent-length:99999999999\n\n", b"Frame too large"),
        (b"SUBSCRIBE\ndestination:/queue/q\n\n\0", b"Missing header"),
    ],
    ids=["unknown-command", "missing-destination", "bad-destination", "unterminated", "too-large", "missing-id"],
)
def test_bad_input_gets_an_error_and_closes_only_that_connection(stomp_client, broker, frame, message):
    bystander = stomp_client("1.2")
    queue = f"/queue/{unique('bystander')}"
    bystander.subscribe(queue, "b")
    sock = socket.create_connection((broker.stomp_host, broker.stomp_port), timeout=WAIT)
    sock.sendall(b"CONNECT\naccept-version:1.2\nlogin:guest\npasscode:guest\n\n\0")
    sock.sendall(frame)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.startswith(b"CONNECTED\n"), data
    error = data[data.index(b"\0") + 1 :].lstrip(b"\n")
    assert error.startswith(b"ERROR\n"), data
    assert b"message:" + message in error, error
    bystander.conn.send(queue, "still served")
    assert bystander.events.message().body == "still served"

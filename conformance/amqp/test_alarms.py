"""Resource alarms: connection.blocked goes to clients that announce the
capability; connections that only consume keep working."""

from __future__ import annotations

import pika
import pytest

from conformance.support import Broker, pump, unique, usable


@pytest.fixture(
    scope="module",
    params=["memory_limit_bytes = 1\n", "disk_free_limit_bytes = 1000000000000000000\n"],
    ids=["memory", "disk"],
)
def alarmed_broker(request):
    b = Broker(config=request.param).start()
    yield b
    assert b.stop() == 0


def test_a_publisher_is_told_it_is_blocked(alarmed_broker):
    # The alarm is on from the start, so this connection opens during it.
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=alarmed_broker.host, port=alarmed_broker.port))
    try:
        blocked = []
        conn.add_on_connection_blocked_callback(lambda c, frame: blocked.append(frame.method.reason))
        ch = conn.channel()
        ch.basic_publish("amq.fanout", "", b"held back")
        pump(conn, lambda: blocked, "connection.blocked after publishing during an alarm")
        assert blocked[0].startswith("low on"), blocked[0]
    finally:
        # Not conn.close(): a blocked connection is not read, so its close
        # would wait for the alarm. The broker's shutdown closes it (and
        # must still exit within its grace period).
        pass


def test_a_connection_that_does_not_publish_keeps_working(alarmed_broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=alarmed_broker.host, port=alarmed_broker.port))
    try:
        ch = conn.channel()
        q = ch.queue_declare(unique("alarm"), exclusive=True).method.queue
        ch.queue_bind(q, "amq.fanout")
        assert ch.basic_get(q) == (None, None, None)
        assert conn.is_open
    finally:
        conn.close()

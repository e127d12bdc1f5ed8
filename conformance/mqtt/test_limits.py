"""The MQTT limits config/ferrymq.toml sets: Receive Maximum, Topic Alias
Maximum and the longest keepalive (Server Keep Alive), announced in
CONNACK and enforced."""

from __future__ import annotations

import time

import pytest

from conformance.mqtt import wire
from conformance.support import Broker, unique

LIMITS = """
mqtt_receive_maximum = 2
mqtt_topic_alias_maximum = 2
mqtt_max_keep_alive = 2
"""


@pytest.fixture(scope="module")
def broker():
    b = Broker(mqtt="127.0.0.1:0", config=LIMITS).start()
    yield b
    assert b.stop() == 0, b.stderr_text()


@pytest.mark.parametrize("keepalive, announced", [(0, 2), (60, 2), (1, None), (2, None)])
def test_connack_announces_the_configured_limits(raw, keepalive, announced):
    r = raw(5)
    ack = r.connect(unique("lim"), keepalive=keepalive)
    assert ack.reason == 0
    assert (ack.props["receive_maximum"], ack.props["topic_alias_maximum"]) == (2, 2)
    assert ack.props.get("server_keep_alive") == announced


def test_more_qos2_publishes_in_flight_than_receive_maximum_end_the_connection(raw):
    r = raw(5)
    r.connect(unique("rm"), keepalive=2)
    for pid in (1, 2):
        r.send(wire.publish("lim/rm", b"x", qos=2, packet_id=pid))
        assert r.expect(wire.PUBREC).packet_id == pid
    r.send(wire.publish("lim/rm", b"x", qos=2, packet_id=3))
    seen = r.expect_eof("DISCONNECT for a third QoS 2 publish in flight")
    assert [(p.kind, p.reason) for p in seen] == [(wire.DISCONNECT, 0x93)], seen
    assert seen[0].props.get("reason_string")


def test_released_qos2_publishes_make_room_again(raw):
    r = raw(5)
    r.connect(unique("rm"), keepalive=2)
    for pid in range(1, 6):
        r.send(wire.publish("lim/rm", b"x", qos=2, packet_id=pid))
        r.expect(wire.PUBREC)
        r.send(wire.ack(wire.PUBREL, pid))
        assert r.expect(wire.PUBCOMP).reason == 0


def test_a_topic_alias_above_the_configured_maximum_is_invalid(raw):
    r = raw(5)
    r.connect(unique("alias"), keepalive=2)
    r.send(wire.publish("lim/a", b"", props=wire.properties(topic_alias=2)))
    r.send(wire.publish("lim/a", b"", props=wire.properties(topic_alias=3)))
    seen = r.expect_eof("DISCONNECT for topic alias 3")
    assert [(p.kind, p.reason) for p in seen] == [(wire.DISCONNECT, 0x94)], seen


def test_the_server_keepalive_is_enforced_on_both_versions(raw):
    v5, v311 = raw(5), raw(4)
    assert v5.connect(unique("ska"), keepalive=0).props["server_keep_alive"] == 2
    assert v311.connect(unique("ska"), keepalive=0).reason == 0
    start = time.monotonic()
    seen = v5.expect_eof("the server keepalive to expire")
    assert time.monotonic() - start >= 2.9, "closed before 1.5 server keepalives"
    assert [(p.kind, p.reason) for p in seen] == [(wire.DISCONNECT, 0x8D)], seen
    assert v311.expect_eof("the server keepalive to expire (3.1.1)") == []

"""Bad input over raw sockets: the offender gets MQTT 5's reason code in a
DISCONNECT (3.1.1: the socket closes), and only its connection ends; a
paho client connected all along keeps working."""

from __future__ import annotations

import pytest

from conformance.mqtt import wire
from conformance.mqtt.conftest import V5, VERSIONS, topic
from conformance.support import unique


@pytest.fixture
def bystander(mqtt_client):
    """A client connected before the bad input and checked after it."""
    c = mqtt_client(V5)
    t = topic("bystander")
    c.subscribe(t, 1)
    yield c
    c.publish(t, b"still here", qos=1)
    assert c.message("the bystander's own message after the bad input").payload == b"still here"


def offend(raw, version, data: bytes, connect=True):
    level = 5 if version == V5 else 4
    r = raw(level)
    if connect:
        assert r.connect(unique("bad")).reason == 0
    r.send(data)
    return r.expect_eof("the broker to close the offending connection")


def assert_closed_with(seen, version, code):
    if version == V5:
        assert [(p.kind, p.reason) for p in seen] == [(wire.DISCONNECT, code)], seen
        assert seen[0].props.get("reason_string"), f"DISCONNECT 0x{code:02x} says why"
    else:
        assert seen == [], f"3.1.1 just closes: {seen}"


# Each: bytes after CONNECT, and the MQTT 5 reason code they earn.
BAD = {
    # SUBSCRIBE's fixed-header flags must be 0010.
    "subscribe-with-bad-flags": (wire.packet(wire.SUBSCRIBE, 0, b"\x00\x01\x00\x01a\x00"), 0x81),
    # QoS 3 does not exist.
    "publish-with-qos-3": (b"\x36\x05\x00\x01a\x00\x01", 0x81),
    # A remaining length that promises more than the packet type allows.
    "pingreq-with-a-body": (b"\xc0\x01\x00", 0x81),
    "packet-type-0": (b"\x00\x00", 0x81),
    # Packet id 0 is never in use (MQTT 5 §2.2.1).
    "puback-with-packet-id-0": (b"\x40\x02\x00\x00", 0x81),
    "second-connect": (wire.connect("again", version=5), 0x82),
    "wildcard-in-a-topic-name": (wire.publish("a/+/b", b"x"), 0x90),
}
BAD_311 = {
    "second-connect": wire.connect("again", version=4),
    "wildcard-in-a-topic-name": wire.publish("a/+/b", b"x", version=4),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_from_an_mqtt5_client(raw, bystander, case):
    data, code = BAD[case]
    assert_closed_with(offend(raw, V5, data), V5, code)


@pytest.mark.parametrize("case", ["subscribe-with-bad-flags", "publish-with-qos-3", "packet-type-0", "puback-with-packet-id-0", *sorted(BAD_311)])
def test_bad_input_from_a_311_client(raw, bystander, case):
    data = BAD_311.get(case) or BAD[case][0]
    assert_closed_with(offend(raw, "3.1.1", data), "3.1.1", None)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_packet_over_the_maximum_size_is_refused_from_its_header(raw, bystander, version):
    # Only the fixed header is sent: the broker must not wait for the body.
    header = b"\x30" + wire.varint(16 * 1024 * 1024 + 64 * 1024 + 1)
    assert_closed_with(offend(raw, version, header), version, 0x95)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_packet_before_connect_closes_the_connection(raw, bystander, version):
    assert offend(raw, version, wire.publish("a", b"x", version=4), connect=False) == []


def test_an_unknown_protocol_level_gets_connack_unacceptable_protocol(raw, bystander):
    r = raw(4)
    r.send(wire.connect("lvl", version=6))
    ack = r.expect(wire.CONNACK)
    assert ack.reason == 0x01
    assert r.expect_eof() == []


def test_enhanced_authentication_is_refused(raw, bystander):
    r = raw(5)
    ack = r.connect(unique("auth"), props=wire.properties(auth_method="SCRAM-SHA-1"))
    assert ack.reason == 0x8C and ack.props.get("reason_string")


def test_a_subscription_identifier_on_a_client_publish_is_a_protocol_error(raw, bystander):
    data = wire.publish(topic("sid"), b"x", props=wire.properties(subscription_id=3))
    assert_closed_with(offend(raw, V5, data), V5, 0x82)


def test_no_local_on_a_shared_subscription_is_a_protocol_error(raw, bystander):
    data = wire.subscribe(1, [(f"$share/g/{topic('nl')}", 0x04)])
    assert_closed_with(offend(raw, V5, data), V5, 0x82)

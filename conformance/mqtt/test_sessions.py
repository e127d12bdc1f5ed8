"""Persistent sessions: subscriptions and queued QoS 1 / 2 messages survive
a disconnect; unacknowledged deliveries come again with DUP; MQTT 5's
session expiry interval ends a session on time and session-present says so."""

from __future__ import annotations

import pika
import pytest

from conformance.mqtt import wire
from conformance.mqtt.conftest import LEVEL, V5, VERSIONS, props, topic
from conformance.support import poll, unique
from paho.mqtt.packettypes import PacketTypes


def persistent(version, expiry=300):
    """connect() arguments for a session that outlives its connection."""
    if version == V5:
        return {"clean": False, "properties": props(PacketTypes.CONNECT, SessionExpiryInterval=expiry)}
    return {"clean": False}


@pytest.mark.parametrize("version", VERSIONS)
def test_subscriptions_and_queued_messages_survive_a_disconnect(mqtt_client, version):
    cid, t1, t2 = unique("away"), topic("s1"), topic("s2")
    c = mqtt_client(version, cid, **persistent(version))
    assert c.connect_result[0] is False
    c.subscribe(t1, 1)
    c.subscribe(t2, 2)
    c.disconnect()
    pub = mqtt_client(version)
    pub.publish(t1, b"q1 while away", qos=1)
    pub.publish(t2, b"q2 while away", qos=2)
    back = mqtt_client(version, cid, **persistent(version))
    assert back.connect_result[0] is True, "session present"
    got = sorted((m.payload, m.qos) for m in (back.message(), back.message()))
    assert got == [(b"q1 while away", 1), (b"q2 while away", 2)]
    pub.publish(t1, b"live again", qos=1)
    assert back.message("a message to the resumed subscription").payload == b"live again"


@pytest.mark.parametrize("version", VERSIONS)
def test_an_unacknowledged_delivery_comes_again_with_dup(mqtt_client, raw, version):
    cid, t, level = unique("dup"), topic("dup"), LEVEL[version]
    expiry = wire.properties(session_expiry=300) if version == V5 else None
    r = raw(level)
    r.connect(cid, clean=False, props=expiry)
    r.send(wire.subscribe(1, [(t, 1)], version=level))
    r.expect(wire.SUBACK)
    mqtt_client(version).publish(t, b"ack me", qos=1)
    first = r.expect(wire.PUBLISH)
    assert (first.payload, first.dup) == (b"ack me", False)
    r.close()
    again = raw(level)
    assert again.connect(cid, clean=False, props=expiry).session_present
    p = again.expect(wire.PUBLISH, "the redelivery")
    assert (p.payload, p.dup, p.qos) == (b"ack me", True, 1)
    again.send(wire.ack(wire.PUBACK, p.packet_id))


def test_session_expiry_zero_ends_the_session_with_the_connection(mqtt_client):
    cid, t = unique("zero"), topic("zero")
    c = mqtt_client(V5, cid, clean=False)
    c.subscribe(t, 1)
    c.disconnect()
    back = mqtt_client(V5, cid, clean=False)
    assert back.connect_result[0] is False, "no session kept with expiry 0"


def session_queue_gone(conn, cid):
    ch = conn.channel()

    def gone():
        nonlocal ch
        try:
            ch.queue_declare(f"mqtt-subscription-{cid}qos1", passive=True)
            return False
        except pika.exceptions.ChannelClosedByBroker:
            ch = conn.channel()
            return True

    return gone


def test_an_expired_session_is_gone(mqtt_client, conn):
    cid, t = unique("expires"), topic("exp")
    c = mqtt_client(V5, cid, **persistent(V5, expiry=1))
    c.subscribe(t, 1)
    c.disconnect()
    mqtt_client(V5).publish(t, b"for a session that expires", qos=1)
    # The session's queue is deleted when the session expires.
    poll(session_queue_gone(conn, cid), "the expired session's queue to be deleted", pause=lambda: conn.sleep(0.05))
    back = mqtt_client(V5, cid, **persistent(V5))
    assert back.connect_result[0] is False, "session present after expiry"
    marker = topic("marker")
    back.subscribe(marker, 0)
    mqtt_client(V5).publish(marker, b"", qos=1)
    assert back.message("the marker").topic == marker, "a message of the expired session was delivered"


def test_a_session_resumed_with_expiry_zero_gets_what_was_queued_and_then_ends(mqtt_client, conn):
    cid, t = unique("resume0"), topic("resume0")
    c = mqtt_client(V5, cid, **persistent(V5, expiry=600))
    c.subscribe(t, 1)
    c.disconnect()
    mqtt_client(V5).publish(t, b"queued while away", qos=1)
    back = mqtt_client(V5, cid, **persistent(V5, expiry=0))
    assert back.connect_result[0] is True, "session present"
    assert back.message("the message queued while away").payload == b"queued while away"
    mqtt_client(V5).publish(t, b"live", qos=1)
    assert back.message("a message to the resumed subscription").payload == b"live"
    # Expiry 0: the session ends with this connection.
    back.disconnect()
    poll(session_queue_gone(conn, cid), "the session's queue to be deleted", pause=lambda: conn.sleep(0.05))
    again = mqtt_client(V5, cid, **persistent(V5))
    assert again.connect_result[0] is False


def test_a_session_inside_its_expiry_is_resumed_and_disconnect_can_shorten_it(mqtt_client, conn):
    cid, t = unique("within"), topic("within")
    c = mqtt_client(V5, cid, **persistent(V5, expiry=600))
    c.subscribe(t, 1)
    c.disconnect()
    back = mqtt_client(V5, cid, **persistent(V5, expiry=600))
    assert back.connect_result[0] is True
    # DISCONNECT may change the expiry: 0 ends the session at once.
    back.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    poll(session_queue_gone(conn, cid), "the session's queue to be deleted", pause=lambda: conn.sleep(0.05))
    again = mqtt_client(V5, cid, **persistent(V5))
    assert again.connect_result[0] is False

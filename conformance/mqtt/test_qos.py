"""QoS 0, 1 and 2 both ways, QoS 2 exactly once, Receive Maximum both
ways, and packet ids used again once their flow is complete."""

from __future__ import annotations

import pytest

from conformance.mqtt import wire
from conformance.mqtt.conftest import LEVEL, V5, VERSIONS, props, topic
from conformance.support import unique
from paho.mqtt.packettypes import PacketTypes


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("pub_qos, sub_qos", [(0, 0), (1, 1), (2, 2), (2, 1), (1, 2), (0, 2), (2, 0)])
def test_delivery_qos_is_the_lower_of_publish_and_subscription(mqtt_client, version, pub_qos, sub_qos):
    t = topic("qos")
    sub = mqtt_client(version)
    assert sub.subscribe(t, sub_qos) == [sub_qos]
    pub = mqtt_client(version)
    assert pub.publish(t, b"payload", qos=pub_qos) == 0
    m = sub.message(f"the QoS {pub_qos} publish")
    assert (m.payload, m.qos) == (b"payload", min(pub_qos, sub_qos))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_resent_qos2_publish_is_delivered_once(mqtt_client, raw, version):
    t = topic("once")
    sub = mqtt_client(version)
    # QoS 1 toward the subscriber: paho hands a QoS 2 message over only at
    # PUBREL, which could reorder it after the marker.
    sub.subscribe(t, 1)
    r = raw(LEVEL[version])
    r.connect(unique("q2"))
    level = LEVEL[version]
    r.send(wire.publish(t, b"exactly once", qos=2, packet_id=9, version=level))
    assert r.expect(wire.PUBREC).packet_id == 9
    # The PUBREC went missing, as far as the client knows: it sends again.
    r.send(wire.publish(t, b"exactly once", qos=2, packet_id=9, dup=True, version=level))
    assert r.expect(wire.PUBREC, "PUBREC for the resent PUBLISH").packet_id == 9
    r.send(wire.ack(wire.PUBREL, 9))
    comp = r.expect(wire.PUBCOMP)
    assert (comp.packet_id, comp.reason) == (9, 0)
    r.send(wire.publish(t, b"marker", qos=1, packet_id=10, version=level))
    r.expect(wire.PUBACK)
    assert sub.message("the QoS 2 message").payload == b"exactly once"
    assert sub.message("the marker").payload == b"marker", "the resent QoS 2 PUBLISH was delivered twice"


@pytest.mark.parametrize("version", VERSIONS)
def test_qos2_to_a_client_that_reconnects_after_pubrec_resends_pubrel_only(mqtt_client, raw, version):
    t, cid, level = topic("rel"), unique("rel"), LEVEL[version]
    expiry = wire.properties(session_expiry=300) if version == V5 else None
    r = raw(level)
    r.connect(cid, clean=False, props=expiry)
    r.send(wire.subscribe(1, [(t, 2)], version=level))
    r.expect(wire.SUBACK)
    mqtt_client(version).publish(t, b"q2", qos=2)
    p = r.expect(wire.PUBLISH)
    assert (p.qos, p.payload) == (2, b"q2")
    r.send(wire.ack(wire.PUBREC, p.packet_id))
    assert r.expect(wire.PUBREL).packet_id == p.packet_id
    r.close()  # before PUBCOMP
    again = raw(level)
    assert again.connect(cid, clean=False, props=expiry).session_present
    rel = again.expect(wire.PUBREL, "PUBREL resent on reconnect")
    assert rel.packet_id == p.packet_id
    again.send(wire.ack(wire.PUBCOMP, rel.packet_id))
    mqtt_client(version).publish(t, b"next", qos=2)
    nxt = again.expect(wire.PUBLISH, "the next message, not the first again")
    assert nxt.payload == b"next"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [1, 2])
def test_packet_ids_are_used_again_after_their_flow_completes(mqtt_client, raw, version, qos):
    t, level = topic("reuse"), LEVEL[version]
    sub = mqtt_client(version)
    sub.subscribe(t, qos)
    r = raw(level)
    r.connect(unique("reuse"))
    for body in (b"first", b"second", b"third"):
        r.send(wire.publish(t, body, qos=qos, packet_id=1, version=level))
        if qos == 1:
            assert r.expect(wire.PUBACK).packet_id == 1
        else:
            assert r.expect(wire.PUBREC).packet_id == 1
            r.send(wire.ack(wire.PUBREL, 1))
            assert r.expect(wire.PUBCOMP).reason == 0
        assert sub.message(f"{body!r} under packet id 1").payload == body


def test_the_broker_keeps_to_the_clients_receive_maximum(mqtt_client):
    t = topic("rm")
    sub = mqtt_client(V5, manual_ack=True, properties=props(PacketTypes.CONNECT, ReceiveMaximum=2))
    sub.subscribe(t, 1)
    pub = mqtt_client(V5)
    for i in range(6):
        pub.publish(t, str(i).encode(), qos=1)
    got = [sub.message(f"message {i} within the window") for i in range(2)]
    # Everything is queued for the subscriber now; two round trips give
    # any delivery beyond the window time to show itself.
    sub.round_trip()
    sub.round_trip()
    assert sub.events.count("message") == 0, "more than Receive Maximum unacknowledged"
    for i in range(2, 6):
        sub.c.ack(got[0].mid, 1)
        got.pop(0)
        got.append(sub.message(f"message {i} after an ack"))
        sub.round_trip()
        assert sub.events.count("message") == 0, "more than Receive Maximum unacknowledged"
    for m in got:
        sub.c.ack(m.mid, 1)


def test_the_broker_announces_its_receive_maximum(mqtt_client):
    c = mqtt_client(V5)
    _, _, p = c.connect_result
    assert p.ReceiveMaximum == 1024

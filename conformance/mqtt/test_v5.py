"""MQTT 5 only: reason codes and reason strings, user properties, content
type, request / response, message expiry, topic aliases both ways,
Maximum Packet Size toward the client."""

from __future__ import annotations

import pika

from conformance.mqtt import wire
from conformance.mqtt.conftest import V5, props, topic
from conformance.support import deadline_for, unique
from paho.mqtt.packettypes import PacketTypes


def test_puback_and_pubrec_say_when_no_one_subscribed(mqtt_client, raw):
    c = mqtt_client(V5)
    assert c.publish(topic("nobody"), b"x", qos=1) == 0x10
    r = raw(5)
    r.connect(unique("nobody"))
    r.send(wire.publish(topic("nobody"), b"x", qos=2, packet_id=5))
    rec = r.expect(wire.PUBREC)
    assert (rec.packet_id, rec.reason) == (5, 0x10)
    r.send(wire.ack(wire.PUBREL, 5))
    assert r.expect(wire.PUBCOMP).reason == 0


def test_pubcomp_for_an_unknown_packet_id_has_a_reason_code_and_string(raw):
    r = raw(5)
    r.connect(unique("rel"))
    r.send(wire.ack(wire.PUBREL, 77))
    comp = r.expect(wire.PUBCOMP)
    assert (comp.packet_id, comp.reason) == (77, 0x92)
    assert comp.props.get("reason_string"), comp


def test_no_reason_strings_on_acks_when_the_client_asks_for_no_problem_information(raw):
    r = raw(5)
    r.connect(unique("quiet"), props=wire.properties(request_problem_info=0))
    r.send(wire.ack(wire.PUBREL, 78))
    comp = r.expect(wire.PUBCOMP)
    assert comp.reason == 0x92 and "reason_string" not in comp.props
    r.send(wire.subscribe(1, [("a/#/b", 0)]))
    ack = r.expect(wire.SUBACK)
    assert ack.codes == [0x8F] and "reason_string" not in ack.props


def test_user_properties_content_type_and_payload_format_travel_unchanged(mqtt_client):
    t = topic("props")
    sub, pub = mqtt_client(V5), mqtt_client(V5)
    sub.subscribe(t, 1)
    user = [("site", "north"), ("tag", "a"), ("tag", "b"), ("empty", "")]
    p = props(UserProperty=user, ContentType="application/json", PayloadFormatIndicator=1)
    pub.publish(t, b'{"t": 21.5}', qos=1, properties=p)
    m = sub.message()
    assert m.payload == b'{"t": 21.5}'
    assert m.properties.ContentType == "application/json"
    assert m.properties.PayloadFormatIndicator == 1
    assert sorted(m.properties.UserProperty) == sorted(user)
    assert [v for k, v in m.properties.UserProperty if k == "tag"] == ["a", "b"], "repeated names keep their order"


def test_request_response_with_response_topic_and_correlation_data(mqtt_client):
    service, replies = topic("svc"), topic("reply")
    requester, responder = mqtt_client(V5), mqtt_client(V5)
    responder.subscribe(service, 1)
    requester.subscribe(replies, 1)
    for corr in (b"req-1", b"\x00\xffbinary"):
        requester.publish(service, b"ping", qos=1, properties=props(ResponseTopic=replies, CorrelationData=corr))
        req = responder.message("the request")
        assert (req.properties.ResponseTopic, req.properties.CorrelationData) == (replies, corr)
        responder.publish(
            req.properties.ResponseTopic, b"pong", qos=1, properties=props(CorrelationData=req.properties.CorrelationData)
        )
        reply = requester.message("the reply")
        assert (reply.topic, reply.payload, reply.properties.CorrelationData) == (replies, b"pong", corr)


def test_message_expiry_is_counted_down_and_an_expired_message_is_not_delivered(mqtt_client, conn):
    cid, t = unique("exp"), topic("exp")
    persistent = {"clean": False, "properties": props(PacketTypes.CONNECT, SessionExpiryInterval=300)}
    c = mqtt_client(V5, cid, **persistent)
    c.subscribe(t, 1)
    c.disconnect()
    # An AMQP queue on the same key dead-letters its copy when it expires:
    # the event that says the message's time is up.
    ch = conn.channel()
    dlq = ch.queue_declare(queue="", exclusive=True).method.queue
    watch = ch.queue_declare(
        queue="", exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    ).method.queue
    ch.queue_bind(watch, "amq.topic", t.replace("/", "."))
    pub = mqtt_client(V5)
    pub.publish(t, b"short-lived", qos=1, properties=props(MessageExpiryInterval=1))
    pub.publish(t, b"long-lived", qos=1, properties=props(MessageExpiryInterval=3600))
    expired = []
    ch.basic_consume(dlq, lambda c_, m, p, b: expired.append(b), auto_ack=True)
    left = deadline_for("the 1 s message to expire on the AMQP side")
    while not expired:
        conn.process_data_events(time_limit=min(0.05, left()))
    assert expired == [b"short-lived"]
    back = mqtt_client(V5, cid, **persistent)
    m = back.message("the message that has not expired")
    assert m.payload == b"long-lived"
    assert 3500 < m.properties.MessageExpiryInterval <= 3600, "the expiry is counted down, not reset"
    marker = topic("marker")
    back.subscribe(marker, 0)
    pub.publish(marker, b"", qos=1)
    assert back.message("the marker").topic == marker, "the expired message was delivered"


def test_topic_aliases_from_the_client(mqtt_client, raw):
    base = topic("alias")
    sub = mqtt_client(V5)
    sub.subscribe(f"{base}/#", 1)
    r = raw(5)
    ack = r.connect(unique("alias"))
    assert ack.props["topic_alias_maximum"] == 64
    r.send(wire.publish(f"{base}/a", b"1", qos=1, packet_id=1, props=wire.properties(topic_alias=1)))
    r.send(wire.publish("", b"2", qos=1, packet_id=2, props=wire.properties(topic_alias=1)))
    # An alias set again points at the new topic.
    r.send(wire.publish(f"{base}/b", b"3", qos=1, packet_id=3, props=wire.properties(topic_alias=1)))
    r.send(wire.publish("", b"4", qos=1, packet_id=4, props=wire.properties(topic_alias=1)))
    for i in range(4):
        r.expect(wire.PUBACK)
    got = [(m.topic, m.payload) for m in (sub.message() for _ in range(4))]
    assert got == [(f"{base}/a", b"1"), (f"{base}/a", b"2"), (f"{base}/b", b"3"), (f"{base}/b", b"4")]


def test_topic_aliases_above_the_maximum_or_unset_end_the_connection(raw):
    for alias, topic_name, code in ((65, "x/y", 0x94), (9, "", 0x82)):
        r = raw(5)
        r.connect(unique("badalias"))
        r.send(wire.publish(topic_name, b"", props=wire.properties(topic_alias=alias)))
        seen = r.expect_eof(f"DISCONNECT for topic alias {alias}")
        assert [(p.kind, p.reason) for p in seen] == [(wire.DISCONNECT, code)], (alias, seen)
        assert seen[0].props.get("reason_string")


def test_topic_alias_zero_is_topic_alias_invalid(raw):
    r = raw(5)
    r.connect(unique("alias0"))
    r.send(wire.publish("x/y", b"", props=wire.properties(topic_alias=0)))
    seen = r.expect_eof("DISCONNECT for topic alias 0")
    assert [(p.kind, p.reason) for p in seen] == [(wire.DISCONNECT, 0x94)], seen


def test_topic_aliases_toward_the_client_up_to_its_maximum(mqtt_client, raw):
    base = topic("out")
    r = raw(5)
    r.connect(unique("aliased"), props=wire.properties(topic_alias_maximum=2))
    r.send(wire.subscribe(1, [(f"{base}/+", 0)]))
    r.expect(wire.SUBACK)
    pub = mqtt_client(V5)
    for n in ("a", "a", "b", "c", "c", "b"):
        pub.publish(f"{base}/{n}", n.encode(), qos=1)
    got = []
    for _ in range(6):
        p = r.expect(wire.PUBLISH)
        got.append((p.topic, p.props.get("topic_alias"), p.payload))
    assert got == [
        (f"{base}/a", 1, b"a"),
        ("", 1, b"a"),
        (f"{base}/b", 2, b"b"),
        (f"{base}/c", None, b"c"),  # the client allows two aliases
        (f"{base}/c", None, b"c"),
        ("", 2, b"b"),
    ]
    # A client that allows none gets none (paho resolves aliases itself).
    plain = raw(5)
    plain.connect(unique("unaliased"))
    plain.send(wire.subscribe(1, [(f"{base}/+", 0)]))
    plain.expect(wire.SUBACK)
    pub.publish(f"{base}/a", b"a", qos=1)
    p = plain.expect(wire.PUBLISH)
    assert (p.topic, "topic_alias" in p.props) == (f"{base}/a", False)


def test_a_message_over_the_clients_maximum_packet_size_is_skipped(mqtt_client):
    t = topic("big")
    sub = mqtt_client(V5, properties=props(PacketTypes.CONNECT, MaximumPacketSize=512))
    sub.subscribe(t, 1)
    pub = mqtt_client(V5)
    pub.publish(t, b"x" * 1000, qos=1)
    pub.publish(t, b"small", qos=1)
    assert sub.message("the message that fits").payload == b"small"


def test_the_connack_announces_what_the_broker_supports(raw):
    r = raw(5)
    ack = r.connect(unique("caps"))
    p = ack.props
    assert p["maximum_packet_size"] == 16 * 1024 * 1024 + 64 * 1024
    assert p["receive_maximum"] == 1024 and p["topic_alias_maximum"] == 64
    assert p.get("retain_available", 1) == 1 and p.get("shared_available", 1) == 1
    assert p.get("wildcard_available", 1) == 1 and p.get("subscription_ids_available", 1) == 1
    assert "server_keep_alive" not in p, "no server keepalive unless configured"


def test_disconnect_from_the_client_with_a_reason_ends_cleanly(mqtt_client):
    c = mqtt_client(V5)
    c.c.disconnect(reasoncode=None, properties=props(PacketTypes.DISCONNECT, ReasonString="bye"))
    rc, _ = c.disconnected()
    assert rc.value == 0


def test_an_amqp_expiration_becomes_the_message_expiry_interval(mqtt_client, ch):
    t = topic("ttl")
    sub = mqtt_client(V5)
    sub.subscribe(t, 1)
    ch.basic_publish("amq.topic", t.replace("/", "."), b"x", pika.BasicProperties(expiration="60000"))
    m = sub.message()
    assert 59 <= m.properties.MessageExpiryInterval <= 60


"""MQTT with AMQP (pika) and STOMP (stomp.py) through one broker, per
DESIGN.md's mapping: topics `/` <-> `.` on amq.topic, and properties and
headers carried both ways."""

from __future__ import annotations

import pika
import pytest

from conformance.mqtt.conftest import V5, VERSIONS, props, topic
from conformance.stomp.conftest import open_client
from conformance.support import pump, unique


def amqp_queue_on(ch, key: str) -> str:
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", key)
    return q


def amqp_get(conn, ch, q):
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, p, b)), auto_ack=True)
    pump(conn, lambda: got, f"a message on AMQP queue {q}")
    return got[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_an_mqtt_publish_reaches_an_amqp_queue_bound_with_dots(mqtt_client, conn, ch, version):
    plant = unique("plant").replace("-", "")
    q = amqp_queue_on(ch, f"{plant}.3.temp")
    mqtt_client(version).publish(f"{plant}/3/temp", b"21.5", qos=1)
    method, p, body = amqp_get(conn, ch, q)
    assert (method.exchange, method.routing_key, body) == ("amq.topic", f"{plant}.3.temp", b"21.5")
    assert p.delivery_mode == 2, "QoS 1 is persistent"
    assert p.headers["x-mqtt-publish-qos"] == 1


def test_dots_and_slashes_swap_both_ways(mqtt_client, conn, ch):
    u = unique("v").replace("-", "")
    q = amqp_queue_on(ch, f"{u}/2.x")
    sub = mqtt_client(V5)
    sub.subscribe(f"{u}.2/x", 0)
    mqtt_client(V5).publish(f"{u}.2/x", b"v1.2", qos=1)
    method, _, _ = amqp_get(conn, ch, q)
    assert method.routing_key == f"{u}/2.x"
    assert sub.message().topic == f"{u}.2/x"


def test_mqtt5_properties_become_amqp_properties_and_headers(mqtt_client, conn, ch):
    t = topic("props")
    q = amqp_queue_on(ch, t.replace("/", "."))
    reply = topic("reply")
    p = props(
        ContentType="application/json",
        CorrelationData=b"corr-42",
        ResponseTopic=reply,
        MessageExpiryInterval=60,
        UserProperty=[("site", "north"), ("tag", "a"), ("tag", "b")],
    )
    mqtt_client(V5).publish(t, b"{}", qos=1, properties=p)
    _, props_, body = amqp_get(conn, ch, q)
    assert body == b"{}"
    assert props_.content_type == "application/json"
    assert props_.correlation_id == "corr-42"
    assert props_.expiration == "60000"
    assert props_.headers["x-reply-to-topic"] == reply.replace("/", ".")
    assert props_.headers["site"] == "north"
    assert props_.headers["tag"] == ["a", "b"]


def test_binary_correlation_data_travels_as_a_header(mqtt_client, conn, ch):
    t = topic("corr")
    q = amqp_queue_on(ch, t.replace("/", "."))
    mqtt_client(V5).publish(t, b"x", qos=1, properties=props(CorrelationData=b"\x00\xff\x10"))
    _, p, _ = amqp_get(conn, ch, q)
    assert p.correlation_id is None
    assert p.headers["x-correlation-id"] == b"\x00\xff\x10"


@pytest.mark.parametrize("version", VERSIONS)
def test_an_amqp_publish_to_amq_topic_reaches_mqtt_subscribers(mqtt_client, ch, version):
    t = topic("fromamqp")
    sub = mqtt_client(version)
    sub.subscribe(t.rsplit("/", 1)[0] + "/#", 2)
    ch.basic_publish("amq.topic", t.replace("/", "."), b"hello", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("amq.topic", t.replace("/", "."), b"transient")
    a, b = sub.message(), sub.message()
    assert (a.topic, a.payload, a.qos) == (t, b"hello", 1), "persistent is QoS 1"
    assert (b.payload, b.qos) == (b"transient", 0)


def test_amqp_properties_and_headers_become_mqtt5_properties(mqtt_client, ch):
    t = topic("toprops")
    sub = mqtt_client(V5)
    sub.subscribe(t, 1)
    reply = topic("reply")
    ch.basic_publish(
        "amq.topic",
        t.replace("/", "."),
        b"body",
        pika.BasicProperties(
            content_type="text/plain",
            correlation_id="c-7",
            reply_to="amq.gen-requester",
            expiration="30000",
            message_id="m-1",
            headers={"x-reply-to-topic": reply.replace("/", "."), "site": "north", "n": 3, "ok": True},
        ),
    )
    m = sub.message()
    p = m.properties
    assert m.payload == b"body"
    assert p.ContentType == "text/plain"
    assert p.CorrelationData == b"c-7"
    assert p.ResponseTopic == reply
    assert 29 <= p.MessageExpiryInterval <= 30
    user = dict(p.UserProperty)
    assert (user["site"], user["n"], user["ok"]) == ("north", "3", "true")
    assert (user["reply-to"], user["message-id"]) == ("amq.gen-requester", "m-1")


def test_an_amqp_responder_answers_an_mqtt_requester(mqtt_client, conn, ch):
    service = unique("service").replace("-", "")
    q = amqp_queue_on(ch, f"{service}.req")
    replies = topic("replies")
    requester = mqtt_client(V5)
    requester.subscribe(replies, 1)
    requester.publish(f"{service}/req", b"ping", qos=1, properties=props(ResponseTopic=replies, CorrelationData=b"r1"))
    _, p, _ = amqp_get(conn, ch, q)
    ch.basic_publish(
        "amq.topic", p.headers["x-reply-to-topic"], b"pong", pika.BasicProperties(correlation_id=p.correlation_id)
    )
    m = requester.message("the AMQP reply")
    assert (m.topic, m.payload, m.properties.CorrelationData) == (replies, b"pong", b"r1")


@pytest.fixture
def stomp(broker):
    opened = []

    def open_one(version="1.2"):
        c = open_client(broker, version)
        opened.append(c)
        return c

    yield open_one
    for c in opened:
        if c.conn.is_connected():
            c.conn.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_stomp_send_to_a_topic_reaches_mqtt_with_headers_as_user_properties(mqtt_client, stomp, version):
    x = unique("x").replace("-", "")
    sub = mqtt_client(version)
    sub.subscribe(f"{x}/y", 1)
    s = stomp()
    s.receipted(s.conn.send, f"/topic/{x}.y", "from stomp", headers={"x-site": "north", "persistent": "true"})
    m = sub.message("the STOMP message")
    assert (m.topic, m.payload, m.qos) == (f"{x}/y", b"from stomp", 1)
    if version == V5:
        assert dict(m.properties.UserProperty)["x-site"] == "north"


def test_an_mqtt_publish_reaches_a_stomp_subscriber_with_user_properties_as_headers(mqtt_client, stomp):
    x = unique("x").replace("-", "")
    s = stomp()
    s.subscribe(f"/topic/{x}.y", "s1")
    p = props(UserProperty=[("x-site", "south")], ContentType="text/plain", CorrelationData=b"c-9")
    mqtt_client(V5).publish(f"{x}/y", b"from mqtt", qos=1, properties=p)
    frame = s.events.message("the MQTT message over STOMP")
    h = frame.headers
    assert frame.body == "from mqtt"
    assert h["destination"] == f"/topic/{x}.y"
    assert (h["x-site"], h["content-type"], h["correlation-id"]) == ("south", "text/plain", "c-9")
    assert h["persistent"] == "true"


def test_stomp_and_mqtt_wildcards_meet(mqtt_client, stomp):
    x = unique("x").replace("-", "")
    s = stomp()
    s.subscribe(f"/topic/{x}.*.t", "s1")
    sub = mqtt_client(V5)
    sub.subscribe(f"{x}/#", 0)
    mqtt_client(V5).publish(f"{x}/3/t", b"m", qos=1)
    s2 = stomp()
    s2.receipted(s2.conn.send, f"/topic/{x}.4.t", "s")
    assert sorted([s.events.message().body, s.events.message().body]) == ["m", "s"]
    got = sorted([sub.message().payload, sub.message().payload])
    assert got == [b"m", b"s"]

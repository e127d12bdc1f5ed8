"""STOMP and AMQP through one broker: stomp.py on one side, pika on the
other, properties and headers carried both ways (DESIGN.md's table)."""

from __future__ import annotations

import pika

from conformance.support import pump, unique


def test_stomp_send_to_a_topic_reaches_a_pika_queue_on_amq_topic(stomp_client, ch):
    key = unique("a").replace("-", "") + ".b"
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", key)
    c = stomp_client("1.2")
    headers = {
        "content-type": "application/json",
        "correlation-id": "corr-1",
        "reply-to": "/queue/replies",
        "expiration": "60000",
        "priority": "4",
        "persistent": "true",
        "x-trace": "t-1",
    }
    c.receipted(c.conn.send, f"/topic/{key}", '{"n": 1}', headers=headers)
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b'{"n": 1}'
    assert (method.exchange, method.routing_key) == ("amq.topic", key)
    assert props.content_type == "application/json"
    assert props.correlation_id == "corr-1"
    assert props.reply_to == "/queue/replies"
    assert props.expiration == "60000"
    assert props.priority == 4
    assert props.delivery_mode == 2
    assert props.headers["x-trace"] == "t-1"


def test_a_pika_publish_reaches_a_stomp_subscriber_with_its_properties(stomp_client, ch):
    key = unique("sensor").replace("-", "") + ".t1"
    c = stomp_client("1.1")
    c.subscribe(f"/topic/{key}", "s")
    props = pika.BasicProperties(
        content_type="text/plain",
        correlation_id="c-7",
        reply_to="amq.gen-requester",
        priority=3,
        delivery_mode=2,
        message_id="app-1",
        headers={"x-site": "north", "reading": -12, "ok": True},
    )
    ch.basic_publish("amq.topic", key, b"21.5", props)
    m = c.events.message("the AMQP message")
    h = m.headers
    assert m.body == "21.5"
    assert h["destination"] == f"/topic/{key}"
    assert h["content-type"] == "text/plain"
    assert h["correlation-id"] == "c-7"
    assert h["reply-to"] == "/reply-queue/amq.gen-requester"
    assert (h["priority"], h["persistent"], h["amqp-message-id"]) == ("3", "true", "app-1")
    assert (h["x-site"], h["reading"], h["ok"]) == ("north", "-12", "true")


def test_a_stomp_requester_and_a_pika_responder(stomp_client, conn, ch):
    service = unique("service")
    ch.queue_declare(queue=service, exclusive=True)
    c = stomp_client("1.2")
    c.receipted(c.conn.send, f"/queue/{service}", "ping", headers={"reply-to": "/temp-queue/r", "correlation-id": "q"})
    method, props, body = ch.basic_get(service, auto_ack=True)
    assert body == b"ping" and props.reply_to.startswith("amq.gen-")
    ch.basic_publish("", props.reply_to, b"pong", pika.BasicProperties(correlation_id=props.correlation_id))
    reply = c.events.message("the AMQP reply")
    assert (reply.body, reply.headers["correlation-id"], reply.headers["subscription"]) == ("pong", "q", "/temp-queue/r")


def test_a_pika_requester_and_a_stomp_responder(stomp_client, conn, ch):
    service = unique("stomp-service")
    responder = stomp_client("1.2")
    responder.subscribe(f"/queue/{service}", "s")
    replies = ch.queue_declare(queue="", exclusive=True).method.queue
    got = []
    ch.basic_consume(replies, lambda *a: got.append(a[3]), auto_ack=True)
    ch.basic_publish("", service, b"ping", pika.BasicProperties(reply_to=replies))
    request = responder.events.message("the AMQP request")
    responder.conn.send(request.headers["reply-to"], "pong")
    pump(conn, lambda: got, "the STOMP reply over AMQP")
    assert got == [b"pong"]

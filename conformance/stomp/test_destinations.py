"""stomp.py with RabbitMQ's and ActiveMQ's destinations: topics and their
wildcards, exchanges, existing queues, temp queues for request/response,
durable topic subscriptions, queue headers."""

from __future__ import annotations

import pytest

from conformance.support import unique


@pytest.mark.parametrize("pattern", ["#", ">"])
def test_topic_wildcards_including_activemq_greater_than(stomp_client, pattern):
    root = unique("t").replace("-", "")
    c = stomp_client("1.2")
    c.subscribe(f"/topic/{root}.*", "star")
    c.subscribe(f"/topic/{root}.{pattern}", "many")
    c.conn.send(f"/topic/{root}.a", "one")
    c.conn.send(f"/topic/{root}.a.b", "two")
    got = sorted((m.headers["subscription"], m.body) for m in [c.events.message() for _ in range(3)])
    assert got == [("many", "one"), ("many", "two"), ("star", "one")]


def test_each_topic_subscriber_gets_every_message(stomp_client):
    topic = f"/topic/{unique('fan')}"
    a, b = stomp_client("1.1"), stomp_client("1.2")
    a.subscribe(topic, "a")
    b.subscribe(topic, "b")
    a.conn.send(topic, "to all")
    assert a.events.message().body == "to all"
    assert b.events.message().body == "to all"


def test_exchange_destinations(stomp_client):
    c = stomp_client("1.2")
    c.subscribe("/exchange/amq.direct/" + unique("k"), "wrong")
    key = unique("k")
    c.subscribe(f"/exchange/amq.direct/{key}", "right")
    c.conn.send(f"/exchange/amq.direct/{key}", "direct")
    m = c.events.message()
    assert (m.headers["subscription"], m.body) == ("right", "direct")
    assert m.headers["destination"] == f"/exchange/amq.direct/{key}"


def test_amq_queue_needs_an_existing_queue(stomp_client):
    c = stomp_client("1.2")
    c.conn.subscribe(f"/amq/queue/{unique('absent')}", "s")
    e = c.events.error()
    assert e.headers["message"] == "not_found"
    c.events.closed()


def test_temp_queue_request_response(stomp_client):
    service = f"/queue/{unique('service')}"
    responder, requester = stomp_client("1.2"), stomp_client("1.1")
    responder.subscribe(service, "requests")
    requester.conn.send(service, "ping", headers={"reply-to": "/temp-queue/answers", "correlation-id": "7"})
    request = responder.events.message("the request")
    assert request.headers["reply-to"].startswith("/reply-queue/")
    responder.conn.send(request.headers["reply-to"], "pong", headers={"correlation-id": "7"})
    reply = requester.events.message("the reply")
    assert (reply.body, reply.headers["correlation-id"]) == ("pong", "7")
    assert reply.headers["subscription"] == "/temp-queue/answers"


def test_rabbitmq_durable_topic_subscription(stomp_client):
    topic = f"/topic/{unique('news')}"
    durable = {"durable": "true", "auto-delete": "false"}
    c = stomp_client("1.2")
    c.subscribe(topic, "reader", **durable)
    c.conn.disconnect(receipt="away")
    c.events.receipt("away")
    sender = stomp_client("1.2")
    sender.receipted(sender.conn.send, topic, "while away")
    c = stomp_client("1.2")
    c.subscribe(topic, "reader", **durable)
    assert c.events.message("the message kept for the durable subscriber").body == "while away"
    c.receipted(c.conn.unsubscribe, "reader", headers={"durable": "true"})


def test_activemq_durable_subscription(stomp_client):
    topic = f"/topic/{unique('events')}"
    client_id = unique("app")
    named = {"activemq.subscriptionName": "audit"}
    c = stomp_client("1.1", **{"client-id": client_id})
    c.subscribe(topic, "1", **named)
    c.conn.disconnect(receipt="away")
    c.events.receipt("away")
    sender = stomp_client("1.2")
    sender.receipted(sender.conn.send, topic, "missed")
    c = stomp_client("1.1", **{"client-id": client_id})
    c.subscribe(topic, "2", **named)
    assert c.events.message("the message kept for the ActiveMQ durable subscriber").body == "missed"


def test_queue_headers_and_x_arguments(stomp_client):
    queue = f"/queue/{unique('bounded')}"
    shape = {"x-max-length": "1", "durable": "false"}
    c = stomp_client("1.2")
    for body in ["old", "new"]:
        c.receipted(c.conn.send, queue, body, headers=shape)
    c.subscribe(queue, "s", **shape)
    assert c.events.message("the newest, the head having been dropped").body == "new"
    c.receipted(c.conn.send, queue, "marker", headers=shape)
    c.events.no_message("marker")


def test_exclusive_queue_is_refused_to_others(stomp_client):
    queue = unique("mine")
    owner, other = stomp_client("1.2"), stomp_client("1.2")
    owner.subscribe(f"/queue/{queue}", "m", exclusive="true")
    other.conn.subscribe(f"/amq/queue/{queue}", "o")
    assert other.events.error().headers["message"] == "resource_locked"

"""A second client, py-amqp, over the essentials: handshake, publish /
consume / ack, confirms, and error scopes. Clients differ in what they
send (py-amqp announces other capabilities, frames differently, reads
methods synchronously), so agreeing with two is worth more than one."""

from __future__ import annotations

import amqp
import pytest

from conformance.support import WAIT, deadline_for, unique


@pytest.fixture
def connection(broker):
    c = amqp.Connection(f"{broker.host}:{broker.port}", confirm_publish=True)
    c.connect()
    yield c
    if c.connected:
        c.close()


def drain_until(conn, until, what):
    left = deadline_for(what)
    while not until():
        try:
            conn.drain_events(timeout=min(0.1, left()))
        except TimeoutError:
            pass


def test_handshake_negotiates_and_reports_the_server(connection):
    assert connection.connected
    assert connection.server_properties["product"] == "ferrymq"
    assert connection.server_capabilities["publisher_confirms"] is True
    assert connection.frame_max == 131072


def test_publish_consume_ack(connection):
    ch = connection.channel()
    q, _, _ = ch.queue_declare(unique("pa"), exclusive=True)
    for i in range(5):
        ch.basic_publish(amqp.Message(f"m{i}", content_type="text/plain", application_headers={"i": i}), "", q)
    got = []

    def on_message(m):
        got.append(m)
        m.channel.basic_ack(m.delivery_tag)

    ch.basic_qos(0, 2, False)
    ch.basic_consume(q, callback=on_message)
    drain_until(connection, lambda: len(got) == 5, "five deliveries to py-amqp")
    assert [m.body for m in got] == [f"m{i}" for i in range(5)]
    assert [m.properties["application_headers"]["i"] for m in got] == list(range(5))
    assert got[0].content_type == "text/plain"
    assert ch.queue_declare(q, passive=True).message_count == 0


def test_unacked_messages_return_when_the_channel_closes(connection):
    ch = connection.channel()
    q, _, _ = ch.queue_declare(unique("pa"), exclusive=True)
    ch.basic_publish(amqp.Message("once"), "", q)
    msg = ch.basic_get(q, no_ack=False)
    assert msg.body == "once" and not msg.delivery_info["redelivered"]
    ch.close()
    ch = connection.channel()
    again = ch.basic_get(q, no_ack=True)
    assert again.body == "once" and again.delivery_info["redelivered"]


def test_confirms_ack_and_nack(connection):
    ch = connection.channel()
    q, _, _ = ch.queue_declare(
        unique("pa"), exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    ch.basic_publish(amqp.Message("fits"), "", q, confirm_timeout=WAIT)
    with pytest.raises(amqp.exceptions.MessageNacked):
        ch.basic_publish(amqp.Message("refused"), "", q, confirm_timeout=WAIT)


def test_mandatory_return(connection):
    ch = connection.channel()
    returned = []
    ch.events["basic_return"].add(lambda *args: returned.append(args))
    ch.basic_publish(amqp.Message("nobody"), "amq.direct", unique("k"), mandatory=True, confirm_timeout=WAIT)
    drain_until(connection, lambda: returned, "basic.return")
    exc = returned[0][0]
    assert exc.reply_code == 312


def test_channel_error_leaves_the_connection_usable(connection):
    ch = connection.channel()
    with pytest.raises(amqp.exceptions.NotFound) as e:
        ch.queue_declare(unique("missing"), passive=True)
    assert e.value.reply_code == 404
    with pytest.raises(amqp.exceptions.PreconditionFailed):
        c2 = connection.channel()
        c2.queue_declare(unique("q"), exclusive=True, arguments={"x-max-length": "nope"})
    ch = connection.channel()
    q, _, _ = ch.queue_declare("", exclusive=True)
    ch.basic_publish(amqp.Message("ok"), "", q)
    assert ch.basic_get(q, no_ack=True).body == "ok"


def test_exclusive_queue_from_another_connection_is_405(broker, connection):
    q, _, _ = connection.channel().queue_declare(unique("ex"), exclusive=True)
    other = amqp.Connection(f"{broker.host}:{broker.port}")
    other.connect()
    try:
        with pytest.raises(amqp.exceptions.ResourceLocked):
            other.channel().queue_declare(q, passive=True)
        assert other.connected
    finally:
        other.close()


def test_qos_with_a_prefetch_size_is_not_implemented(connection):
    # py-amqp sends prefetch_size as given; RabbitMQ answers 540 too.
    ch = connection.channel()
    with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as e:
        ch.basic_qos(prefetch_size=4096, prefetch_count=10, a_global=False)
    assert e.value.reply_code == 540


def test_connection_error_closes_the_connection(connection):
    ch = connection.channel()
    with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as e:
        ch.basic_publish(amqp.Message("x"), "", "q", immediate=True)
        drain_until(connection, lambda: False, "connection.close for immediate=true")
    assert e.value.reply_code == 540

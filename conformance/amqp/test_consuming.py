"""Consuming: consumer tags, no-ack, exclusive consumers, consumer
priority, prefetch, ack / nack / reject, get, recover, cancel both ways,
direct reply-to."""

from __future__ import annotations

import struct

import amqp
import pika
import pytest

from conformance.support import RawAmqp, basic_consume, channel_error, method, pump, shortstr, unique


class Collector:
    def __init__(self, conn, ch, queue, auto_ack=True, **kw):
        self.conn, self.ch, self.items = conn, ch, []
        self.tag = ch.basic_consume(queue, self._on, auto_ack=auto_ack, **kw)

    def _on(self, ch, method, props, body):
        self.items.append((method, props, body))

    def wait(self, n, what):
        pump(self.conn, lambda: len(self.items) >= n, what)
        return self.items[:n]

    def bodies(self):
        return [b for _, _, b in self.items]


def setup_queue(conn, n=0, prefix="q", **declare):
    ch = conn.channel()
    ch.confirm_delivery()
    declare.setdefault("exclusive", True)
    q = ch.queue_declare(unique(prefix), **declare).method.queue
    for i in range(n):
        ch.basic_publish("", q, str(i).encode())
    return ch, q


def ready(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def test_client_chosen_consumer_tag_is_used(conn):
    _, q = setup_queue(conn, 1)
    ch = conn.channel()
    got = Collector(conn, ch, q, consumer_tag="my-tag")
    assert got.tag == "my-tag"
    method, _, _ = got.wait(1, "a delivery")[0]
    assert method.consumer_tag == "my-tag"


def test_server_generates_a_consumer_tag_when_asked(broker):
    c = amqp.Connection(f"{broker.host}:{broker.port}")
    c.connect()
    try:
        ch = c.channel()
        q, _, _ = ch.queue_declare("", exclusive=True)
        tag = ch.basic_consume(q, consumer_tag="", callback=lambda m: None)
        assert tag.startswith("amq.ctag-"), tag
        other = ch.basic_consume(q, consumer_tag="", callback=lambda m: None)
        assert other != tag
    finally:
        c.close()


def test_no_ack_deliveries_are_settled_when_sent(conn):
    pub, q = setup_queue(conn, 3)
    ch = conn.channel()
    got = Collector(conn, ch, q, auto_ack=True)
    got.wait(3, "three no-ack deliveries")
    ch.close()
    assert ready(pub, q) == 0, "no-ack deliveries came back after the channel closed"


def test_unacked_deliveries_return_when_the_channel_closes(conn):
    pub, q = setup_queue(conn, 3)
    ch = conn.channel()
    got = Collector(conn, ch, q, auto_ack=False)
    got.wait(3, "three deliveries")
    ch.close()
    assert ready(pub, q) == 3
    method, _, body = pub.basic_get(q, auto_ack=True)
    assert body == b"0" and method.redelivered


def test_exclusive_consumer_keeps_others_out(conn):
    _, q = setup_queue(conn)
    ch = conn.channel()
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = conn.channel()
    err = channel_error(other, lambda: other.basic_consume(q, lambda *a: None))
    assert err.reply_code == 403, err


def test_exclusive_consume_on_a_queue_with_consumers_is_refused(conn):
    _, q = setup_queue(conn)
    conn.channel().basic_consume(q, lambda *a: None)
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.basic_consume(q, lambda *a: None, exclusive=True))
    assert err.reply_code == 403, err


def test_consume_from_a_missing_queue_is_404(conn):
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.basic_consume(unique("nq"), lambda *a: None))
    assert err.reply_code == 404, err


def test_higher_priority_consumer_gets_messages_while_it_has_credit(conn):
    pub, q = setup_queue(conn)
    low_ch, high_ch = conn.channel(), conn.channel()
    low_ch.basic_qos(prefetch_count=2)
    high_ch.basic_qos(prefetch_count=2)
    low = Collector(conn, low_ch, q, auto_ack=False, arguments={"x-priority": 1})
    high = Collector(conn, high_ch, q, auto_ack=False, arguments={"x-priority": 10})
    for i in range(4):
        pub.basic_publish("", q, str(i).encode())
    high.wait(2, "two deliveries to the high-priority consumer")
    low.wait(2, "the overflow to the low-priority consumer")
    assert high.bodies() == [b"0", b"1"]
    assert low.bodies() == [b"2", b"3"]


def test_bad_consumer_priority_is_406(conn):
    _, q = setup_queue(conn)
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.basic_consume(q, lambda *a: None, arguments={"x-priority": "high"}))
    assert err.reply_code == 406, err


def test_per_consumer_prefetch_limits_unacked_deliveries(conn):
    pub, q = setup_queue(conn, 5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    got = Collector(conn, ch, q, auto_ack=False)
    got.wait(2, "two deliveries")
    assert ready(pub, q) == 3, "more than the prefetch was delivered"
    assert len(got.items) == 2
    ch.basic_ack(got.items[0][0].delivery_tag)
    got.wait(3, "a third delivery after one ack")
    assert ready(pub, q) == 2


def test_per_consumer_prefetch_applies_to_each_consumer(conn):
    pub, q1 = setup_queue(conn, 5)
    _, q2 = setup_queue(conn, 5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    a = Collector(conn, ch, q1, auto_ack=False)
    b = Collector(conn, ch, q2, auto_ack=False)
    a.wait(2, "two deliveries from q1")
    b.wait(2, "two deliveries from q2")
    assert ready(pub, q1) == 3 and ready(pub, q2) == 3


def test_global_prefetch_is_shared_by_the_channel(conn):
    pub, q1 = setup_queue(conn, 5)
    _, q2 = setup_queue(conn, 5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3, global_qos=True)
    a = Collector(conn, ch, q1, auto_ack=False)
    b = Collector(conn, ch, q2, auto_ack=False)
    pump(conn, lambda: len(a.items) + len(b.items) >= 3, "three deliveries across both consumers")
    assert ready(pub, q1) + ready(pub, q2) == 7, "the shared prefetch of 3 was exceeded"
    first = (a.items or b.items)[0][0]
    ch.basic_ack(first.delivery_tag)
    pump(conn, lambda: len(a.items) + len(b.items) >= 4, "a fourth delivery after one ack")
    assert ready(pub, q1) + ready(pub, q2) == 6


def test_ack_multiple_settles_up_to_the_tag(conn):
    pub, q = setup_queue(conn, 3)
    ch = conn.channel()
    got = Collector(conn, ch, q, auto_ack=False)
    items = got.wait(3, "three deliveries")
    ch.basic_ack(items[1][0].delivery_tag, multiple=True)
    ch.close()
    assert ready(pub, q) == 1
    assert pub.basic_get(q, auto_ack=True)[2] == b"2"


def test_ack_of_an_unknown_tag_is_406(conn):
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.basic_ack(12345))
    assert err.reply_code == 406, err


def test_double_ack_is_406(conn):
    pub, q = setup_queue(conn, 1)
    method, _, _ = pub.basic_get(q)
    pub.basic_ack(method.delivery_tag)
    err = channel_error(pub, lambda: pub.basic_ack(method.delivery_tag))
    assert err.reply_code == 406, err


def test_requeued_message_returns_at_its_original_position(conn):
    pub, q = setup_queue(conn, 5)
    m = [pub.basic_get(q)[0] for _ in range(3)]  # 0, 1, 2 unacked; 3, 4 ready
    pub.basic_reject(m[1].delivery_tag, requeue=True)
    method, _, body = pub.basic_get(q, auto_ack=True)
    assert body == b"1" and method.redelivered
    method, _, body = pub.basic_get(q)
    assert body == b"3" and not method.redelivered
    pub.basic_nack(method.delivery_tag, requeue=True)
    pub.basic_nack(m[2].delivery_tag, requeue=True)
    pub.basic_nack(m[0].delivery_tag, requeue=True)
    order = []
    while True:
        method, _, body = pub.basic_get(q, auto_ack=True)
        if method is None:
            break
        order.append((body, method.redelivered))
    assert order == [(b"0", True), (b"2", True), (b"3", True), (b"4", False)]


def test_consumer_sees_requeued_message_first_with_redelivered(conn):
    pub, q = setup_queue(conn, 3)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    got = Collector(conn, ch, q, auto_ack=False)
    (method, _, body), = got.wait(1, "the first delivery")
    assert body == b"0" and not method.redelivered
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = got.wait(2, "the redelivery")[1]
    assert body == b"0" and method.redelivered


def test_nack_multiple_with_requeue_returns_all_in_order(conn):
    pub, q = setup_queue(conn, 3)
    ch = conn.channel()
    got = Collector(conn, ch, q, auto_ack=False)
    items = got.wait(3, "three deliveries")
    ch.basic_cancel(got.tag)
    ch.basic_nack(items[2][0].delivery_tag, multiple=True, requeue=True)
    out = []
    for _ in range(3):
        method, _, body = pub.basic_get(q, auto_ack=True)
        out.append((body, method.redelivered))
    assert out == [(b"0", True), (b"1", True), (b"2", True)]


def test_nack_with_tag_zero_and_multiple_settles_everything(conn):
    pub, q = setup_queue(conn, 3)
    for _ in range(3):
        pub.basic_get(q)
    pub.basic_nack(0, multiple=True, requeue=False)
    pub.close()
    ch = conn.channel()
    assert ready(ch, q) == 0


def test_reject_without_requeue_discards(conn):
    pub, q = setup_queue(conn, 1)
    method, _, _ = pub.basic_get(q)
    pub.basic_reject(method.delivery_tag, requeue=False)
    pub.close()
    assert ready(conn.channel(), q) == 0


def test_basic_get_and_get_empty(conn):
    ch, q = setup_queue(conn, 2)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"0" and method.message_count == 1
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"1" and method.message_count == 0
    assert ch.basic_get(q) == (None, None, None)


def test_basic_get_from_a_missing_queue_is_404(conn):
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.basic_get(unique("nq")))
    assert err.reply_code == 404, err


def test_recover_redelivers_unacked_messages(conn):
    pub, q = setup_queue(conn, 2)
    ch = conn.channel()
    got = Collector(conn, ch, q, auto_ack=False)
    got.wait(2, "two deliveries")
    ch.basic_recover(requeue=True)
    items = got.wait(4, "both messages redelivered after basic.recover")
    assert [(b, m.redelivered) for m, _, b in items[2:]] == [(b"0", True), (b"1", True)]


def test_cancel_stops_deliveries(conn):
    pub, q = setup_queue(conn)
    ch = conn.channel()
    got = Collector(conn, ch, q)
    pub.basic_publish("", q, b"before")
    got.wait(1, "the delivery before cancel")
    ch.basic_cancel(got.tag)
    pub.basic_publish("", q, b"after")
    assert ready(pub, q) == 1
    conn.process_data_events(time_limit=0)
    assert got.bodies() == [b"before"]


def test_cancel_of_an_unknown_tag_is_answered(conn):
    ch = conn.channel()
    ch._impl.basic_cancel("no-such-tag", callback=lambda *a: None)
    ch.queue_declare("", exclusive=True)  # the channel still works


def test_deleting_the_queue_cancels_its_consumers(connect):
    owner, admin = connect(), connect()
    ch = owner.channel()
    q = unique("cancelled")
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    admin.channel().queue_delete(q)
    pump(owner, lambda: cancelled, "basic.cancel from the broker after the queue was deleted")
    assert cancelled == [tag]
    ch.queue_declare("", exclusive=True)  # the channel survives


def test_direct_reply_to_round_trip(connect):
    client, server = connect(), connect()
    sch = server.channel()
    service = unique("rpc")
    sch.queue_declare(service, exclusive=True)

    def respond(ch, method, props, body):
        ch.basic_publish(
            "", props.reply_to, body.upper(), pika.BasicProperties(correlation_id=props.correlation_id)
        )

    sch.basic_consume(service, respond, auto_ack=True)
    cch = client.channel()
    replies = []
    cch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p, b)), auto_ack=True)
    cch.basic_publish(
        "", service, b"ping", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c-1")
    )
    pump([server, client], lambda: replies, "the reply on amq.rabbitmq.reply-to")
    props, body = replies[0]
    assert body == b"PING" and props.correlation_id == "c-1"
    assert len(replies) == 1


def test_direct_reply_to_needs_no_ack_consumer(conn):
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False))
    assert err.reply_code == 406, err


def test_direct_reply_to_without_a_consumer_is_refused(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    err = channel_error(
        ch, lambda: ch.basic_publish("", q, b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    )
    assert err.reply_code == 406, err


def test_equal_priority_consumers_share_round_robin(conn):
    pub, q = setup_queue(conn)
    a = Collector(conn, conn.channel(), q)
    b = Collector(conn, conn.channel(), q)
    for i in range(6):
        pub.basic_publish("", q, str(i).encode())
    pump(conn, lambda: len(a.items) + len(b.items) == 6, "six deliveries across two consumers")
    assert sorted(a.bodies() + b.bodies()) == [str(i).encode() for i in range(6)]
    assert len(a.items) == 3 and len(b.items) == 3, (a.bodies(), b.bodies())


def test_unacked_deliveries_can_be_acked_after_cancel(conn):
    pub, q = setup_queue(conn, 2)
    ch = conn.channel()
    got = Collector(conn, ch, q, auto_ack=False)
    items = got.wait(2, "two deliveries")
    ch.basic_cancel(got.tag)
    ch.basic_ack(items[0][0].delivery_tag)
    ch.basic_ack(items[1][0].delivery_tag)
    ch.close()
    assert ready(pub, q) == 0


def test_acking_after_the_queue_was_deleted_is_harmless(conn):
    pub, q = setup_queue(conn, 1)
    ch = conn.channel()
    method, _, _ = ch.basic_get(q)
    pub.queue_delete(q)
    ch.basic_ack(method.delivery_tag)
    ch.queue_declare("", exclusive=True)  # the channel is still open


@pytest.mark.parametrize("how", ["socket-dropped", "connection-close-only"])
def test_unacked_deliveries_return_when_the_client_vanishes(broker, conn, how):
    pub, q = setup_queue(conn, 3, exclusive=False)
    raw = RawAmqp(broker.host, broker.port)
    raw.handshake()
    raw.open_channel(1)
    raw.send(basic_consume(1, q, tag="gone"))
    raw.expect_method(60, 21, 1)
    for _ in range(3):
        raw.expect_method(60, 60, 1)  # basic.deliver (its content follows)
        raw.read_frame("content header")
        raw.read_frame("content body")
    if how == "connection-close-only":
        # connection.close with its channel still open (no channel.close first)
        raw.send(method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0)))
        raw.expect_method(10, 51, 0)
    raw.close()  # without connection.close the TCP connection just ends
    got = Collector(conn, conn.channel(), q)
    items = got.wait(3, "the vanished consumer's messages, redelivered")
    assert [(b, m.redelivered) for m, _, b in items] == [(b"0", True), (b"1", True), (b"2", True)]
    pub.queue_delete(q)


def test_large_message_round_trip_through_a_consumer(conn):
    pub, q = setup_queue(conn)
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB
    pub.basic_publish("", q, payload)
    got = Collector(conn, conn.channel(), q)
    ((_, _, body),) = got.wait(1, "the 5 MiB delivery")
    assert body == payload


def test_many_connections_at_once(connect):
    conns = [connect() for _ in range(100)]
    q = conns[0].channel().queue_declare("", exclusive=True).method.queue
    for i, c in enumerate(conns):
        c.channel().basic_publish("", q, str(i).encode())
    ch = conns[0].channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 100


@pytest.mark.parametrize("no_ack", [False, True], ids=["manual-ack", "no-ack"])
def test_cancel_loses_no_message_in_flight(broker, conn, no_ack):
    """basic.cancel sent right behind basic.consume on a deep queue: every
    message is either delivered (before channel.close-ok) or still ready."""
    pub, q = setup_queue(conn, 0, exclusive=False)
    n = 3000
    for _ in range(n):
        pub.basic_publish("", q, b"m")
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake()
        raw.open_channel(1)
        cancel = method(1, 60, 30, shortstr("t") + b"\x00")
        close = method(1, 20, 40, struct.pack(">H", 200) + shortstr("") + struct.pack(">HH", 0, 0))
        raw.send(basic_consume(1, q, tag="t", no_ack=no_ack) + cancel + close)
        delivered = 0
        while True:
            f = raw.read_frame("deliveries, then channel.close-ok")
            if f.method_id == (60, 60):
                delivered += 1
            elif f.method_id == (20, 41):
                break
    finally:
        raw.close()
    left = ready(pub, q)
    pub.queue_delete(q)
    if no_ack:
        assert delivered + left == n, f"{n - delivered - left} of {n} messages vanished"
    else:
        assert left == n, f"{n - left} of {n} unacked messages were not requeued"

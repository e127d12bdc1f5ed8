"""Publishing: mandatory returns, publisher confirms (with multiple acks
and nacks), transactions."""

from __future__ import annotations

import decimal
import struct

import pika
import pytest

from conformance.support import (
    RawAmqp,
    basic_publish,
    body,
    confirm_select,
    content_header,
    frame,
    method,
    pump,
    queue_declare,
    shortstr,
    table,
    unique,
)


def drain(ch, q):
    out = []
    while True:
        method, _, b = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append(b)


def test_mandatory_unroutable_message_comes_back_with_no_route(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    key = unique("nobody")
    ch.basic_publish("amq.direct", key, b"lost?", pika.BasicProperties(message_id="m1"), mandatory=True)
    pump(conn, lambda: returned, "basic.return for an unroutable mandatory message")
    method, props, b = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == ("amq.direct", key)
    assert props.message_id == "m1" and b == b"lost?"


def test_non_mandatory_unroutable_message_is_dropped_and_confirmed(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.direct", unique("nobody"), b"dropped")


def test_mandatory_with_confirms_returns_before_the_ack(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        ch.basic_publish("amq.direct", unique("nobody"), b"x", mandatory=True)
    assert e.value.messages[0].method.reply_code == 312


def test_publish_to_a_missing_exchange_closes_the_channel_with_404(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish(unique("nx"), "k", b"x")
    assert e.value.reply_code == 404


def test_confirms_are_acked_in_order_and_use_multiple(broker):
    """pika waits for each confirm; a raw client pipelines 200 publishes and
    reads the acks, which must cover 1..200 in order, some with multiple."""
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake()
        raw.open_channel(1)
        q = unique("confirms")
        raw.send(queue_declare(1, q, exclusive=True))
        raw.expect_method(50, 11, 1)
        raw.send(confirm_select(1))
        raw.expect_method(85, 11, 1)
        n = 200
        raw.send(b"".join(basic_publish(1, "", q) + content_header(1, 3) + body(1, b"abc") for _ in range(n)))
        acked, frames, multiples = 0, 0, 0
        while acked < n:
            f = raw.expect_method(60, 80, 1)
            tag, multiple = struct.unpack(">QB", f.payload[4:13])
            assert tag > acked, f"ack {tag} after {acked}"
            assert multiple or tag == acked + 1, f"single ack {tag} skipped {acked + 1}..{tag - 1}"
            acked, frames, multiples = tag, frames + 1, multiples + bool(multiple)
        assert acked == n
        assert multiples >= 1, "no ack covered more than one publish"
    finally:
        raw.close()


def test_nack_when_the_queue_refuses_the_message(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(
        unique("full"), exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    ).method.queue
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"no room")


def test_confirm_and_tx_do_not_mix(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.tx_select()
    assert e.value.reply_code == 406


def test_tx_commit_publishes_and_rollback_discards(conn):
    tx, watch = conn.channel(), conn.channel()
    q = watch.queue_declare(unique("tx"), exclusive=True).method.queue
    tx.tx_select()
    tx.basic_publish("", q, b"a")
    tx.basic_publish("", q, b"b")
    assert watch.queue_declare(q, passive=True).method.message_count == 0
    tx.tx_commit()
    assert drain(watch, q) == [b"a", b"b"]
    tx.basic_publish("", q, b"rolled back")
    tx.tx_rollback()
    tx.basic_publish("", q, b"c")
    tx.tx_commit()
    assert drain(watch, q) == [b"c"]


def test_tx_commit_applies_acks_and_rollback_forgets_them(conn):
    tx, watch = conn.channel(), conn.channel()
    watch.confirm_delivery()
    q = watch.queue_declare(unique("txack"), exclusive=True).method.queue
    for b in (b"1", b"2"):
        watch.basic_publish("", q, b)
    tx.tx_select()
    m1, _, _ = tx.basic_get(q)
    m2, _, _ = tx.basic_get(q)
    tx.basic_ack(m1.delivery_tag)
    tx.tx_rollback()
    tx.basic_ack(m2.delivery_tag)
    tx.tx_commit()
    # m2's ack committed; m1's was rolled back, so m1 is still unacked and
    # comes back when the channel closes.
    tx.close()
    method, _, b = watch.basic_get(q, auto_ack=True)
    assert b == b"1" and method.redelivered
    assert watch.basic_get(q)[0] is None


def test_tx_publish_to_a_missing_exchange_fails_before_commit_and_applies_nothing(conn):
    tx, watch = conn.channel(), conn.channel()
    q = watch.queue_declare(unique("txbad"), exclusive=True).method.queue
    tx.tx_select()
    tx.basic_publish("", q, b"good")
    tx.basic_publish(unique("missing"), "k", b"bad")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        tx.tx_commit()
    assert e.value.reply_code == 404
    assert watch.queue_declare(q, passive=True).method.message_count == 0, "half a transaction was applied"


def test_tx_mandatory_unroutable_is_returned_at_commit(conn):
    tx = conn.channel()
    returned = []
    tx.add_on_return_callback(lambda c, m, p, b: returned.append(m.reply_code))
    tx.tx_select()
    tx.basic_publish("amq.direct", unique("nobody"), b"x", mandatory=True)
    tx.tx_commit()
    pump(conn, lambda: returned, "basic.return for the committed mandatory publish")
    assert returned == [312]


def test_tx_commit_on_a_non_transactional_channel_is_406(conn):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.tx_commit()
    assert e.value.reply_code == 406


def test_properties_and_headers_survive_the_round_trip(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("props"), exclusive=True).method.queue
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"s": "text", "i": 42, "neg": -7, "big": 2**40, "b": True, "d": decimal.Decimal("1.5"), "x": b"\x00raw", "l": [1, "two"], "t": {"k": "v"}, "n": None},
        delivery_mode=2,
        priority=3,
        correlation_id="corr",
        reply_to="replies",
        expiration="60000",
        message_id="mid",
        timestamp=1700000000,
        type="kind",
        user_id="guest",
        app_id="app",
    )
    ch.basic_publish("", q, b"\x00\xffbinary", props)
    _, got, b = ch.basic_get(q, auto_ack=True)
    assert b == b"\x00\xffbinary"
    for field in [
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ]:
        assert getattr(got, field) == getattr(props, field), field
    assert got.headers == props.headers


def test_user_id_that_is_not_the_login_is_refused(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", "x", b"", pika.BasicProperties(user_id="someone-else"))
    assert e.value.reply_code == 406


def test_empty_body_is_a_message(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("empty"), exclusive=True).method.queue
    ch.basic_publish("", q, b"")
    method, _, b = ch.basic_get(q, auto_ack=True)
    assert method is not None and b == b""


@pytest.mark.parametrize("expiration", ["soon", "-1", "1.5", ""])
def test_invalid_expiration_is_406(conn, expiration):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("exp"), exclusive=True).method.queue
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
    assert e.value.reply_code == 406, e.value
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 0


# --- framing that well-behaved clients rarely produce but the spec allows ---


def get_body(raw, channel, q) -> bytes:
    raw.send(method(channel, 60, 70, struct.pack(">H", 0) + shortstr(q) + b"\x01"))  # basic.get no-ack
    raw.expect_method(60, 71, channel)
    header = raw.read_frame("content header")
    size = struct.unpack(">Q", header.payload[4:12])[0]
    out = b""
    while len(out) < size:
        out += raw.read_frame("content body").payload
    return out


def test_heartbeats_between_content_frames(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake()
        raw.open_channel(1)
        q = unique("hb")
        raw.send(queue_declare(1, q, exclusive=True))
        raw.expect_method(50, 11, 1)
        heartbeat = frame(8, 0, b"")
        raw.send(
            basic_publish(1, "", q) + heartbeat + content_header(1, 6) + heartbeat + body(1, b"abc") + heartbeat + body(1, b"def")
        )
        assert get_body(raw, 1, q) == b"abcdef"
    finally:
        raw.close()


def test_content_on_one_channel_interleaves_with_methods_on_another(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake()
        raw.open_channel(1)
        raw.open_channel(2)
        q = unique("il")
        raw.send(queue_declare(1, q, exclusive=True))
        raw.expect_method(50, 11, 1)
        other = unique("other")
        raw.send(basic_publish(1, "", q) + content_header(1, 4) + body(1, b"ab"))
        raw.send(queue_declare(2, other, exclusive=True))
        raw.send(basic_publish(2, "", q) + content_header(2, 1) + body(2, b"2"))
        raw.send(body(1, b"cd"))
        raw.expect_method(50, 11, 2)
        assert get_body(raw, 2, q) == b"2"
        assert get_body(raw, 2, q) == b"abcd"
    finally:
        raw.close()


def test_nowait_declares_and_consume(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake()
        raw.open_channel(1)
        q = unique("nowait")
        # queue.declare with exclusive + nowait, then basic.consume with nowait
        raw.send(method(1, 50, 10, struct.pack(">H", 0) + shortstr(q) + bytes([0b10100]) + table()))
        raw.send(method(1, 60, 20, struct.pack(">H", 0) + shortstr(q) + shortstr("t") + bytes([0b1010]) + table()))
        raw.send(basic_publish(1, "", q) + content_header(1, 2) + body(1, b"hi"))
        f = raw.expect_method(60, 60, 1)  # the delivery is the first reply of all
        assert f.payload[4:6] == b"\x01t"
    finally:
        raw.close()

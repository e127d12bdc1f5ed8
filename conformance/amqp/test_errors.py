"""Errors: the right reply code, and the right scope. 4xx channel errors
close only the channel; 5xx errors close the connection. Bad bytes on one
connection harm no other.

541 INTERNAL_ERROR is not reachable from a client: only a storage failure
raises it."""

from __future__ import annotations

import socket
import struct

import pika
import pytest

from conformance.support import (
    FRAME_END,
    Broker,
    RawAmqp,
    basic_consume,
    basic_publish,
    body,
    channel_error,
    channel_open,
    content_header,
    frame,
    method,
    pump,
    queue_declare,
    shortstr,
    unique,
    usable,
)

# --- channel errors leave the connection usable -----------------------------


def test_404_closes_only_the_channel(conn):
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.queue_declare(unique("missing"), passive=True))
    assert err.reply_code == 404 and err.reply_text.startswith("NOT_FOUND"), err
    assert conn.is_open
    usable(conn)


def test_403_closes_only_the_channel(conn):
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.exchange_declare(unique("amq.reserved"), "direct"))
    assert err.reply_code == 403 and err.reply_text.startswith("ACCESS_REFUSED"), err
    usable(conn)


def test_405_closes_only_the_channel(connect):
    owner, other = connect(), connect()
    q = owner.channel().queue_declare(unique("locked"), exclusive=True).method.queue
    ch = other.channel()
    err = channel_error(ch, lambda: ch.basic_consume(q, lambda *a: None))
    assert err.reply_code == 405 and err.reply_text.startswith("RESOURCE_LOCKED"), err
    usable(other)
    usable(owner)


def test_406_closes_only_the_channel(conn):
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.basic_ack(99))
    assert err.reply_code == 406 and err.reply_text.startswith("PRECONDITION_FAILED"), err
    usable(conn)


def test_other_channels_keep_their_consumers_after_a_channel_error(conn):
    keep = conn.channel()
    q = keep.queue_declare("", exclusive=True).method.queue
    got = []
    keep.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    bad = conn.channel()
    channel_error(bad, lambda: bad.queue_declare(unique("missing"), passive=True))
    conn.channel().basic_publish("", q, b"still consuming")
    pump(conn, lambda: got, "a delivery on the surviving channel")


# --- connection errors, from a raw socket ----------------------------------


@pytest.fixture
def raw(broker):
    r = RawAmqp(broker.host, broker.port)
    r.handshake()
    r.open_channel(1)
    yield r
    r.close()


def closes_connection(raw, data: bytes) -> tuple[int, str]:
    raw.send(data)
    code, text = raw.expect_connection_close()
    raw.expect_eof()
    return code, text


def test_501_on_a_frame_without_its_end_octet(raw):
    bad = struct.pack(">BHI", 1, 1, 4) + struct.pack(">HH", 20, 40) + b"\x00"
    code, text = closes_connection(raw, bad)
    assert code == 501, text


def test_501_on_an_unknown_frame_type(raw):
    code, text = closes_connection(raw, frame(9, 1, b"????"))
    assert code == 501, text


def test_501_on_garbage_after_the_handshake(raw):
    code, text = closes_connection(raw, b"\xff" * 64)
    assert code == 501, text


def test_501_on_a_frame_above_frame_max_before_its_payload(raw):
    # Only the 7-byte header is sent: the broker must refuse from the
    # announced size, not buffer 200 000 bytes first.
    code, text = closes_connection(raw, struct.pack(">BHI", 3, 1, 200_000))
    assert code == 501, text


def test_501_on_a_body_longer_than_its_header_announced(raw):
    q = unique("q")
    raw.send(queue_declare(1, q, exclusive=True))
    raw.expect_method(50, 11, 1)
    code, text = closes_connection(raw, basic_publish(1, "", q) + content_header(1, 3) + body(1, b"four"))
    assert code == 501, text


def test_502_on_tune_ok_below_the_minimum_frame_max(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.send(b"AMQP\x00\x00\x09\x01")
        raw.expect_method(10, 10)
        raw.send(method(0, 10, 11, struct.pack(">I", 0) + shortstr("PLAIN") + struct.pack(">I", 12) + b"\0guest\0guest" + shortstr("en_US")))
        raw.expect_method(10, 30)
        code, text = closes_connection(raw, method(0, 10, 31, struct.pack(">HIH", 0, 1024, 0)))
        assert code == 502, text
    finally:
        raw.close()


def test_503_on_a_channel_method_on_channel_zero(raw):
    code, text = closes_connection(raw, queue_declare(0, unique("q")))
    assert code == 503, text


def test_503_on_a_server_only_method(raw):
    # basic.deliver travels from server to client only.
    deliver = method(1, 60, 60, shortstr("tag") + struct.pack(">QB", 1, 0) + shortstr("") + shortstr("k"))
    code, text = closes_connection(raw, deliver)
    assert code == 503, text


def test_504_on_a_method_on_an_unopened_channel(raw):
    code, text = closes_connection(raw, queue_declare(2, unique("q")))
    assert code == 504, text


def test_504_on_opening_an_open_channel_again(raw):
    code, text = closes_connection(raw, channel_open(1))
    assert code == 504, text


def test_505_on_a_body_without_a_header(raw):
    code, text = closes_connection(raw, body(1, b"orphan"))
    assert code == 505, text


def test_505_on_a_header_without_a_publish(raw):
    code, text = closes_connection(raw, content_header(1, 5))
    assert code == 505, text


def test_505_on_a_method_where_content_was_due(raw):
    code, text = closes_connection(raw, basic_publish(1, "", "q") + queue_declare(1, unique("q")))
    assert code == 505, text


def test_505_on_content_before_the_connection_is_open(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.send(b"AMQP\x00\x00\x09\x01")
        raw.expect_method(10, 10)
        code, text = closes_connection(raw, body(0, b"too early"))
        assert code == 505, text
    finally:
        raw.close()


def test_530_on_reusing_a_consumer_tag(raw):
    q = unique("q")
    raw.send(queue_declare(1, q, exclusive=True))
    raw.expect_method(50, 11, 1)
    raw.send(basic_consume(1, q, tag="same"))
    raw.expect_method(60, 21, 1)
    code, text = closes_connection(raw, basic_consume(1, q, tag="same"))
    assert code == 530, text


def test_540_on_publish_with_immediate(raw):
    code, text = closes_connection(raw, basic_publish(1, "", "q", immediate=True))
    assert code == 540, text


def test_wrong_protocol_header_is_answered_with_ours(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.send(b"AMQP\x00\x00\x08\x00")
        assert raw.read_raw(8, "the broker's protocol header") == b"AMQP\x00\x00\x09\x01"
        raw.expect_eof()
    finally:
        raw.close()


def test_http_request_on_the_amqp_port_is_refused(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.read_raw(8, "the broker's protocol header") == b"AMQP\x00\x00\x09\x01"
        raw.expect_eof()
    finally:
        raw.close()


# --- bad bytes harm no one else ---------------------------------------------


def test_garbled_frame_on_one_connection_does_not_affect_another(broker, connect):
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"before")
    pump(conn, lambda: got == [b"before"], "the first delivery")
    for garbage in [
        struct.pack(">BHI", 1, 1, 4) + b"\x00\x14\x00\x28" + b"X",  # bad frame end
        struct.pack(">BHI", 1, 1, 2) + b"\x00\x14" + FRAME_END,  # a class id, no method id
        struct.pack(">BHI", 1, 1, 4) + b"\xff\xff\xff\xff" + FRAME_END,  # unknown method
    ]:
        bad = RawAmqp(broker.host, broker.port)
        bad.handshake()
        bad.open_channel(1)
        bad.send(garbage)
        code, _ = bad.expect_connection_close()
        assert 500 <= code < 600
        bad.close()
    ch.basic_publish("", q, b"after")
    pump(conn, lambda: got == [b"before", b"after"], "a delivery after the other connection's garbage")
    usable(conn)


def test_truncated_frame_then_disconnect_does_not_affect_another(broker, connect):
    conn = connect()
    for cut in (3, 7, 12):
        bad = RawAmqp(broker.host, broker.port)
        bad.handshake()
        bad.open_channel(1)
        whole = basic_publish(1, "", "x") + content_header(1, 10) + body(1, b"0123456789")
        bad.send(whole[: len(whole) - cut])
        bad.close()
    usable(conn)
    usable(connect())


def test_garbage_instead_of_a_handshake_does_not_affect_another(broker, connect):
    conn = connect()
    for garbage in [b"", b"\x00", b"AMQ", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]:
        bad = RawAmqp(broker.host, broker.port)
        bad.send(garbage)
        bad.close()
    usable(conn)


# --- the configured maximum message size -------------------------------------


@pytest.fixture(scope="module")
def small_broker():
    b = Broker(config="max_message_bytes = 1024\n").start()
    yield b
    assert b.stop() == 0


def test_body_above_max_message_bytes_is_406_on_the_channel(small_broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=small_broker.host, port=small_broker.port))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"x" * 1024)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish("", q, b"x" * 1025)
        assert e.value.reply_code == 406, e.value
        ch = conn.channel()
        assert ch.queue_declare(q, passive=True).method.message_count == 1
        usable(conn)
    finally:
        conn.close()


def test_oversized_body_is_refused_from_the_header_alone(small_broker):
    raw = RawAmqp(small_broker.host, small_broker.port)
    try:
        raw.handshake()
        raw.open_channel(1)
        raw.send(basic_publish(1, "", "q") + content_header(1, 10_000_000))
        code, text = raw.expect_channel_close(1)
        assert code == 406, text
        # Channel-scoped: the connection still answers.
        raw.open_channel(2)
    finally:
        raw.close()


def test_frames_arriving_one_byte_at_a_time(broker):
    raw = RawAmqp(broker.host, broker.port)
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        original_send = raw.send

        def trickle(data: bytes) -> None:
            for i in range(len(data)):
                original_send(data[i : i + 1])

        raw.send = trickle
        raw.handshake()
        raw.open_channel(1)
        q = unique("trickle")
        raw.send(queue_declare(1, q, exclusive=True))
        raw.expect_method(50, 11, 1)
        raw.send(basic_publish(1, "", q) + content_header(1, 5) + body(1, b"slow!"))
        raw.send(method(1, 60, 70, struct.pack(">H", 0) + shortstr(q) + b"\x01"))
        raw.expect_method(60, 71, 1)
        raw.read_frame("content header")
        assert raw.read_frame("content body").payload == b"slow!"
    finally:
        raw.close()


def test_530_on_tune_ok_above_the_offered_frame_max(broker):
    # RabbitMQ: a client may only lower what connection.tune offered.
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.send(b"AMQP\x00\x00\x09\x01")
        raw.expect_method(10, 10)
        raw.send(method(0, 10, 11, struct.pack(">I", 0) + shortstr("PLAIN") + struct.pack(">I", 12) + b"\0guest\0guest" + shortstr("en_US")))
        raw.expect_method(10, 30)
        code, text = closes_connection(raw, method(0, 10, 31, struct.pack(">HIH", 0, 131072 * 2, 0)))
        assert code == 530, text
        assert "frame_max=262144 > 131072" in text, text
    finally:
        raw.close()


def test_540_on_qos_with_a_prefetch_size(raw):
    # basic.qos prefetch-size=65536 prefetch-count=10 global=false
    code, text = closes_connection(raw, method(1, 60, 10, struct.pack(">IHB", 65536, 10, 0)))
    assert code == 540, text
    assert "prefetch_size" in text, text


def test_qos_with_a_zero_prefetch_size_is_accepted(raw):
    raw.send(method(1, 60, 10, struct.pack(">IHB", 0, 10, 0)))
    raw.expect_method(60, 11, 1)


def test_540_on_recover_without_requeue(raw):
    # basic.recover requeue=false
    code, text = closes_connection(raw, method(1, 60, 110, b"\x00"))
    assert code == 540, text
    assert "requeue=false" in text, text

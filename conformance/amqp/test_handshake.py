"""Connection handshake: mechanisms, refusals, server properties, tuning,
heartbeats, channel.flow, many channels, update-secret."""

from __future__ import annotations

import struct
import time

import amqp
import pika
import pytest

from conformance.support import (
    FRAME_HEARTBEAT,
    RawAmqp,
    basic_publish,
    body,
    channel_open,
    content_header,
    method,
    queue_declare,
    shortstr,
    pump,
    unique,
    usable,
)

CAPABILITIES = [
    "publisher_confirms",
    "consumer_cancel_notify",
    "basic.nack",
    "exchange_exchange_bindings",
    "per_consumer_qos",
    "direct_reply_to",
    "authentication_failure_close",
    "connection.blocked",
    "consumer_priorities",
]


def test_plain_login_opens_a_usable_connection(conn):
    assert conn.is_open
    usable(conn)


def test_amqplain_login_with_py_amqp(broker):
    c = amqp.Connection(f"{broker.host}:{broker.port}", login_method="AMQPLAIN")
    c.connect()
    try:
        ch = c.channel()
        q, _, _ = ch.queue_declare("", exclusive=True)
        ch.basic_publish(amqp.Message("via amqplain"), "", q)
        assert ch.basic_get(q, no_ack=True).body == "via amqplain"
    finally:
        c.close()


def test_wrong_password_is_refused_with_403_pika(params):
    bad = pika.ConnectionParameters(
        host=params.host, port=params.port, credentials=pika.PlainCredentials("guest", "wrong")
    )
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        pika.BlockingConnection(bad)
    assert "403" in str(e.value) and "ACCESS_REFUSED" in str(e.value)


def test_wrong_password_is_refused_with_403_py_amqp(broker):
    c = amqp.Connection(f"{broker.host}:{broker.port}", userid="guest", password="wrong")
    with pytest.raises(amqp.exceptions.AccessRefused) as e:
        c.connect()
    assert e.value.code == 403


def test_unknown_user_is_refused_with_403_amqplain(broker):
    c = amqp.Connection(f"{broker.host}:{broker.port}", userid="nobody", password="x", login_method="AMQPLAIN")
    with pytest.raises(amqp.exceptions.AccessRefused) as e:
        c.connect()
    assert e.value.code == 403


def test_unknown_vhost_is_refused_with_530(params):
    bad = pika.ConnectionParameters(host=params.host, port=params.port, virtual_host=unique("vh"))
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(bad)
    assert "530" in str(e.value)


def test_server_properties_announce_rabbitmq_capabilities(broker):
    c = amqp.Connection(f"{broker.host}:{broker.port}")
    c.connect()
    try:
        props = c.server_properties
        assert props["product"] == "ferrymq"
        assert props["version"]
        for cap in CAPABILITIES:
            assert props["capabilities"].get(cap) is True, f"capability {cap} not announced"
    finally:
        c.close()


def test_pika_sees_the_capabilities_it_switches_on(conn):
    assert conn.publisher_confirms_supported
    assert conn.basic_nack_supported
    assert conn.consumer_cancel_notify_supported
    assert conn.exchange_exchange_bindings_supported


def test_pika_negotiates_its_lower_limits(connect):
    conn = connect(channel_max=10, frame_max=8192, heartbeat=7)
    p = conn._impl.params
    assert (p.channel_max, p.frame_max, p.heartbeat) == (10, 8192, 7)
    usable(conn)


def test_broker_enforces_the_client_frame_max_from_tune_ok(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake(frame_max=8192)
        raw.open_channel(1)
        # A frame of 8 192 bytes with its envelope is allowed...
        q = unique("framemax")
        raw.send(queue_declare(1, q, exclusive=True))
        raw.expect_method(50, 11, 1)
        raw.send(basic_publish(1, "", q) + content_header(1, 8192 - 8) + body(1, b"x" * (8192 - 8)))
        raw.send(method(1, 60, 70, struct.pack(">H", 0) + shortstr(q) + b"\x01"))  # basic.get, no-ack
        raw.expect_method(60, 71, 1)
        # ... one byte more is not.
        raw.send(basic_publish(1, "", q) + content_header(1, 8192 - 8 + 1) + body(1, b"x" * (8192 - 8 + 1)))
        code, text = raw.expect_connection_close()
        assert code == 501, text
    finally:
        raw.close()


def test_tune_offers_rabbitmq_defaults(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        channel_max, frame_max, heartbeat = raw.handshake()
        assert channel_max == 2047
        assert frame_max == 131072
        assert heartbeat == 60
    finally:
        raw.close()


def test_a_channel_above_the_negotiated_channel_max_closes_with_530(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake(channel_max=5)
        raw.open_channel(5)
        raw.send(channel_open(6))
        code, text = raw.expect_connection_close()
        assert code == 530, text
    finally:
        raw.close()


def test_large_messages_cross_a_small_frame_max_in_pieces(connect):
    conn = connect(frame_max=4096)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    payload = bytes(range(256)) * 100  # 25 600 bytes: seven body frames each way
    ch.basic_publish("", q, payload)
    _, _, body = ch.basic_get(q, auto_ack=True)
    assert body == payload


def test_heartbeats_keep_an_idle_connection_open(connect):
    # Here elapsed time is the subject: the connection must outlive three
    # heartbeat intervals with no traffic but heartbeats.
    conn = connect(heartbeat=2)
    assert conn._impl.params.heartbeat == 2
    end = time.monotonic() + 5
    while time.monotonic() < end:
        conn.process_data_events(time_limit=end - time.monotonic())
    assert conn.is_open
    usable(conn)


def test_broker_sends_heartbeats_and_drops_a_silent_peer(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake(heartbeat=1)
        start = time.monotonic()
        frames = raw.expect_eof(timeout=15)
        elapsed = time.monotonic() - start
        assert any(f.kind == FRAME_HEARTBEAT and f.channel == 0 for f in frames), frames
        # Two missed intervals is RabbitMQ's rule; allow scheduling slack.
        assert 1.5 <= elapsed <= 10, f"closed after {elapsed:.1f}s"
    finally:
        raw.close()


def test_channel_flow_pauses_and_resumes_deliveries(connect):
    consumer, publisher = connect(), connect()
    cch, pch = consumer.channel(), publisher.channel()
    q = unique("flow")
    cch.queue_declare(q, auto_delete=True)
    got = []
    cch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    assert cch.flow(False) is False
    pch.confirm_delivery()
    pch.basic_publish("", q, b"held")
    # Two round trips on the paused connection: a delivery written despite
    # the pause would arrive before their replies.
    for _ in range(2):
        cch.queue_declare(q, passive=True)
        consumer.process_data_events(time_limit=0)
    assert got == [], "delivered while the channel was paused"
    assert cch.flow(True) is True
    pump(consumer, lambda: got == [b"held"], "the held delivery after channel.flow(active=true)")


def test_many_channels_on_one_connection(conn):
    channels = [conn.channel() for _ in range(300)]
    numbers = {c.channel_number for c in channels}
    assert len(numbers) == 300
    q = conn.channel().queue_declare("", exclusive=True).method.queue
    for i, c in enumerate(channels):
        c.basic_publish("", q, str(i).encode())
    reader = channels[0]
    seen = set()
    for _ in range(300):
        _, _, body = reader.basic_get(q, auto_ack=True)
        seen.add(int(body))
    assert seen == set(range(300))
    for c in channels[::2]:
        c.close()
    for c in channels[1::2]:
        assert c.is_open
        c.queue_declare(q, passive=True)


def test_channel_numbers_are_reusable_after_close(conn):
    first = conn.channel(channel_number=7)
    first.close()
    again = conn.channel(channel_number=7)
    again.queue_declare("", exclusive=True)


def test_update_secret_is_accepted(conn):
    conn.update_secret("guest", "rotated")
    assert conn.is_open
    usable(conn)


def test_client_close_is_answered_with_close_ok(broker):
    raw = RawAmqp(broker.host, broker.port)
    try:
        raw.handshake()
        reason = b"bye"
        raw.send(
            struct.pack(">BHI", 1, 0, 4 + 2 + 1 + len(reason) + 4)
            + struct.pack(">HHH", 10, 50, 200)
            + bytes([len(reason)])
            + reason
            + struct.pack(">HH", 0, 0)
            + b"\xce"
        )
        raw.expect_method(10, 51, channel=0)
        raw.expect_eof()
    finally:
        raw.close()


USERS_CONFIG = """
vhosts = ["/", "team-a", "team-b"]

[[users]]
name = "alice"
password = "secret"
vhosts = ["team-a"]

[[users]]
name = "root"
password = "root"
"""


@pytest.fixture(scope="module")
def users_broker():
    from conformance.support import Broker

    b = Broker(config=USERS_CONFIG).start()
    yield b
    assert b.stop() == 0


def login(b, user, password, vhost):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host=b.host, port=b.port, virtual_host=vhost, credentials=pika.PlainCredentials(user, password)
        )
    )


def test_configured_users_and_vhosts(users_broker):
    c = login(users_broker, "alice", "secret", "team-a")
    usable(c)
    c.close()
    c = login(users_broker, "root", "root", "team-b")
    usable(c)
    c.close()


def test_vhosts_keep_their_names_apart(users_broker):
    a = login(users_broker, "root", "root", "team-a")
    b = login(users_broker, "root", "root", "team-b")
    q = unique("same-name")
    a.channel().queue_declare(q, exclusive=True)
    ch = b.channel()
    ch.queue_declare(q, exclusive=True)  # not locked: another vhost's queue
    a.close()
    b.close()


def test_user_refused_a_vhost_it_may_not_open_gets_530(users_broker):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        login(users_broker, "alice", "secret", "team-b")
    assert "530" in str(e.value)


def test_guest_is_gone_once_users_are_configured(users_broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        login(users_broker, "guest", "guest", "/")
    assert "403" in str(e.value)

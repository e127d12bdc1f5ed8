"""Queues: declare flags, bind/unbind, purge, delete, and the x- arguments
(TTL, expiry, length limits, overflow, dead-lettering, priority, single
active consumer)."""

from __future__ import annotations

import datetime

import pika
import pytest

from conformance.support import channel_error, poll, pump, unique


def drain(ch, q):
    out = []
    while True:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def ready(ch, q) -> int:
    return ch.queue_declare(q, passive=True).method.message_count


class Collector:
    """A consumer that keeps what it receives; waits are events on `conn`."""

    def __init__(self, conn, ch, queue, auto_ack=True, **kw):
        self.conn, self.ch, self.items = conn, ch, []
        self.tag = ch.basic_consume(queue, self._on, auto_ack=auto_ack, **kw)

    def _on(self, ch, method, props, body):
        self.items.append((method, props, body))

    def wait(self, n, what):
        pump(self.conn, lambda: len(self.items) >= n, what)
        return self.items[:n]


# --- declare --------------------------------------------------------------


def test_server_named_queue(ch):
    name = ch.queue_declare("", exclusive=True).method.queue
    assert name.startswith("amq.gen-") and len(name) > len("amq.gen-")


def test_declare_ok_reports_messages_and_consumers(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("counts"), exclusive=True).method.queue
    for i in range(3):
        ch.basic_publish("", q, b"m")
    ch.basic_consume(q, lambda *a: None, auto_ack=False, consumer_tag="c1")
    ok = ch.queue_declare(q, passive=True).method
    assert ok.consumer_count == 1
    # With no prefetch limit, the consumer took all three.
    assert ok.message_count == 0


def test_passive_declare_of_a_missing_queue_is_404(ch):
    err = channel_error(ch, lambda: ch.queue_declare(unique("missing"), passive=True))
    assert err.reply_code == 404, err


def test_durable_flag_is_kept_and_checked_on_redeclare(conn):
    ch = conn.channel()
    q = unique("durable")
    ch.queue_declare(q, durable=True)
    ch.queue_declare(q, durable=True)
    err = channel_error(ch, lambda: ch.queue_declare(q, durable=False))
    assert err.reply_code == 406, err
    conn.channel().queue_delete(q)


def test_redeclare_with_other_arguments_is_406(conn):
    ch = conn.channel()
    q = unique("args")
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 5})
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 5})
    err = channel_error(ch, lambda: ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 6}))
    assert err.reply_code == 406, err
    assert "x-max-length" in err.reply_text
    conn.channel().queue_delete(q)


def test_amq_prefix_is_reserved_for_queue_names(ch):
    err = channel_error(ch, lambda: ch.queue_declare(unique("amq.mine")))
    assert err.reply_code == 403, err


def test_bad_queue_argument_is_406(ch):
    err = channel_error(ch, lambda: ch.queue_declare(unique("bad"), arguments={"x-max-length": "ten"}))
    assert err.reply_code == 406, err


def test_exclusive_queue_is_locked_to_its_connection(connect):
    owner, other = connect(), connect()
    och = owner.channel()
    q = och.queue_declare(unique("excl"), exclusive=True).method.queue
    # The owner may use it any way it likes, including a passive declare.
    och.queue_declare(q, passive=True)
    och.basic_publish("", q, b"mine")
    assert och.basic_get(q, auto_ack=True)[2] == b"mine"
    for action in [
        lambda c: c.queue_declare(q, passive=True),
        lambda c: c.queue_declare(q, exclusive=True),
        lambda c: c.basic_consume(q, lambda *a: None),
        lambda c: c.basic_get(q),
        lambda c: c.queue_purge(q),
        lambda c: c.queue_delete(q),
        lambda c: c.queue_bind(q, "amq.fanout"),
    ]:
        c = other.channel()
        err = channel_error(c, lambda: action(c))
        assert err.reply_code == 405, err
    # Everyone else can still publish to it. Confirmed, so the message is
    # in the queue before the owner's basic.get on its own connection.
    outside = other.channel()
    outside.confirm_delivery()
    outside.basic_publish("", q, b"from outside")
    assert och.basic_get(q, auto_ack=True)[2] == b"from outside"


def test_redeclare_with_another_exclusive_flag_is_405(conn):
    # RabbitMQ checks the exclusive flag strictly on a full declare, even
    # for the owner; a passive declare only checks access.
    ch = conn.channel()
    q = ch.queue_declare(unique("excl"), exclusive=True).method.queue
    ch.queue_declare(q, exclusive=True)
    err = channel_error(ch, lambda: ch.queue_declare(q, exclusive=False))
    assert err.reply_code == 405, err
    ch = conn.channel()
    shared = ch.queue_declare(unique("shared"), auto_delete=True).method.queue
    err = channel_error(ch, lambda: ch.queue_declare(shared, exclusive=True, auto_delete=True))
    assert err.reply_code == 405, err
    conn.channel().queue_delete(shared)


def test_exclusive_queue_goes_with_its_connection(connect):
    owner, other = connect(), connect()
    q = owner.channel().queue_declare(unique("excl"), exclusive=True).method.queue
    owner.close()
    ch = other.channel()
    err = channel_error(ch, lambda: ch.queue_declare(q, passive=True))
    assert err.reply_code == 404, err


def test_auto_delete_queue_goes_with_its_last_consumer(conn):
    ch = conn.channel()
    q = unique("ad")
    ch.queue_declare(q, auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    ch.queue_declare(q, passive=True)
    ch.basic_cancel(t2)
    err = channel_error(ch, lambda: ch.queue_declare(q, passive=True))
    assert err.reply_code == 404, err


def test_auto_delete_queue_without_consumers_stays(conn):
    ch = conn.channel()
    q = unique("ad")
    ch.queue_declare(q, auto_delete=True)
    ch.queue_declare(q, passive=True)
    ch.queue_delete(q)


# --- bind, purge, delete ---------------------------------------------------


def test_bind_and_unbind(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("b"), exclusive=True).method.queue
    ch.queue_bind(q, "amq.direct", "k")
    ch.queue_bind(q, "amq.direct", "k")  # binding twice is one binding
    ch.basic_publish("amq.direct", "k", b"1")
    assert drain(ch, q) == [b"1"]
    ch.queue_unbind(q, "amq.direct", "k")
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("amq.direct", "k", b"2", mandatory=True)
    assert drain(ch, q) == []


def test_purge_drops_ready_messages_and_counts_them(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("p"), exclusive=True).method.queue
    for _ in range(4):
        ch.basic_publish("", q, b"m")
    assert ch.queue_purge(q).method.message_count == 4
    assert ch.basic_get(q)[0] is None


def test_purge_keeps_unacked_messages(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("p"), exclusive=True).method.queue
    ch.basic_publish("", q, b"held")
    ch.basic_publish("", q, b"ready")
    method, _, _ = ch.basic_get(q)
    assert ch.queue_purge(q).method.message_count == 1
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert drain(ch, q) == [b"held"]


def test_delete_returns_the_message_count(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("d")).method.queue
    for _ in range(3):
        ch.basic_publish("", q, b"m")
    assert ch.queue_delete(q).method.message_count == 3
    err = channel_error(ch, lambda: ch.queue_declare(q, passive=True))
    assert err.reply_code == 404, err


def test_delete_if_unused_refuses_a_queue_with_consumers(conn):
    ch = conn.channel()
    q = ch.queue_declare(unique("d"), exclusive=True).method.queue
    conn.channel().basic_consume(q, lambda *a: None)
    err = channel_error(ch, lambda: ch.queue_delete(q, if_unused=True))
    assert err.reply_code == 406, err


def test_delete_if_empty_refuses_a_queue_with_messages(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("d"), exclusive=True).method.queue
    ch.basic_publish("", q, b"m")
    err = channel_error(ch, lambda: ch.queue_delete(q, if_empty=True))
    assert err.reply_code == 406, err
    ch = conn.channel()
    ch.queue_purge(q)
    ch.queue_delete(q, if_empty=True, if_unused=True)


# --- TTL and dead-lettering ------------------------------------------------


def dlx_pair(ch, **source_args):
    """A source queue dead-lettering to the default exchange with key dlq,
    and the dlq. Returns (source, dlq)."""
    dlq = ch.queue_declare(unique("dlq"), exclusive=True).method.queue
    args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq, **source_args}
    src = ch.queue_declare(unique("src"), exclusive=True, arguments=args).method.queue
    return src, dlq


def assert_death(props, reason, queue, exchange, keys, count=1):
    deaths = props.headers["x-death"]
    assert isinstance(deaths, list) and deaths, props.headers
    d = deaths[0]
    assert d["count"] == count
    assert d["reason"] == reason
    assert d["queue"] == queue
    assert d["exchange"] == exchange
    assert d["routing-keys"] == keys
    assert isinstance(d["time"], datetime.datetime), d["time"]
    assert props.headers["x-first-death-reason"] == reason
    assert props.headers["x-first-death-queue"] == queue
    assert props.headers["x-first-death-exchange"] == exchange


def test_message_ttl_dead_letters_with_x_death(conn):
    ch = conn.channel()
    src, dlq = dlx_pair(ch, **{"x-message-ttl": 50})
    got = Collector(conn, ch, dlq)
    ch.basic_publish("", src, b"expires", pika.BasicProperties(headers={"mine": "kept"}))
    ((method, props, body),) = got.wait(1, "the expired message on the dead-letter queue")
    assert body == b"expires"
    assert props.headers["mine"] == "kept"
    assert method.routing_key == dlq
    assert_death(props, "expired", src, "", [src])


def test_per_message_expiration_dead_letters_with_original_expiration(conn):
    ch = conn.channel()
    src, dlq = dlx_pair(ch)
    got = Collector(conn, ch, dlq)
    ch.basic_publish("", src, b"short", pika.BasicProperties(expiration="30"))
    ((_, props, body),) = got.wait(1, "the expired message on the dead-letter queue")
    assert body == b"short"
    assert props.expiration is None, "the dead-lettered copy must not expire again"
    assert_death(props, "expired", src, "", [src])
    assert props.headers["x-death"][0]["original-expiration"] == "30"


def test_expired_messages_are_not_delivered(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    src, dlq = dlx_pair(ch)
    got = Collector(conn, conn.channel(), dlq)
    ch.basic_publish("", src, b"gone", pika.BasicProperties(expiration="1"))
    ch.basic_publish("", src, b"stays")
    got.wait(1, "the 1 ms message on the dead-letter queue")
    assert drain(ch, src) == [b"stays"]


def test_zero_ttl_message_reaches_a_waiting_consumer_only(conn):
    ch = conn.channel()
    q = ch.queue_declare(unique("ttl0"), exclusive=True, arguments={"x-message-ttl": 0}).method.queue
    pub = conn.channel()
    pub.confirm_delivery()
    pub.basic_publish("", q, b"nobody waiting")
    assert ready(pub, q) == 0
    got = Collector(conn, ch, q)
    pub.basic_publish("", q, b"consumer waiting")
    assert [b for _, _, b in got.wait(1, "the zero-TTL delivery")] == [b"consumer waiting"]


def test_rejected_message_dead_letters_with_x_death(conn):
    ch = conn.channel()
    src, dlq = dlx_pair(ch)
    ch.queue_bind(src, "amq.topic", "orders.#")
    got = Collector(conn, conn.channel(), dlq)
    ch.basic_publish("amq.topic", "orders.new", b"bad")
    method, _, _ = ch.basic_get(src)
    ch.basic_reject(method.delivery_tag, requeue=False)
    ((_, props, body),) = got.wait(1, "the rejected message on the dead-letter queue")
    assert body == b"bad"
    assert_death(props, "rejected", src, "amq.topic", ["orders.new"])


def test_nack_multiple_without_requeue_dead_letters_all(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    src, dlq = dlx_pair(ch)
    for i in range(3):
        ch.basic_publish("", src, str(i).encode())
    tags = [ch.basic_get(src)[0].delivery_tag for _ in range(3)]
    got = Collector(conn, conn.channel(), dlq)
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    items = got.wait(3, "three nacked messages on the dead-letter queue")
    assert [b for _, _, b in items] == [b"0", b"1", b"2"]


def test_dead_letter_cycle_through_rejection_counts_deaths(conn):
    ch = conn.channel()
    q = unique("loop")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q})
    got = Collector(conn, ch, q, auto_ack=False)
    ch.basic_publish("", q, b"again")
    for n in (1, 2):
        method, props, _ = got.wait(n, f"delivery {n} of the message rejected back into its queue")[n - 1]
        if n == 2:
            assert props.headers["x-death"][0]["count"] == 1
        ch.basic_reject(method.delivery_tag, requeue=False)
    _, props, body = got.wait(3, "the third delivery")[2]
    assert body == b"again"
    assert len(props.headers["x-death"]) == 1
    assert props.headers["x-death"][0]["count"] == 2
    assert props.headers["x-death"][0]["reason"] == "rejected"


def test_dead_letter_without_routing_key_keeps_the_original_key(conn):
    ch = conn.channel()
    dlx = unique("dlx")
    ch.exchange_declare(dlx, "topic", auto_delete=True)
    dlq = ch.queue_declare(unique("dlq"), exclusive=True).method.queue
    ch.queue_bind(dlq, dlx, "#")
    src = ch.queue_declare(
        unique("src"), exclusive=True, arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 10}
    ).method.queue
    ch.queue_bind(src, "amq.direct", "original.key")
    got = Collector(conn, conn.channel(), dlq)
    ch.basic_publish("amq.direct", "original.key", b"x")
    ((method, props, _),) = got.wait(1, "the dead letter via a topic DLX")
    assert method.routing_key == "original.key"
    assert method.exchange == dlx
    assert_death(props, "expired", src, "amq.direct", ["original.key"])


def test_expires_deletes_an_unused_queue(conn):
    ch = conn.channel()
    q = unique("expires")
    ch.queue_declare(q, arguments={"x-expires": 300})
    probe = conn.channel()
    probe.confirm_delivery()

    def gone():
        # A mandatory publish is returned once the queue no longer exists;
        # publishing does not count as use for x-expires.
        try:
            probe.basic_publish("", q, b"probe", mandatory=True)
            return False
        except pika.exceptions.UnroutableError:
            return True

    # A queue deleting itself is not an event a client can await, so poll.
    poll(gone, f"{q} to expire after 300 ms unused", pause=lambda: conn.process_data_events(time_limit=0.05))


def test_expires_does_not_delete_a_queue_with_a_consumer(conn):
    ch = conn.channel()
    q = unique("expires")
    ch.queue_declare(q, arguments={"x-expires": 100})
    ch.basic_consume(q, lambda *a: None)
    # Hold the consumer for several expiry periods; elapsed time is the subject.
    conn.process_data_events(time_limit=0.5)
    ch.queue_declare(q, passive=True)
    ch.queue_delete(q)


def test_max_length_drops_the_head(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("maxlen"), exclusive=True, arguments={"x-max-length": 2}).method.queue
    for b in (b"1", b"2", b"3"):
        ch.basic_publish("", q, b)
    assert drain(ch, q) == [b"2", b"3"]


def test_max_length_bytes_drops_the_head(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("maxbytes"), exclusive=True, arguments={"x-max-length-bytes": 10}).method.queue
    for b in (b"aaaaa", b"bbbbb", b"ccccc"):
        ch.basic_publish("", q, b)
    assert drain(ch, q) == [b"bbbbb", b"ccccc"]


def test_drop_head_dead_letters_with_reason_maxlen(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    src, dlq = dlx_pair(ch, **{"x-max-length": 1})
    got = Collector(conn, conn.channel(), dlq)
    ch.basic_publish("", src, b"first")
    ch.basic_publish("", src, b"second")
    ((_, props, body),) = got.wait(1, "the dropped head on the dead-letter queue")
    assert body == b"first"
    assert_death(props, "maxlen", src, "", [src])
    assert drain(ch, src) == [b"second"]


def test_reject_publish_nacks_when_full(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(
        unique("reject"), exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    ).method.queue
    ch.basic_publish("", q, b"fits")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused")
    assert drain(ch, q) == [b"fits"]
    ch.basic_publish("", q, b"room again")
    assert drain(ch, q) == [b"room again"]


def test_reject_publish_dlx_nacks_and_dead_letters(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    src, dlq = dlx_pair(ch, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    got = Collector(conn, conn.channel(), dlq)
    ch.basic_publish("", src, b"fits")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", src, b"refused")
    ((_, props, body),) = got.wait(1, "the refused message on the dead-letter queue")
    assert body == b"refused"
    assert props.headers["x-death"][0]["reason"] == "maxlen"


def test_max_priority_orders_by_priority_then_arrival(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("prio"), exclusive=True, arguments={"x-max-priority": 5}).method.queue
    for body, prio in [(b"p1", 1), (b"none", None), (b"p5a", 5), (b"p9", 9), (b"p3", 3), (b"p5b", 5)]:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    # 9 is capped at the queue's maximum, 5, and keeps its arrival order.
    assert drain(ch, q) == [b"p5a", b"p9", b"p5b", b"p3", b"p1", b"none"]


def test_without_max_priority_priority_is_ignored(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(unique("noprio"), exclusive=True).method.queue
    for body, prio in [(b"a", 1), (b"b", 9)]:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    assert drain(ch, q) == [b"a", b"b"]


def test_single_active_consumer_gets_everything_until_it_leaves(connect):
    c1, c2 = connect(), connect()
    q = unique("sac")
    c1.channel().queue_declare(q, auto_delete=False, arguments={"x-single-active-consumer": True})
    first = Collector(c1, c1.channel(), q)
    second = Collector(c2, c2.channel(), q)
    pub = c1.channel()
    pub.confirm_delivery()
    for i in range(6):
        pub.basic_publish("", q, str(i).encode())
    first.wait(6, "all six messages at the active consumer")
    assert second.items == []
    first.ch.basic_cancel(first.tag)
    for i in range(6, 9):
        pub.basic_publish("", q, str(i).encode())
    got = second.wait(3, "the next consumer taking over")
    assert [b for _, _, b in got] == [b"6", b"7", b"8"]
    pub.queue_delete(q)


def test_single_active_consumer_hands_over_unacked_messages(connect):
    c1, c2 = connect(), connect()
    q = unique("sac")
    c1.channel().queue_declare(q, arguments={"x-single-active-consumer": True})
    first = Collector(c1, c1.channel(), q, auto_ack=False)
    second = Collector(c2, c2.channel(), q, auto_ack=False)
    pub = c2.channel()
    pub.confirm_delivery()
    pub.basic_publish("", q, b"unacked")
    first.wait(1, "the delivery to the active consumer")
    c1.close()
    got = second.wait(1, "the unacked message handed to the next consumer")
    method, _, body = got[0]
    assert body == b"unacked" and method.redelivered
    pub.queue_delete(q)

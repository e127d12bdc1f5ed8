"""Exchanges: the four types, the predeclared ones, declare flags, delete,
exchange-to-exchange bindings, alternate exchanges.

Routing is checked with publisher confirms and basic.get: the confirm
arrives after the message was routed, so a get-empty afterwards is a
reliable "was not routed here"."""

from __future__ import annotations

import pika
import pytest

from conformance.support import channel_error, unique


def queues(ch, n, prefix="q"):
    return [ch.queue_declare(unique(prefix), exclusive=True).method.queue for _ in range(n)]


def drain(ch, q):
    """Every ready message body in q, in order."""
    out = []
    while True:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append(body)


@pytest.fixture
def cch(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def test_direct_exchange_routes_by_exact_key(cch):
    x = unique("direct")
    cch.exchange_declare(x, "direct", auto_delete=True)
    a, b = queues(cch, 2)
    cch.queue_bind(a, x, "red")
    cch.queue_bind(b, x, "green")
    cch.queue_bind(b, x, "red")
    cch.basic_publish(x, "red", b"r")
    cch.basic_publish(x, "green", b"g")
    cch.basic_publish(x, "blue", b"b")
    assert drain(cch, a) == [b"r"]
    assert drain(cch, b) == [b"r", b"g"]


def test_fanout_exchange_ignores_the_key(cch):
    x = unique("fanout")
    cch.exchange_declare(x, "fanout", auto_delete=True)
    qs = queues(cch, 3)
    for q in qs:
        cch.queue_bind(q, x, "ignored")
    cch.basic_publish(x, "anything", b"all")
    for q in qs:
        assert drain(cch, q) == [b"all"]


TOPIC_CASES = [
    # binding key, routing keys that match, keys that do not
    ("a.b.c", ["a.b.c"], ["a.b", "a.b.c.d", "a.x.c"]),
    ("a.*.c", ["a.b.c", "a.x.c"], ["a.c", "a.b.b.c", "b.b.c"]),
    ("a.#", ["a", "a.b", "a.b.c.d"], ["b.a", "ab"]),
    ("#.c", ["c", "a.c", "a.b.c"], ["c.a", "a.cc"]),
    ("*", ["x", ""], ["x.y"]),
    ("#", ["", "x", "x.y.z"], []),
    ("a.#.z", ["a.z", "a.b.z", "a.b.c.z"], ["a.b", "z"]),
    ("*.*", ["a.b"], ["a", "a.b.c"]),
    ("*.#.*", ["a.b", "a.b.c"], ["a"]),
    ("a.*.b", ["a..b"], ["a.b"]),  # an empty word is a word
    ("#.#", ["", "a", "a.b"], []),
    ("a.#.#.b", ["a.b", "a.x.b", "a.x.y.b"], ["a", "b"]),
    ("*.a.#", ["x.a", "x.a.y", "a.a.a.x"], ["a", "a.b.a"]),
]


@pytest.mark.parametrize("binding, hits, misses", TOPIC_CASES, ids=[c[0] for c in TOPIC_CASES])
def test_topic_exchange_matches_star_and_hash(cch, binding, hits, misses):
    x = unique("topic")
    cch.exchange_declare(x, "topic", auto_delete=True)
    (q,) = queues(cch, 1)
    cch.queue_bind(q, x, binding)
    for key in hits + misses:
        cch.basic_publish(x, key, key.encode() or b"<empty>")
    assert drain(cch, q) == [k.encode() or b"<empty>" for k in hits]


HEADERS_CASES = [
    # x-match, binding args, message headers, routed?
    ("all", {"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 3}, True),
    ("all", {"a": 1, "b": "x"}, {"a": 1}, False),
    ("all", {"a": 1}, {"a": 2}, False),
    ("any", {"a": 1, "b": "x"}, {"b": "x"}, True),
    ("any", {"a": 1, "b": "x"}, {"a": 2, "b": "y"}, False),
    ("all", {"x-k": 1}, {"x-k": 1}, True),  # plain all ignores x- keys: empty match
    ("all", {"a": 1, "x-k": 1}, {"a": 1}, True),
    ("all-with-x", {"a": 1, "x-k": 1}, {"a": 1}, False),
    ("all-with-x", {"a": 1, "x-k": 1}, {"a": 1, "x-k": 1}, True),
    ("any", {"x-k": 1}, {"x-k": 1}, False),
    ("any-with-x", {"x-k": 1}, {"x-k": 1}, True),
    ("any-with-x", {"x-k": 1, "a": 1}, {"a": 2, "x-k": 2}, False),
]


@pytest.mark.parametrize(
    "match, args, headers, routed",
    HEADERS_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(HEADERS_CASES)],
)
def test_headers_exchange_x_match(cch, match, args, headers, routed):
    x = unique("headers")
    cch.exchange_declare(x, "headers", auto_delete=True)
    (q,) = queues(cch, 1)
    cch.queue_bind(q, x, "", arguments={"x-match": match, **args})
    cch.basic_publish(x, "", b"m", pika.BasicProperties(headers=headers))
    assert drain(cch, q) == ([b"m"] if routed else [])


def test_headers_binding_without_x_match_defaults_to_all(cch):
    x = unique("headers")
    cch.exchange_declare(x, "headers", auto_delete=True)
    (q,) = queues(cch, 1)
    cch.queue_bind(q, x, "", arguments={"a": 1, "b": 2})
    cch.basic_publish(x, "", b"one", pika.BasicProperties(headers={"a": 1}))
    cch.basic_publish(x, "", b"both", pika.BasicProperties(headers={"a": 1, "b": 2}))
    assert drain(cch, q) == [b"both"]


def test_headers_binding_with_bad_x_match_is_refused(ch):
    x = unique("headers")
    ch.exchange_declare(x, "headers", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    err = channel_error(ch, lambda: ch.queue_bind(q, x, "", arguments={"x-match": "some"}))
    assert err.reply_code == 406, err


@pytest.mark.parametrize(
    "name, kind",
    [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ],
)
def test_predeclared_exchanges_exist_with_their_types(ch, name, kind):
    ch.exchange_declare(name, passive=True)
    # Redeclaring with the same shape is allowed; another type is not.
    ch.exchange_declare(name, kind, durable=True)
    other = "fanout" if kind != "fanout" else "direct"
    err = channel_error(ch, lambda: ch.exchange_declare(name, other, durable=True))
    assert err.reply_code == 406, err


def test_default_exchange_routes_by_queue_name(cch):
    (q,) = queues(cch, 1)
    cch.basic_publish("", q, b"direct to queue")
    assert drain(cch, q) == [b"direct to queue"]


def test_default_exchange_cannot_be_bound(ch):
    (q,) = queues(ch, 1)
    err = channel_error(ch, lambda: ch.queue_bind(q, "", q))
    assert err.reply_code == 403, err


def test_amq_prefix_is_reserved_for_new_exchanges(ch):
    err = channel_error(ch, lambda: ch.exchange_declare(unique("amq.mine"), "direct"))
    assert err.reply_code == 403, err


def test_passive_declare_of_a_missing_exchange_is_404(ch):
    err = channel_error(ch, lambda: ch.exchange_declare(unique("missing"), passive=True))
    assert err.reply_code == 404, err


def test_passive_declare_finds_an_existing_exchange(ch):
    x = unique("x")
    ch.exchange_declare(x, "topic", auto_delete=True)
    ch.exchange_declare(x, passive=True)


def test_passive_declare_ignores_the_type_and_flags_it_carries(ch):
    # amqplib's checkExchange sends an empty type; RabbitMQ reads only the name.
    x = unique("x")
    ch.exchange_declare(x, "topic", auto_delete=True)
    ch.exchange_declare(x, "", passive=True, durable=True)
    ch.exchange_declare("amq.direct", "no-such-type", passive=True)


def test_unknown_exchange_type_is_503_on_the_connection(conn):
    # RabbitMQ answers an unknown type with COMMAND_INVALID, closing the connection.
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.exchange_declare(unique("x"), "no-such-type")
    assert e.value.reply_code == 503, e.value


def test_durable_flag_is_kept_and_checked_on_redeclare(ch):
    x = unique("durable")
    ch.exchange_declare(x, "direct", durable=True)
    ch.exchange_declare(x, "direct", durable=True)
    err = channel_error(ch, lambda: ch.exchange_declare(x, "direct", durable=False))
    assert err.reply_code == 406, err
    assert "durable" in err.reply_text
    conn = ch.connection
    conn.channel().exchange_delete(x)


def test_redeclare_with_another_type_is_406(ch):
    x = unique("x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    err = channel_error(ch, lambda: ch.exchange_declare(x, "topic", auto_delete=True))
    assert err.reply_code == 406, err


def test_auto_delete_exchange_goes_with_its_last_binding(conn):
    ch = conn.channel()
    x = unique("ad")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    (q,) = queues(ch, 1)
    ch.queue_bind(q, x)
    ch.exchange_declare(x, passive=True)  # a new auto-delete exchange stays until used
    ch.queue_unbind(q, x)
    err = channel_error(ch, lambda: ch.exchange_declare(x, passive=True))
    assert err.reply_code == 404, err


def test_publishing_to_an_internal_exchange_is_403(conn):
    ch = conn.channel()
    x = unique("internal")
    ch.exchange_declare(x, "fanout", internal=True, auto_delete=True)
    err = channel_error(ch, lambda: ch.basic_publish(x, "", b"no"))
    assert err.reply_code == 403, err


def test_internal_exchange_is_reachable_through_a_binding(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    front, inner = unique("front"), unique("inner")
    ch.exchange_declare(front, "fanout", auto_delete=True)
    ch.exchange_declare(inner, "fanout", internal=True, auto_delete=True)
    ch.exchange_bind(inner, front)
    (q,) = queues(ch, 1)
    ch.queue_bind(q, inner)
    ch.basic_publish(front, "", b"via internal")
    assert drain(ch, q) == [b"via internal"]


def test_delete_if_unused_refuses_an_exchange_with_bindings(conn):
    ch = conn.channel()
    x = unique("x")
    ch.exchange_declare(x, "direct")
    (q,) = queues(ch, 1)
    ch.queue_bind(q, x, "k")
    err = channel_error(ch, lambda: ch.exchange_delete(x, if_unused=True))
    assert err.reply_code == 406, err
    ch = conn.channel()
    ch.queue_unbind(q, x, "k")
    ch.exchange_delete(x, if_unused=True)
    err = channel_error(ch, lambda: ch.exchange_declare(x, passive=True))
    assert err.reply_code == 404, err


def test_delete_removes_the_exchange_and_its_bindings(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    x = unique("x")
    ch.exchange_declare(x, "fanout")
    (q,) = queues(ch, 1)
    ch.queue_bind(q, x)
    ch.exchange_delete(x)
    ch.exchange_declare(x, "fanout", auto_delete=True)
    ch.basic_publish(x, "", b"after delete")
    assert drain(ch, q) == [], "the binding survived the exchange's deletion"


def test_predeclared_exchanges_cannot_be_deleted(ch):
    err = channel_error(ch, lambda: ch.exchange_delete("amq.direct"))
    assert err.reply_code == 403, err


def test_exchange_to_exchange_bindings_chain_and_unbind(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    src, mid = unique("src"), unique("mid")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(mid, "direct", auto_delete=True)
    ch.exchange_bind(mid, src, "orders.*")
    a, b = queues(ch, 2)
    ch.queue_bind(a, mid, "orders.new")
    ch.queue_bind(b, mid, "orders.old")
    ch.basic_publish(src, "orders.new", b"n")
    ch.basic_publish(src, "orders.old", b"o")
    ch.basic_publish(src, "other.new", b"x")
    assert drain(ch, a) == [b"n"]
    assert drain(ch, b) == [b"o"]
    ch.exchange_unbind(mid, src, "orders.*")
    ch.basic_publish(src, "orders.new", b"after unbind")
    assert drain(ch, a) == []
    ch.exchange_delete(src)


def test_exchange_binding_cycle_delivers_once(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    x, y = unique("x"), unique("y")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    ch.exchange_declare(y, "fanout", auto_delete=True)
    ch.exchange_bind(y, x)
    ch.exchange_bind(x, y)
    (q,) = queues(ch, 1)
    ch.queue_bind(q, x)
    ch.queue_bind(q, y)
    ch.basic_publish(x, "", b"once")
    assert drain(ch, q) == [b"once"]


def test_alternate_exchange_takes_unroutable_messages(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    ae, x = unique("ae"), unique("x")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(x, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    routed, unrouted = queues(ch, 2)
    ch.queue_bind(routed, x, "known")
    ch.queue_bind(unrouted, ae)
    ch.basic_publish(x, "known", b"k", mandatory=True)
    # mandatory is satisfied by the alternate exchange: no basic.return.
    ch.basic_publish(x, "unknown", b"u", mandatory=True)
    assert drain(ch, routed) == [b"k"]
    assert drain(ch, unrouted) == [b"u"]


def test_binding_to_a_missing_queue_or_exchange_is_404(conn):
    ch = conn.channel()
    err = channel_error(ch, lambda: ch.queue_bind(unique("nq"), "amq.direct", "k"))
    assert err.reply_code == 404, err
    ch = conn.channel()
    (q,) = queues(ch, 1)
    err = channel_error(ch, lambda: ch.queue_bind(q, unique("nx"), "k"))
    assert err.reply_code == 404, err

"""A consumer that stops reading holds back only itself: its deliveries
wait in its queue (prefetch, send window and TCP back-pressure), while
publishers keep getting confirms and other consumers keep receiving."""

from __future__ import annotations

from conformance.support import RawAmqp, basic_consume, pump, queue_declare, unique

MESSAGE = 16 * 1024
TOTAL = 3000  # 48 MiB through the slow consumer's queue: far past any socket buffer
BATCH = 250


def test_a_stalled_consumer_does_not_stall_other_connections(broker, connect):
    publisher, fast = connect(), connect()
    pch = publisher.channel()
    pch.confirm_delivery()
    fanout = unique("slowfan")
    pch.exchange_declare(fanout, "fanout", auto_delete=True)

    # The slow consumer: a raw socket that consumes without ack and then
    # never reads again.
    slow = RawAmqp(broker.host, broker.port)
    slow.handshake()
    slow.open_channel(1)
    slow_q = unique("slow")
    slow.send(queue_declare(1, slow_q))
    slow.expect_method(50, 11, 1)
    pch.queue_bind(slow_q, fanout)
    slow.send(basic_consume(1, slow_q, tag="slow", no_ack=True))
    slow.expect_method(60, 21, 1)

    fch = fast.channel()
    fast_q = fch.queue_declare("", exclusive=True).method.queue
    fch.queue_bind(fast_q, fanout)
    received = []
    fch.basic_consume(fast_q, lambda c, m, p, b: received.append(len(b)), auto_ack=True)

    try:
        body = b"s" * MESSAGE
        for sent in range(BATCH, TOTAL + 1, BATCH):
            for _ in range(BATCH):
                pch.basic_publish(fanout, "", body)  # waits for each confirm
            pump(fast, lambda: len(received) >= sent, f"the fast consumer to reach {sent} messages")
        assert received == [MESSAGE] * TOTAL
        # The slow consumer's backlog was held in its queue, not pushed at
        # its connection without bound.
        backlog = pch.queue_declare(slow_q, passive=True).method.message_count
        assert backlog > 0, "every message was handed to a consumer that reads nothing"
        # The broker still serves new work.
        probe = connect().channel()
        probe.queue_declare("", exclusive=True)
    finally:
        slow.close()
        pch.queue_delete(slow_q)

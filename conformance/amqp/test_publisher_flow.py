"""A publisher whose queue's consumers fall behind waits for them for at most
50 ms (docs/architecture.md, "Publishers wait for consumers that fall
behind"): a working consumer still gets everything in order, and neither a
stopped consumer nor one on the publisher's own connection stalls its
confirms."""

from __future__ import annotations

from conformance.support import pump, unique

# Past the 2000 ready messages at which a queue's consumers count as behind.
TOTAL = 4000


def publish_all(conn, queue: str) -> None:
    """Publishes TOTAL numbered messages with confirms, 500 at a time."""
    ch = conn.channel()
    ch.confirm_delivery()
    for start in range(0, TOTAL, 500):
        # Each basic_publish waits for its confirm; the batches keep the
        # loop's progress visible in a failure.
        for i in range(start, start + 500):
            ch.basic_publish("", queue, str(i).encode())


def test_a_working_consumer_gets_every_message_in_order(connect):
    consumer, publisher = connect(), connect()
    cch = consumer.channel()
    queue = unique("paced")
    cch.queue_declare(queue, auto_delete=True)
    cch.basic_qos(prefetch_count=100)
    got: list[int] = []

    def on_message(ch, method, _props, body):
        got.append(int(body))
        if len(got) % 50 == 0:
            ch.basic_ack(method.delivery_tag, multiple=True)

    cch.basic_consume(queue, on_message)
    publish_all(publisher, queue)
    pump(consumer, lambda: len(got) >= TOTAL, f"{TOTAL} deliveries")
    assert got == list(range(TOTAL))


def stopped_consumer(ch, prefix: str) -> str:
    """A queue whose one consumer takes a message and never acks it."""
    queue = unique(prefix)
    ch.queue_declare(queue, auto_delete=True)
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(queue, lambda *_: None)
    return queue


def test_a_stopped_consumer_does_not_stall_its_publisher(connect):
    consumer, publisher = connect(), connect()
    queue = stopped_consumer(consumer.channel(), "stopped")
    publish_all(publisher, queue)
    ready = publisher.channel().queue_declare(queue, passive=True).method.message_count
    assert ready == TOTAL - 1


def test_a_consumer_on_the_publishers_connection_does_not_stall_it(connect):
    conn = connect()
    queue = stopped_consumer(conn.channel(), "own")
    publish_all(conn, queue)
    ready = conn.channel().queue_declare(queue, passive=True).method.message_count
    assert ready == TOTAL - 1

"""stomp.py sending and subscribing in each version: the three ack modes,
NACK, prefetch, transactions and receipts."""

from __future__ import annotations

import socket

import pytest

from conformance.support import WAIT, deadline_for, unique

VERSIONS = ["1.0", "1.1", "1.2"]


@pytest.mark.parametrize("version", VERSIONS)
def test_send_and_receive_with_headers(stomp_client, version):
    c = stomp_client(version)
    queue = f"/queue/{unique('plain')}"
    c.subscribe(queue, "s")
    c.receipted(c.conn.send, queue, "hello", headers={"content-type": "text/plain", "x-colour": "blue"})
    m = c.events.message()
    assert m.body == "hello"
    assert m.headers["destination"] == queue
    assert m.headers["subscription"] == "s"
    assert m.headers["content-type"] == "text/plain"
    assert m.headers["x-colour"] == "blue"
    assert m.headers["message-id"]


@pytest.mark.parametrize("version", VERSIONS)
def test_client_individual_ack_settles_one_message(stomp_client, version, broker):
    c = stomp_client(version)
    queue = f"/queue/{unique('individual')}"
    c.subscribe(queue, "s", ack="client-individual")
    for body in ["a", "b"]:
        c.conn.send(queue, body)
    first, second = c.events.message("a"), c.events.message("b")
    c.ack(second, receipt="acked")
    c.conn.disconnect(receipt="bye")
    c.events.receipt("bye")
    # Only the unacknowledged first message comes back.
    again = stomp_client(version)
    again.subscribe(queue, "t")
    m = again.events.message("the unacknowledged message, redelivered")
    assert (m.body, m.headers["redelivered"]) == ("a", "true")
    again.receipted(again.conn.send, queue, "marker")
    again.events.no_message("marker")


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_ack_is_cumulative(stomp_client, version):
    c = stomp_client(version)
    queue = f"/queue/{unique('cumulative')}"
    c.subscribe(queue, "s", ack="client")
    for body in ["1", "2", "3"]:
        c.conn.send(queue, body)
    frames = [c.events.message(b) for b in ["1", "2", "3"]]
    c.ack(frames[1], receipt="up-to-2")
    c.conn.disconnect(receipt="bye")
    c.events.receipt("bye")
    again = stomp_client(version)
    again.subscribe(queue, "t")
    assert again.events.message("the third, never acknowledged").body == "3"
    again.receipted(again.conn.send, queue, "marker")
    again.events.no_message("marker")


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_requeues_and_requeue_false_discards(stomp_client, version):
    c = stomp_client(version)
    queue = f"/queue/{unique('nack')}"
    c.subscribe(queue, "s", ack="client-individual")
    c.conn.send(queue, "again")
    m = c.events.message()
    c.nack(m)
    m = c.events.message("the message after NACK")
    assert m.headers["redelivered"] == "true"
    c.nack(m, requeue="false")
    c.receipted(c.conn.send, queue, "marker")
    marker = c.events.message("the marker")
    assert marker.body == "marker", "the discarded message did not come back"


def test_prefetch_count_bounds_what_is_outstanding(stomp_client):
    c = stomp_client("1.2")
    queue = f"/queue/{unique('prefetch')}"
    c.subscribe(queue, "s", ack="client-individual", **{"prefetch-count": "2"})
    for i in range(4):
        c.receipted(c.conn.send, queue, str(i))
    got = [c.events.message(str(i)) for i in range(2)]
    assert c.events.messages.empty(), "a third message arrived past the prefetch of 2"
    c.ack(got[0])
    assert c.events.message("the third, once one was acknowledged").body == "2"


@pytest.mark.parametrize("version", VERSIONS)
def test_transactions_cover_send_and_ack(stomp_client, version):
    c = stomp_client(version)
    queue = f"/queue/{unique('tx')}"
    c.subscribe(queue, "s", ack="client-individual")
    c.conn.send(queue, "before")
    before = c.events.message("before")
    tx = c.conn.begin()
    c.conn.send(queue, "inside", transaction=tx)
    h = before.headers
    if version == "1.2":
        c.conn.ack(h["ack"], transaction=tx)
    elif version == "1.1":
        c.conn.ack(h["message-id"], h["subscription"], transaction=tx)
    else:
        c.conn.ack(h["message-id"], transaction=tx)
    aborted = c.conn.begin()
    c.conn.send(queue, "aborted", transaction=aborted)
    c.receipted(c.conn.abort, aborted)
    assert c.events.messages.empty(), "a message sent in a transaction arrived before COMMIT"
    c.receipted(c.conn.commit, tx)
    assert c.events.message("the message sent in the committed transaction").body == "inside"
    c.receipted(c.conn.send, queue, "marker")
    c.events.no_message("marker")


def test_every_frame_with_a_receipt_gets_one_in_order(stomp_client):
    c = stomp_client("1.2")
    queue = f"/queue/{unique('receipts')}"
    c.conn.subscribe(queue, "s", headers={"receipt": "1"})
    c.conn.send(queue, "persistent", headers={"receipt": "2", "persistent": "true"})
    c.conn.send(queue, "transient", headers={"receipt": "3"})
    c.conn.unsubscribe("s", headers={"receipt": "4"})
    for rid in ["1", "2", "3", "4"]:
        c.events.receipt(rid)


def test_bodies_with_nul_bytes_arrive_whole(stomp_client):
    c = stomp_client("1.2", auto_decode=False)
    queue = f"/queue/{unique('binary')}"
    c.subscribe(queue, "s")
    c.receipted(c.conn.send, queue, b"a\x00b\x00c")
    m = c.events.message()
    assert m.body == b"a\x00b\x00c"
    assert m.headers["content-length"] == "5"


def test_a_stopped_subscriber_does_not_stall_its_sender(stomp_client):
    """Past 2000 waiting messages a sender waits up to 50 ms for the
    queue's subscribers to catch up (docs/architecture.md); one that has
    stopped costs one wait, and every SEND still gets through."""
    subscriber, sender = stomp_client(), stomp_client()
    queue = f"/queue/{unique('stopped')}"
    subscriber.subscribe(queue, "s", ack="client", **{"prefetch-count": "1"})
    total = 4000
    for i in range(total):
        sender.conn.send(queue, str(i))
    # Receipts come in order: this one follows every SEND before it.
    sender.receipted(sender.conn.send, queue, "last")
    first = subscriber.events.message("the first message")
    assert first.body == "0"
    assert subscriber.events.messages.empty(), "prefetch 1 and no ack: one message only"


@pytest.mark.parametrize("ack", ["auto", "client"])
def test_unsubscribe_loses_no_message_in_flight(broker, ch, ack):
    """UNSUBSCRIBE with a receipt right behind SUBSCRIBE on a deep queue:
    by the RECEIPT, every message was either delivered or is ready again
    (the unacknowledged stay with the connection, as in RabbitMQ)."""
    name = unique("unsub")
    ch.queue_declare(name)
    n = 3000
    for _ in range(n):
        ch.basic_publish("", name, b"m")
    sock = socket.create_connection((broker.stomp_host, broker.stomp_port), timeout=WAIT)
    try:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        frames = StompFrames(sock)
        assert frames.next("CONNECTED").startswith(b"CONNECTED\n")
        sock.sendall(
            f"SUBSCRIBE\nid:s\ndestination:/queue/{name}\nack:{ack}\n\n\0".encode()
            + b"UNSUBSCRIBE\nid:s\nreceipt:r\n\n\0"
        )
        delivered = 0
        while True:
            frame = frames.next("MESSAGE frames, then the RECEIPT")
            if frame.startswith(b"MESSAGE\n"):
                delivered += 1
            else:
                assert frame.startswith(b"RECEIPT\n") and b"receipt-id:r\n" in frame, frame
                break
        left = ch.queue_declare(name, passive=True).method.message_count
    finally:
        sock.close()
    assert delivered + left == n, f"{n - delivered - left} of {n} messages neither delivered nor ready"
    ch.queue_delete(name)


class StompFrames:
    """Splits a raw STOMP stream into frames (bodies here hold no NUL)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def next(self, what: str) -> bytes:
        left = deadline_for(what)
        while b"\0" not in self.buf:
            self.sock.settimeout(left())
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue  # left() names what was waited for
            assert chunk, f"the broker closed the socket while waiting for {what}"
            self.buf += chunk
        frame, self.buf = self.buf.split(b"\0", 1)
        return frame.lstrip(b"\r\n")

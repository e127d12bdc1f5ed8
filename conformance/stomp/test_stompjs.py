"""@stomp/stompjs, the STOMP client of most JavaScript applications,
against the broker over TCP through @stomp/tcp-wrapper (stompjs's
documented way to run in Node without WebSocket). Each client is a Node
process of its own running clients/stompjs_driver.js: commands go in on
its stdin and stompjs's callbacks come out as JSON events, which the test
waits on, each with a deadline that names it. stomp.py meets stompjs in
the cross test. scripts/install-stomp-clients.sh installs stompjs.

stompjs itself limits what a test may send through it: it escapes header
values only in 1.2 (in 1.0 and 1.1 it neither escapes nor unescapes), and
its 1.2 unescaping is a chain of replaces, so a backslash followed by `r`,
`n` or `c` in a value does not survive the trip back. The values below
stay clear of both.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.support import deadline_for, stop_child, unique

CLIENTS = Path(__file__).resolve().parent / "clients"
DRIVER = CLIENTS / "stompjs_driver.js"
INSTALL_HINT = "run scripts/install-stomp-clients.sh (scripts/test does)"


@dataclass
class Message:
    """A MESSAGE as stompjs handed it over."""

    key: str  # the driver's handle, for ack/nack
    headers: dict
    body: str
    binary: bytes
    #: Whether a subscription callback had it (else onUnhandledMessage).
    handled: bool
    #: Its place among all the client's events.
    seq: int

    @property
    def subscription(self) -> str:
        return self.headers["subscription"]


class StompJs:
    """One stompjs client in a Node process of its own."""

    def __init__(self, broker, name: str):
        node = shutil.which("node")
        assert node, f"node is not installed: {INSTALL_HINT}"
        assert (CLIENTS / "node_modules" / "@stomp" / "stompjs").is_dir(), f"stompjs is not installed: {INSTALL_HINT}"
        self.broker, self.name = broker, name
        self.cond = threading.Condition()
        self.events: dict[str, list[dict]] = defaultdict(list)
        self.exit_code: int | None = None
        self.stderr: list[str] = []
        self._receipts = 0
        self.proc = subprocess.Popen(
            [node, str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            e = json.loads(line)
            with self.cond:
                self.events[e["event"]].append(e)
                self.cond.notify_all()
        code = self.proc.wait()
        with self.cond:
            self.exit_code = code
            self.cond.notify_all()

    def post(self, **command) -> None:
        """Sends the driver a command and waits for nothing."""
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def take(self, kind: str, what: str, match=lambda e: True) -> dict:
        """The first `kind` event for which `match` holds, removed; fails
        at once if a command failed in stompjs or the process ended."""
        left = deadline_for(f"stompjs {self.name}: {what}")
        with self.cond:
            while True:
                failed = self.events["failed"]
                assert not failed, f"stompjs {self.name}: a command failed: {failed}"
                for i, e in enumerate(self.events[kind]):
                    if match(e):
                        return self.events[kind].pop(i)
                assert self.exit_code is None, (
                    f"stompjs {self.name} exited {self.exit_code} before {what}:\n" + "".join(self.stderr)
                )
                self.cond.wait(left())

    def count(self, kind: str) -> int:
        with self.cond:
            return len(self.events[kind])

    # ---- commands ------------------------------------------------------

    def connect(self, versions=None, heartbeat=(0, 0), login="guest", passcode="guest", **headers) -> dict:
        """Connects; returns the CONNECTED event (headers, negotiated version)."""
        self.start_connect(versions, heartbeat, login, passcode, **headers)
        return self.take("connected", "CONNECTED")

    def start_connect(self, versions=None, heartbeat=(0, 0), login="guest", passcode="guest", **headers) -> None:
        self.post(
            op="connect",
            host=self.broker.stomp_host,
            port=self.broker.stomp_port,
            versions=versions,
            heartbeat=list(heartbeat),
            headers={"login": login, "passcode": passcode, **headers},
        )

    def _receipt_id(self) -> str:
        self._receipts += 1
        return f"{self.name}-r{self._receipts}"

    def receipt(self, receipt_id: str, what: str = "") -> dict:
        return self.take("receipt", f"RECEIPT {receipt_id} {what}".strip(), lambda e: e["id"] == receipt_id)

    def _command(self, op: str, receipt: bool, what: str, headers: dict | None = None, **fields) -> str | None:
        """Sends a command; with `receipt` asks for a RECEIPT and waits for it."""
        headers = dict(headers or {})
        rid = None
        if receipt:
            rid = headers.setdefault("receipt", self._receipt_id())
        self.post(op=op, headers=headers, **fields)
        if receipt:
            self.receipt(rid, f"for {what}")
        return rid

    def subscribe(self, destination: str, sub_id: str, ack: str = "auto", receipt=True, **headers) -> None:
        headers = {"ack": ack, **headers}
        self._command("subscribe", receipt, f"SUBSCRIBE {destination}", headers, id=sub_id, destination=destination)

    def unsubscribe(self, sub_id: str, receipt=True, headers=None) -> None:
        self._command("unsubscribe", receipt, f"UNSUBSCRIBE {sub_id}", headers, id=sub_id)

    def send(self, destination: str, body: str = "", headers=None, receipt=True, binary: bytes | None = None) -> None:
        fields = {"destination": destination}
        if binary is not None:
            fields["binary"] = base64.b64encode(binary).decode()
        else:
            fields["body"] = body
        self._command("send", receipt, f"SEND to {destination}", headers, **fields)

    def ack(self, m: Message, receipt=True, headers=None) -> None:
        self._command("ack", receipt, f"ACK of {m.body!r}", headers, message=m.key)

    def nack(self, m: Message, receipt=True, headers=None) -> None:
        self._command("nack", receipt, f"NACK of {m.body!r}", headers, message=m.key)

    def begin(self, tx: str) -> None:
        self.post(op="begin", transaction=tx)

    def commit(self, tx: str) -> None:
        self.post(op="commit", transaction=tx)

    def abort(self, tx: str) -> None:
        self.post(op="abort", transaction=tx)

    def disconnect(self) -> dict:
        """stompjs's deactivate(): DISCONNECT with a receipt, then the socket
        closes. Returns the RECEIPT that answered the DISCONNECT."""
        self.post(op="disconnect")
        frame = self.take("disconnected", "the RECEIPT for DISCONNECT (onDisconnect)")
        self.take("close", "the socket to close after DISCONNECT")
        return frame

    # ---- events --------------------------------------------------------

    def message(self, what: str = "a MESSAGE") -> Message:
        """The next MESSAGE, whichever subscription (or none) it is for."""
        e = self.take("message", what)
        return Message(e["key"], e["headers"], e["body"], base64.b64decode(e["binary"]), e["handled"], e["seq"])

    def messages_until(self, markers: dict[str, str], what: str) -> list[Message]:
        """Every MESSAGE, in arrival order, until each subscription in
        `markers` has had its marker body. Within one subscription
        messages keep their order, so whatever should not have arrived
        before a marker is in the list if it arrived at all."""
        got: list[Message] = []
        waiting = dict(markers)
        while waiting:
            seen = [(g.subscription, g.body) for g in got]
            m = self.message(f"{what}: markers {waiting} still to come, after {seen}")
            got.append(m)
            if waiting.get(m.subscription) == m.body:
                del waiting[m.subscription]
        return got

    def close(self) -> None:
        stop_child(self.proc)


@pytest.fixture
def stompjs(broker):
    """Makes stompjs clients (connected unless told otherwise); ends them all."""
    made: list[StompJs] = []

    def make(name: str = "js", connect: bool = True, **options) -> StompJs:
        c = StompJs(broker, f"{name}{len(made) + 1}")
        made.append(c)
        if connect:
            c.connected = c.connect(**options)
        return c

    yield make
    for c in made:
        c.close()


def queue_name(prefix: str) -> str:
    return f"/queue/{unique(prefix)}"


def topic_key(prefix: str) -> str:
    return unique(prefix).replace("-", "")


# --------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------


def test_connect_as_guest_with_heart_beats_both_ways(stompjs):
    c = stompjs(connect=False)
    # stompjs sends heart-beat: <outgoing>,<incoming>; the broker answers
    # <its outgoing>,<its incoming> = the client's incoming, outgoing.
    connected = c.connect(heartbeat=(1000, 600))
    h = connected["headers"]
    assert connected["version"] == "1.2"
    assert h["version"] == "1.2"
    assert h["server"].startswith("ferrymq/")
    assert h["session"]
    assert h["heart-beat"] == "600,1000"
    # The broker writes an EOL every 600 ms while idle, which stompjs
    # counts as a heart-beat. Five of them take 3 s, longer than the 2 s
    # (two client intervals) after which the broker would close a silent
    # connection: stompjs's own pings kept it open.
    for i in range(5):
        c.take("heartbeat", f"heart-beat {i + 1} of 5 from the broker")
    assert c.count("heartbeat_lost") == 0 and c.count("close") == 0
    q = queue_name("js-hb")
    c.subscribe(q, "s")
    c.send(q, "still connected")
    assert c.message("a message after the heart-beats").body == "still connected"
    receipt = c.disconnect()
    assert receipt["headers"]["receipt-id"].startswith("close-")


def test_without_heart_beats_none_are_negotiated(stompjs):
    c = stompjs(connect=False)
    h = c.connect(heartbeat=(0, 0))["headers"]
    assert h["heart-beat"] == "0,0"


def test_a_bad_passcode_reaches_on_stomp_error(stompjs):
    c = stompjs(connect=False)
    c.start_connect(passcode="wrong")
    e = c.take("stomp_error", "the ERROR refusing the login")
    assert e["headers"]["message"] == "Bad CONNECT"
    assert "bad login or passcode" in e["body"]
    c.take("close", "the broker to close the refused connection")
    assert c.count("connected") == 0


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_each_version_sends_receives_and_acks(stompjs, version):
    """stompjs names the message in an ACK by `message-id` in 1.0 and 1.1
    and by `id` (the MESSAGE's `ack`) in 1.2; the broker must read each."""
    c = stompjs(versions=[version])
    # stompjs reports no version for 1.0, whose CONNECTED names none.
    assert c.connected.get("version") == (None if version == "1.0" else version)
    assert c.connected["headers"].get("version") == (None if version == "1.0" else version)
    q = queue_name(f"js-v{version}")
    c.subscribe(q, "s", ack="client-individual")
    for body in ("first", "second"):
        c.send(q, body, {"content-type": "text/plain", "x-version": version})
    got = [c.message(f"message {b!r}") for b in ("first", "second")]
    assert [(m.body, m.subscription, m.headers["destination"]) for m in got] == [
        ("first", "s", q),
        ("second", "s", q),
    ]
    assert all(m.headers["x-version"] == version and m.headers["content-type"] == "text/plain" for m in got)
    assert ("ack" in got[0].headers) == (version == "1.2"), "the ack header is 1.2's"
    c.ack(got[1])
    c.disconnect()
    # Only the unacknowledged first message is left, redelivered.
    again = stompjs(versions=[version])
    again.subscribe(q, "t")
    m = again.message("the unacknowledged message")
    assert (m.body, m.headers["redelivered"]) == ("first", "true")
    again.send(q, "marker")
    assert again.message("the marker").body == "marker", "the acknowledged message is gone"


# --------------------------------------------------------------------------
# Destinations and headers
# --------------------------------------------------------------------------


def test_queue_send_carries_custom_headers_and_content_type(stompjs):
    sub, pub = stompjs("sub"), stompjs("pub")
    q = queue_name("js-headers")
    sub.subscribe(q, "q")
    headers = {
        "content-type": "application/json;charset=utf-8",
        "correlation-id": "corr-42",
        "persistent": "true",
        "priority": "5",
        # 1.2 escaping both ways: a colon, a backslash, a line break.
        "x-path": "C:\\temp\\data.json",
        "x-lines": "line one\nline two",
        "x-unicode": "héllo ✓",
        "x-empty": "",
    }
    pub.send(q, '{"n": 1, "text": "ünïcode"}', headers)
    m = sub.message("the message with custom headers")
    assert m.body == '{"n": 1, "text": "ünïcode"}'
    assert m.handled and m.subscription == "q"
    h = m.headers
    assert h["destination"] == q
    assert h["message-id"]
    assert h["redelivered"] == "false"
    assert "ack" not in h, "an auto-acknowledged message has no ack header"
    assert int(h["content-length"]) == len(m.body.encode())
    for name, value in headers.items():
        assert h.get(name) == value, f"header {name}: sent {value!r}, got {h.get(name)!r}"


def test_topic_and_exchange_destinations(stompjs):
    """/topic/k subscribers each get every message; /exchange/amq.topic/k.*
    is a binding on the same exchange with a wildcard."""
    base = topic_key("jstopic")
    a, b = stompjs("a"), stompjs("b")
    a.subscribe(f"/topic/{base}.one", "t")
    a.subscribe(f"/exchange/amq.topic/{base}.*", "x")
    b.subscribe(f"/topic/{base}.one", "t2")
    b.send(f"/topic/{base}.one", "to one", {"content-type": "text/plain", "x-k": "v"})
    # Sent to the exchange by name, it matches the wildcard binding only.
    b.send(f"/exchange/amq.topic/{base}.two", "to two")
    b.send(f"/topic/{base}.one", "end")
    got = a.messages_until({"t": "end", "x": "end"}, "topic and exchange subscriptions")
    assert sorted((m.subscription, m.body) for m in got) == [
        ("t", "end"),
        ("t", "to one"),
        ("x", "end"),
        ("x", "to one"),
        ("x", "to two"),
    ]
    for m in got:
        # A message's destination is its own, amq.topic shown as /topic/.
        key = "two" if m.body == "to two" else "one"
        assert m.headers["destination"] == f"/topic/{base}.{key}", m.headers
    first = next(m for m in got if m.body == "to one")
    assert (first.headers["content-type"], first.headers["x-k"]) == ("text/plain", "v")
    # The other subscriber of /topic/<base>.one has its own copy of each.
    assert [b.message(f"copy {i} at the second subscriber").body for i in (1, 2)] == ["to one", "end"]


def test_a_binary_body_with_nul_bytes_travels_whole(stompjs):
    """stompjs frames a binary body by content-length; NULs inside must not
    end the frame either way."""
    sub, pub = stompjs("sub"), stompjs("pub")
    q = queue_name("js-binary")
    sub.subscribe(q, "s")
    body = bytes(range(256)) * 4096  # 1 MiB, NULs included
    pub.send(q, headers={"content-type": "application/octet-stream"}, binary=body)
    m = sub.message("the 1 MiB binary message")
    assert m.headers["content-type"] == "application/octet-stream"
    assert m.headers["content-length"] == str(len(body))
    assert len(m.binary) == len(body) and m.binary == body


# --------------------------------------------------------------------------
# Acknowledgements, receipts, transactions
# --------------------------------------------------------------------------


def test_client_individual_ack_and_nack(stompjs):
    """NACK requeues (the message comes back, redelivered) unless it says
    requeue:false, which discards it; ACK settles just the one message."""
    sub, pub = stompjs("sub"), stompjs("pub")
    q = queue_name("js-nack")
    sub.subscribe(q, "s", ack="client-individual")
    for body in ("m0", "m1", "m2"):
        pub.send(q, body)
    m0, m1, m2 = (sub.message(f"message {b}") for b in ("m0", "m1", "m2"))
    assert [m.body for m in (m0, m1, m2)] == ["m0", "m1", "m2"]
    assert all(m.headers["ack"] for m in (m0, m1, m2)), "client-individual messages carry ack in 1.2"
    assert len({m.headers["ack"] for m in (m0, m1, m2)}) == 3
    sub.ack(m1)
    sub.nack(m0)
    sub.nack(m2, headers={"requeue": "false"})
    back = sub.message("m0 again after its NACK")
    assert (back.body, back.headers["redelivered"]) == ("m0", "true")
    sub.ack(back)
    # m2 was discarded and m1 settled: only the marker comes now.
    pub.send(q, "marker")
    marker = sub.message("the marker")
    assert marker.body == "marker"
    sub.ack(marker)
    # An unacknowledged message is requeued, not lost, when its consumer goes.
    pub.send(q, "left over")
    left = sub.message("the message left unacknowledged")
    assert left.body == "left over"
    sub.disconnect()
    other = stompjs("other")
    other.subscribe(q, "s2", ack="client-individual")
    m = other.message("the left-over message at the next consumer")
    assert (m.body, m.headers["redelivered"]) == ("left over", "true")


def test_client_ack_settles_everything_up_to_the_message(stompjs):
    c = stompjs()
    q = queue_name("js-cumulative")
    c.subscribe(q, "s", ack="client")
    for body in ("1", "2", "3"):
        c.send(q, body)
    got = [c.message(f"message {b}") for b in ("1", "2", "3")]
    c.ack(got[1])
    c.disconnect()
    again = stompjs()
    again.subscribe(q, "t")
    m = again.message("the one message the cumulative ACK left")
    assert (m.body, m.headers["redelivered"]) == ("3", "true")
    again.send(q, "marker")
    assert again.message("the marker").body == "marker"


def test_prefetch_count_bounds_unacknowledged_messages(stompjs):
    """RabbitMQ's prefetch-count, as stompjs applications set it: a consumer
    at its bound gets nothing more, so another consumer of the queue gets
    it all, until an ACK makes room."""
    capped, other, pub = stompjs("capped"), stompjs("other"), stompjs("pub")
    q = queue_name("js-prefetch")
    capped.subscribe(q, "s", ack="client-individual", **{"prefetch-count": "1"})
    pub.send(q, "m1")
    first = capped.message("m1 at the capped consumer")
    assert first.body == "m1"
    other.subscribe(q, "o")
    for body in ("m2", "m3"):
        pub.send(q, body)
    # Round robin would have given the capped consumer one of these.
    assert [other.message(f"{b} at the other consumer").body for b in ("m2", "m3")] == ["m2", "m3"]
    other.unsubscribe("o")
    capped.ack(first)
    pub.send(q, "m4")
    assert capped.message("m4 once m1 was acknowledged").body == "m4"


def test_receipts_for_send_subscribe_and_unsubscribe_come_in_frame_order(stompjs):
    c = stompjs()
    q = queue_name("js-receipts")
    # Nothing waited for in between: the receipts must come in this order.
    c.post(op="subscribe", id="s", destination=q, headers={"ack": "auto", "receipt": "sub"})
    for i in range(10):
        # Persistent sends to a durable queue: receipted once on disk.
        c.post(op="send", destination=q, body=f"n{i}", headers={"receipt": f"send-{i}", "persistent": "true"})
    c.post(op="unsubscribe", id="s", headers={"receipt": "unsub"})
    expected = ["sub", *(f"send-{i}" for i in range(10)), "unsub"]
    receipts = [c.take("receipt", f"receipt {i + 1} of {len(expected)}") for i in range(len(expected))]
    assert [r["id"] for r in receipts] == expected
    unsubscribed = receipts[-1]["seq"]
    # What the subscription had not taken by UNSUBSCRIBE stays in the
    # queue for the next one: each message once, in order, none to the
    # old subscription after its UNSUBSCRIBE was receipted.
    c.subscribe(q, "s-new")
    c.send(q, "after")
    got = c.messages_until({"s-new": "after"}, "the ten messages and 'after'")
    assert [m.body for m in got] == [*(f"n{i}" for i in range(10)), "after"]
    old = [m for m in got if m.subscription == "s"]
    assert all(m.seq < unsubscribed for m in old), "no MESSAGE for a subscription after its UNSUBSCRIBE's RECEIPT"
    assert [m.subscription for m in got] == ["s"] * len(old) + ["s-new"] * (len(got) - len(old))


def test_a_transaction_commits_and_an_aborted_one_discards(stompjs):
    sub, pub = stompjs("sub"), stompjs("pub")
    q = queue_name("js-tx")
    sub.subscribe(q, "s")
    pub.begin("tx1")
    # A SEND in a transaction is receipted when the broker holds it.
    pub.send(q, "a", {"transaction": "tx1"})
    pub.send(q, "b", {"transaction": "tx1", "persistent": "true"})
    # Held until COMMIT: a message sent outside the transaction overtakes them.
    pub.send(q, "outside")
    assert sub.message("the message outside the transaction").body == "outside"
    pub.commit("tx1")
    pub.send(q, "after commit")
    assert [sub.message(f"message {i + 1} after COMMIT").body for i in range(3)] == ["a", "b", "after commit"]
    pub.begin("tx2")
    pub.send(q, "aborted", {"transaction": "tx2"})
    pub.abort("tx2")
    pub.send(q, "after abort")
    assert sub.message("the marker after ABORT").body == "after abort", "ABORT discarded the SEND"


def test_an_ack_in_a_transaction_counts_only_when_committed(stompjs):
    pub = stompjs("pub")
    q = queue_name("js-txack")
    pub.send(q, "x")
    first = stompjs("first")
    first.subscribe(q, "s", ack="client-individual")
    m = first.message("x at the first consumer")
    first.begin("t")
    first.ack(m, headers={"transaction": "t"})
    first.abort("t")
    first.disconnect()
    second = stompjs("second")
    second.subscribe(q, "s", ack="client-individual")
    m = second.message("x again: the ACK was aborted")
    assert (m.body, m.headers["redelivered"]) == ("x", "true")
    second.begin("t")
    second.ack(m, headers={"transaction": "t"})
    second.commit("t")
    second.disconnect()
    third = stompjs("third")
    third.subscribe(q, "s")
    pub.send(q, "marker")
    assert third.message("the marker: the committed ACK settled x").body == "marker"


# --------------------------------------------------------------------------
# stompjs and stomp.py
# --------------------------------------------------------------------------


@pytest.mark.parametrize("py_version", ["1.1", "1.2"])
def test_a_stompjs_request_and_a_stomp_py_reply(stompjs, stomp_client, py_version):
    """stompjs asks with reply-to /temp-queue/...; the stomp.py responder
    sees a /reply-queue/ destination and answers there; the answer reaches
    stompjs's onUnhandledMessage, as stompjs documents for RabbitMQ's
    temporary queues."""
    service = queue_name("js-service")
    responder = stomp_client(py_version)
    responder.subscribe(service, "svc")
    js = stompjs()
    js.send(
        service,
        "what time is it?",
        {
            "reply-to": "/temp-queue/answers",
            "correlation-id": "q-1",
            "content-type": "text/plain",
            "x-path": "C:\\temp",
            "x-lines": "one\ntwo",
        },
    )
    req = responder.events.message("stompjs's request at stomp.py")
    h = req.headers
    assert req.body == "what time is it?"
    assert (h["correlation-id"], h["content-type"], h["x-path"], h["x-lines"]) == (
        "q-1",
        "text/plain",
        "C:\\temp",
        "one\ntwo",
    )
    assert h["reply-to"].startswith("/reply-queue/"), h["reply-to"]
    responder.receipted(
        responder.conn.send,
        h["reply-to"],
        "noon",
        headers={"correlation-id": h["correlation-id"], "x-from": "stomp.py", "x-ratio": "1:2"},
    )
    reply = js.message("stomp.py's reply on the temp queue")
    assert not reply.handled, "a temp-queue reply has no subscription of stompjs's own"
    assert reply.body == "noon"
    assert reply.subscription == "/temp-queue/answers"
    assert reply.headers["destination"] == "/temp-queue/answers"
    assert (reply.headers["correlation-id"], reply.headers["x-from"], reply.headers["x-ratio"]) == (
        "q-1",
        "stomp.py",
        "1:2",
    )


def test_stomp_py_and_stompjs_on_one_queue_and_topic(stompjs, stomp_client):
    q = queue_name("js-py")
    key = topic_key("jspy")
    py = stomp_client("1.2")
    py.subscribe(f"/topic/{key}", "t")
    js = stompjs()
    js.subscribe(q, "q", ack="client-individual")
    py.receipted(py.conn.send, q, "from python", headers={"content-type": "text/plain", "x-lang": "py"})
    m = js.message("stomp.py's message at stompjs")
    assert (m.body, m.headers["content-type"], m.headers["x-lang"]) == ("from python", "text/plain", "py")
    js.ack(m)
    js.send(f"/topic/{key}", "from js", {"content-type": "text/plain", "x-lang": "js"})
    got = py.events.message("stompjs's topic message at stomp.py")
    assert (got.body, got.headers["destination"], got.headers["x-lang"]) == ("from js", f"/topic/{key}", "js")


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, destination, message, explained",
    [
        ("send", "/nowhere/{name}", "Unknown destination", "'/nowhere/{name}' is not a valid destination"),
        ("subscribe", "/nowhere/{name}", "Unknown destination", "'/nowhere/{name}' is not a valid destination"),
        ("subscribe", "/amq/queue/{name}", "not_found", "no queue '{name}'"),
    ],
    ids=["send-unknown-type", "subscribe-unknown-type", "subscribe-missing-amq-queue"],
)
def test_an_error_reaches_on_stomp_error_and_other_clients_carry_on(stompjs, op, destination, message, explained):
    name = unique("missing")
    destination, explained = destination.format(name=name), explained.format(name=name)
    good = stompjs("good")
    q = queue_name("js-good")
    good.subscribe(q, "s")
    bad = stompjs("bad")
    headers = {"receipt": "doomed"}
    if op == "send":
        bad.post(op="send", destination=destination, body="x", headers=headers)
    else:
        bad.post(op="subscribe", id="s", destination=destination, headers=headers)
    e = bad.take("stomp_error", f"the ERROR for {op.upper()} to {destination}")
    assert e["headers"]["message"] == message
    assert e["headers"]["receipt-id"] == "doomed", "the ERROR names the failed frame's receipt"
    # The plain-text body says what was wrong with which destination.
    assert explained in e["body"], e["body"]
    bad.take("close", "the broker to close the connection after ERROR")
    assert bad.count("receipt") == 0, "no RECEIPT for the failed frame"
    # The other client on the broker is untouched.
    good.send(q, "still here")
    assert good.message("a message after the other client's ERROR").body == "still here"
    assert good.count("stomp_error") == 0 and good.count("close") == 0

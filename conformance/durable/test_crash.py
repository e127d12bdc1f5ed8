"""kill -9 the broker while AMQP, MQTT and STOMP publishers wait for their
confirmations, three times over one data directory, then drain.

Publishers, all at once:
- AMQP (pika): persistent messages with publisher confirms to a durable
  queue; confirmed = basic.ack.
- MQTT 3.1.1 (paho-mqtt): QoS 1 to a topic a clean-session=false
  subscriber (offline meanwhile) is subscribed to; confirmed = PUBACK.
- STOMP (stomp.py): SEND persistent:true with a receipt to a durable
  /queue/; confirmed = RECEIPT.

Every confirmed message must come out of the drain exactly once (a second
copy is tolerated only when flagged as redelivered); published but
unconfirmed ones may or may not. The figures are printed.
"""

from __future__ import annotations

import logging
import queue
import threading

import paho.mqtt.client as mqtt
import pika
import pytest
import stomp

from conformance.support import WAIT, Broker, Timeout, deadline_for

# pika logs every connection the kill breaks, as an error.
logging.getLogger("pika").setLevel(logging.CRITICAL)

ROUNDS = 3
#: Confirmations each publisher must collect in a round before the kill.
PER_ROUND = 150
WINDOW = 32
AMQP_QUEUE = "crash-amqp"
STOMP_QUEUE = "/queue/crash-stomp"
MQTT_TOPIC = "crash/mqtt"
MQTT_SUBSCRIBER = "crash-subscriber"


def broker_on(data_dir: str | None) -> Broker:
    """A broker with MQTT on, over `data_dir` (a fresh one when None)."""
    b = Broker()
    if data_dir is not None:
        b.data_dir = data_dir
        b.args[b.args.index("--data-dir") + 1] = data_dir
    b.args[b.args.index("--mqtt") + 1] = "127.0.0.1:0"
    b.start()
    for word in b.ready_line.split():
        if word.startswith("mqtt="):
            host, _, port = word[len("mqtt=") :].rpartition(":")
            b.mqtt_host, b.mqtt_port = host.strip("[]"), int(port)
    return b


class Tally:
    """What one protocol's publisher sent and had confirmed, over all rounds."""

    def __init__(self, name: str):
        self.name = name
        self.next = 0
        self.confirmed: set[int] = set()
        self.cond = threading.Condition()
        self.error: BaseException | None = None

    def take(self) -> int:
        with self.cond:
            n = self.next
            self.next += 1
            return n

    def confirm(self, n: int) -> None:
        with self.cond:
            self.confirmed.add(n)
            self.cond.notify_all()

    def wait_for(self, count: int) -> None:
        left = deadline_for(f"{count} {self.name} confirmations")
        with self.cond:
            while len(self.confirmed) < count:
                if self.error is not None:
                    raise AssertionError(f"{self.name} publisher failed: {self.error!r}")
                self.cond.wait(timeout=min(left(), 0.5))


class Publisher(threading.Thread):
    """Publishes until its connection dies (the kill)."""

    def __init__(self, tally: Tally, broker: Broker):
        super().__init__(daemon=True, name=f"publish-{tally.name}")
        self.tally, self.broker = tally, broker
        self.stopped = threading.Event()

    def body(self, n: int) -> bytes:
        return f"{self.tally.name}-{n}".encode()

    def run(self) -> None:
        try:
            self.publish()
        except Exception as e:  # the broker died under us: expected after the kill
            if not self.stopped.is_set():
                with self.tally.cond:
                    self.tally.error = e
                    self.tally.cond.notify_all()


class AmqpPublisher(Publisher):
    def publish(self) -> None:
        conn = pika.BlockingConnection(pika.ConnectionParameters(self.broker.host, self.broker.port))
        ch = conn.channel()
        ch.queue_declare(AMQP_QUEUE, durable=True)
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2)
        while True:
            n = self.tally.take()
            # With confirms on, basic_publish returns once the broker acked.
            ch.basic_publish("", AMQP_QUEUE, self.body(n), props)
            self.tally.confirm(n)


class StompPublisher(Publisher):
    def publish(self) -> None:
        receipts: queue.Queue = queue.Queue()
        gone = threading.Event()

        class Listener(stomp.ConnectionListener):
            def on_receipt(self, frame):
                receipts.put(frame.headers["receipt-id"])

            def on_disconnected(self):
                gone.set()

        conn = stomp.Connection12([(self.broker.stomp_host, self.broker.stomp_port)], heartbeats=(0, 0))
        conn.set_listener("", Listener())
        conn.connect("guest", "guest", wait=True)
        while not gone.is_set():
            window = {}
            for _ in range(WINDOW):
                n = self.tally.take()
                window[f"r{n}"] = n
                conn.send(
                    STOMP_QUEUE,
                    self.body(n),
                    headers={"persistent": "true", "receipt": f"r{n}"},
                )
            left = deadline_for("a STOMP RECEIPT")
            while window and not gone.is_set():
                try:
                    rid = receipts.get(timeout=min(left(), 0.2))
                except queue.Empty:
                    continue
                self.tally.confirm(window.pop(rid))


class MqttPublisher(Publisher):
    def publish(self) -> None:
        pending: dict[int, int] = {}
        # PUBACKs that overtook the bookkeeping of their publish.
        early: set[int] = set()
        lock = threading.Condition()
        gone = threading.Event()

        def on_publish(client, userdata, mid, reason_code, properties):
            with lock:
                n = pending.pop(mid, None)
                if n is None:
                    early.add(mid)
                lock.notify_all()
            if n is not None:
                self.tally.confirm(n)

        def on_disconnect(client, userdata, flags, reason_code, properties):
            gone.set()
            with lock:
                lock.notify_all()

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"crash-publisher-{id(self)}", protocol=mqtt.MQTTv311
        )
        client.on_publish = on_publish
        client.on_disconnect = on_disconnect
        client.max_inflight_messages_set(WINDOW)
        client.connect(self.broker.mqtt_host, self.broker.mqtt_port)
        client.loop_start()
        try:
            while not gone.is_set():
                with lock:
                    left = deadline_for("an MQTT PUBACK to open the window")
                    while len(pending) >= WINDOW and not gone.is_set():
                        lock.wait(timeout=min(left(), 0.5))
                if gone.is_set():
                    break
                n = self.tally.take()
                # Outside our lock: paho calls on_publish holding its own.
                info = client.publish(MQTT_TOPIC, self.body(n), qos=1)
                with lock:
                    if info.mid in early:
                        early.discard(info.mid)
                    else:
                        pending[info.mid] = n
                        continue
                self.tally.confirm(n)
        finally:
            client.loop_stop()


def subscribe_mqtt(broker: Broker) -> None:
    """Creates the persistent session whose queue collects the MQTT messages."""
    done = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=MQTT_SUBSCRIBER, clean_session=False, protocol=mqtt.MQTTv311
    )
    client.on_subscribe = lambda *a: done.set()
    client.connect(broker.mqtt_host, broker.mqtt_port)
    client.loop_start()
    client.subscribe(MQTT_TOPIC, qos=1)
    if not done.wait(WAIT):
        raise Timeout("timed out waiting for the MQTT SUBACK")
    client.disconnect()
    client.loop_stop()


def drain_amqp(broker: Broker) -> list[tuple[bytes, bool]]:
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    ch = conn.channel()
    got = []
    while True:
        method, _, body = ch.basic_get(AMQP_QUEUE, auto_ack=True)
        if method is None:
            break
        got.append((body, method.redelivered))
    conn.close()
    return got


def drain_stomp(broker: Broker) -> list[tuple[bytes, bool]]:
    messages: queue.Queue = queue.Queue()

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            messages.put(frame)

    conn = stomp.Connection12([(broker.stomp_host, broker.stomp_port)], heartbeats=(0, 0))
    conn.set_listener("", Listener())
    conn.connect("guest", "guest", wait=True)
    # A marker sent last comes out last: everything before it is drained.
    conn.send(STOMP_QUEUE, b"marker", headers={"persistent": "true"})
    conn.subscribe(STOMP_QUEUE, id="drain", ack="auto")
    got = []
    left = deadline_for("the STOMP marker at the end of the queue")
    while True:
        try:
            frame = messages.get(timeout=left())
        except queue.Empty:
            left()
            continue
        body = frame.body.encode() if isinstance(frame.body, str) else frame.body
        if body == b"marker":
            break
        got.append((body, frame.headers.get("redelivered") == "true"))
    conn.disconnect()
    return got


def drain_mqtt(broker: Broker) -> list[tuple[bytes, bool]]:
    messages: queue.Queue = queue.Queue()
    connected: queue.Queue = queue.Queue()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=MQTT_SUBSCRIBER, clean_session=False, protocol=mqtt.MQTTv311
    )
    client.on_message = lambda c, u, m: messages.put((bytes(m.payload), bool(m.dup)))
    client.on_connect = lambda c, u, flags, rc, p: connected.put(flags.session_present)
    client.connect(broker.mqtt_host, broker.mqtt_port)
    client.loop_start()
    try:
        assert connected.get(timeout=WAIT), "the subscriber's session survived three kill -9s"
        marker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crash-marker", protocol=mqtt.MQTTv311)
        marker.connect(broker.mqtt_host, broker.mqtt_port)
        marker.loop_start()
        marker.publish(MQTT_TOPIC, b"marker", qos=1).wait_for_publish(timeout=WAIT)
        marker.disconnect()
        marker.loop_stop()
        got = []
        left = deadline_for("the MQTT marker at the end of the session's queue")
        while True:
            try:
                body, dup = messages.get(timeout=left())
            except queue.Empty:
                left()
                continue
            if body == b"marker":
                return got
            got.append((body, dup))
    finally:
        client.disconnect()
        client.loop_stop()


def count(name: str, tally: Tally, got: list[tuple[bytes, bool]]) -> tuple[int, int]:
    seen: dict[int, int] = {}
    unflagged_duplicates = 0
    for body, redelivered in got:
        proto, _, n = body.decode().rpartition("-")
        assert proto == name, f"foreign message {body!r} in the {name} queue"
        n = int(n)
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1 and not redelivered:
            unflagged_duplicates += 1
    lost = tally.confirmed - set(seen)
    duplicated = sum(c - 1 for c in seen.values())
    print(
        f"crash {name}: published {tally.next}, confirmed {len(tally.confirmed)}, "
        f"recovered {len(seen)}, lost {len(lost)}, duplicated {duplicated}"
    )
    assert not lost, f"{name}: confirmed but lost: {sorted(lost)[:20]}"
    assert unflagged_duplicates == 0, f"{name}: {unflagged_duplicates} duplicates without the redelivered flag"
    return len(lost), duplicated


@pytest.mark.timeout(110)
def test_confirmed_messages_of_every_protocol_survive_three_kill_9s():
    tallies = {name: Tally(name) for name in ("amqp", "mqtt", "stomp")}
    kinds = {"amqp": AmqpPublisher, "mqtt": MqttPublisher, "stomp": StompPublisher}
    data_dir = None
    broker = None
    try:
        for round_ in range(ROUNDS):
            broker = broker_on(data_dir)
            data_dir = broker.data_dir
            if round_ == 0:
                subscribe_mqtt(broker)
            publishers = [kinds[name](tally, broker) for name, tally in tallies.items()]
            targets = {name: len(t.confirmed) + PER_ROUND for name, t in tallies.items()}
            for p in publishers:
                p.start()
            for name, tally in tallies.items():
                tally.wait_for(targets[name])
            for p in publishers:
                p.stopped.set()
            broker.kill()  # SIGKILL, mid-stream: every publisher has a window in flight
            for p in publishers:
                p.join(timeout=WAIT)
                assert not p.is_alive(), f"{p.name} did not notice the broker died"
        broker = broker_on(data_dir)
        assert "journal recovered" in broker.stderr_text(), "start-up reports what it read"
        count("amqp", tallies["amqp"], drain_amqp(broker))
        count("stomp", tallies["stomp"], drain_stomp(broker))
        count("mqtt", tallies["mqtt"], drain_mqtt(broker))
        assert broker.stop() == 0
    finally:
        if broker is not None:
            broker.kill()

"""paho-mqtt connections to the broker, and a recorder that turns paho's
callbacks into events a test waits for, each with a deadline.

The broker here listens for MQTT (the shared fixture leaves MQTT off), one
per test module; pika's fixtures from conformance/conftest.py use it too.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conformance.mqtt.wire import RawMqtt
from conformance.support import WAIT, Broker, deadline_for, unique

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
#: Parametrise a test over both protocol versions.
VERSIONS = [pytest.param(V311, id="3.1.1"), pytest.param(V5, id="5")]
#: A raw client's protocol level for a paho version constant.
LEVEL = {V311: 4, V5: 5}
ANY = object()


def props(packet_type=PacketTypes.PUBLISH, **values) -> Properties:
    """paho Properties from keyword arguments (ContentType=..., UserProperty=[...])."""
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class Events:
    """Callbacks recorded by kind, taken in arrival order or by key."""

    def __init__(self):
        self.cond = threading.Condition()
        self.items: dict[str, list] = defaultdict(list)

    def put(self, kind: str, key, value) -> None:
        with self.cond:
            self.items[kind].append((key, value))
            self.cond.notify_all()

    def take(self, kind: str, what: str, key=ANY, timeout: float = WAIT):
        left = deadline_for(what, timeout)
        with self.cond:
            while True:
                for i, (k, v) in enumerate(self.items[kind]):
                    if key is ANY or k == key:
                        del self.items[kind][i]
                        return v
                self.cond.wait(left())

    def count(self, kind: str) -> int:
        with self.cond:
            return len(self.items[kind])


class Client:
    """A paho-mqtt client on its own network thread, never reconnecting by
    itself (a test decides when to reconnect)."""

    def __init__(self, broker, version=V5, client_id: str | None = None, clean: bool = True, manual_ack=False):
        self.broker, self.version = broker, version
        self.client_id = unique("c") if client_id is None else client_id
        self.events = Events()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=clean if version != V5 else None,
            protocol=version,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        c = self.c
        c.on_connect = lambda cl, u, flags, rc, p: self.events.put("connack", None, (flags, rc, p))
        c.on_disconnect = lambda cl, u, flags, rc, p: self.events.put("disconnect", None, (rc, p))
        c.on_message = lambda cl, u, m: self.events.put("message", m.topic, m)
        c.on_subscribe = lambda cl, u, mid, codes, p: self.events.put("suback", mid, (codes, p))
        c.on_unsubscribe = lambda cl, u, mid, codes, p: self.events.put("unsuback", mid, (codes, p))
        c.on_publish = lambda cl, u, mid, rc, p: self.events.put("puback", mid, (rc, p))
        c.on_log = lambda cl, u, level, buf: self.events.put("log", " ".join(buf.split(" ")[:2]), buf)
        self.connected = False

    def connect(
        self,
        clean_start: bool = True,
        keepalive: int = 60,
        properties: Properties | None = None,
        username: str | None = "guest",
        password: str | None = "guest",
        expect=0,
    ):
        """Connects and waits for CONNACK; returns (session_present, reason, properties).
        `expect`: the CONNACK reason code value required."""
        if username is not None:
            self.c.username_pw_set(username, password)
        kwargs = {"keepalive": keepalive}
        if self.version == V5:
            kwargs["clean_start"] = clean_start
            kwargs["properties"] = properties
        self.c.connect(self.broker.mqtt_host, self.broker.mqtt_port, **kwargs)
        self.c.loop_start()
        flags, rc, p = self.events.take("connack", f"CONNACK for {self.client_id}")
        if expect is not None:
            assert rc.value == expect, f"CONNACK {rc} ({rc.value:#x}), expected {expect:#x}"
        self.connected = rc.value == 0
        return flags.session_present, rc, p

    def subscribe(self, topic, qos: int = 0, options=None, properties: Properties | None = None):
        """Subscribes (one filter, or a list of (filter, qos or SubscribeOptions));
        waits for SUBACK; returns its reason codes as ints."""
        if isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, options=options, qos=qos if options is None else 0, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe not sent: {rc}"
        codes, _ = self.events.take("suback", f"SUBACK for {topic}", key=mid)
        return [c.value for c in codes]

    def unsubscribe(self, topic):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe not sent: {rc}"
        codes, _ = self.events.take("unsuback", f"UNSUBACK for {topic}", key=mid)
        return [c.value for c in codes] if isinstance(codes, list) else codes

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, wait=True):
        """Publishes; with `wait` and QoS >= 1 waits for the PUBACK / PUBCOMP
        and returns its reason code as an int (0 for QoS 0)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish not sent: {info.rc}"
        if not wait:
            return info.mid
        rc, _ = self.events.take("puback", f"the broker's ack of the publish to {topic} (QoS {qos})", key=info.mid)
        return rc.value if hasattr(rc, "value") else 0

    def message(self, what: str = "a message", timeout: float = WAIT) -> mqtt.MQTTMessage:
        return self.events.take("message", what, timeout=timeout)

    def no_message(self, marker_topic: str, what: str = "the marker") -> mqtt.MQTTMessage:
        """The next message must be the marker (published last by the test)."""
        m = self.message(what)
        assert m.topic == marker_topic, f"expected only the marker on {marker_topic}, got {m.topic} {m.payload!r}"
        return m

    def disconnected(self, what: str = "the broker to close the connection"):
        """Waits for the connection to end; returns (reason code, properties)."""
        rc, p = self.events.take("disconnect", what)
        self.connected = False
        return rc, p

    def round_trip(self) -> None:
        """A SUBSCRIBE round trip: what the broker sent before its SUBACK has arrived."""
        self.subscribe(unique("rt"), 0)

    def disconnect(self, properties=None) -> None:
        if self.connected:
            self.c.disconnect(properties=properties)
            self.disconnected("our own DISCONNECT to finish")
        self.stop()

    def stop(self) -> None:
        self.c.loop_stop()


@pytest.fixture(scope="module")
def broker():
    """One broker per module, MQTT on; tests keep apart by unique names."""
    b = Broker(mqtt="127.0.0.1:0").start()
    assert b.mqtt_port, f"no mqtt= in the ready line: {b.ready_line}"
    yield b
    code = b.stop()
    assert code == 0, f"broker exited {code} after SIGTERM; stderr:\n{b.stderr_text()}"


@pytest.fixture
def mqtt_client(broker):
    """Makes paho clients (connected unless connect=False); stops all at the end."""
    made: list[Client] = []

    def make(version=V5, client_id=None, clean=True, connect=True, manual_ack=False, on=None, **connect_args):
        c = Client(on or broker, version, client_id, clean, manual_ack)
        made.append(c)
        if connect:
            c.connect_result = c.connect(clean_start=clean, **connect_args)
        return c

    yield make
    for c in made:
        try:
            if c.connected:
                c.c.disconnect()
            c.stop()
        except Exception:
            pass


@pytest.fixture
def raw(broker):
    """Opens raw MQTT sockets; closes them at the end."""
    opened: list[RawMqtt] = []

    def open_one(version=5, on=None):
        r = RawMqtt(on or broker, version)
        opened.append(r)
        return r

    yield open_one
    for r in opened:
        r.close()


def topic(prefix: str = "t") -> str:
    """A topic no other test uses (no dots, so it maps to one AMQP word per level)."""
    return f"{prefix}/{unique('x').replace('-', '')}"

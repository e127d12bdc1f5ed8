"""CONNECT with paho-mqtt and raw sockets, 3.1.1 and 5.0: clean session /
clean start, keepalive at 1.5 times, wills (QoS, retain, MQTT 5 delay),
login against the broker's users, assigned client ids, session takeover."""

from __future__ import annotations

import select
import time

import pytest

from conformance.mqtt import wire
from conformance.mqtt.conftest import LEVEL, V5, V311, VERSIONS, props, topic
from conformance.support import Broker, unique
from paho.mqtt.packettypes import PacketTypes

USERS = """
vhosts = ["/", "plant"]
[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
loopback_only = true
[[users]]
name = "sensor"
password = "s3cret"
vhosts = ["plant"]
"""


@pytest.fixture(scope="module")
def broker():
    b = Broker(mqtt="127.0.0.1:0", config=USERS).start()
    yield b
    assert b.stop() == 0, b.stderr_text()


def quiet(r: wire.RawMqtt, seconds: float) -> None:
    """Asserts the broker neither sends anything nor closes for `seconds`:
    the span a pinging client must be left alone."""
    ready, _, _ = select.select([r.sock], [], [], seconds)
    assert not ready and not r.buf, "the broker spoke or closed while the client kept its keepalive"


@pytest.mark.parametrize("version", VERSIONS)
def test_clean_session_discards_what_the_last_connection_left(mqtt_client, version):
    cid, t = unique("clean"), topic("clean")
    expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=300) if version == V5 else None
    c = mqtt_client(version, cid, clean=False, properties=expiry)
    c.subscribe(t, 1)
    c.disconnect()
    c2 = mqtt_client(version, cid, clean=False, properties=expiry)
    assert c2.connect_result[0], "a persistent session is present on return"
    c2.disconnect()
    c3 = mqtt_client(version, cid, clean=True)
    assert c3.connect_result[0] is False, "a clean session starts without state"
    marker = topic("marker")
    c3.subscribe(marker, 0)
    mqtt_client(version).publish(t, b"old subscription", qos=1)
    mqtt_client(version).publish(marker, b"m", qos=1)
    c3.no_message(marker)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_silent_client_is_disconnected_after_one_and_a_half_keepalives(raw, version):
    r = raw(LEVEL[version])
    assert r.connect(unique("silent"), keepalive=1).reason == 0
    start = time.monotonic()
    seen = r.expect_eof("the keepalive to expire")
    elapsed = time.monotonic() - start
    assert elapsed >= 1.4, f"closed after {elapsed:.2f}s, before 1.5 keepalives"
    if version == V5:
        assert [(p.kind, p.reason) for p in seen] == [(wire.DISCONNECT, 0x8D)], seen
        assert seen[0].props.get("reason_string"), "DISCONNECT 0x8D carries a reason string"
    else:
        assert seen == [], "3.1.1 has no server DISCONNECT"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_client_that_pings_in_time_stays_connected(raw, version):
    r = raw(LEVEL[version])
    assert r.connect(unique("pinger"), keepalive=1).reason == 0
    for _ in range(4):
        quiet(r, 0.6)
        r.send(wire.PING)
        r.expect(wire.PINGRESP)


def will_client(raw, version, will_topic, payload=b"gone", qos=1, retain=False, delay=None, expiry=None, cid=None):
    r = raw(LEVEL[version])
    will = {"topic": will_topic, "payload": payload, "qos": qos, "retain": retain}
    connect_props = None
    if version == V5:
        will["props"] = wire.properties(**({"will_delay": delay} if delay is not None else {}))
        connect_props = wire.properties(**({"session_expiry": expiry} if expiry is not None else {}))
    ack = r.connect(cid or unique("will"), will=will, props=connect_props, clean=expiry is None)
    assert ack.reason == 0, ack
    return r


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_the_will_is_published_when_the_connection_dies(mqtt_client, raw, version, qos):
    t = topic("will")
    sub = mqtt_client(version)
    sub.subscribe(t, 2)
    will_client(raw, version, t, b"died", qos=qos).close()
    m = sub.message("the will")
    assert (m.topic, m.payload, m.qos, m.retain) == (t, b"died", qos, False)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_retained_will_is_kept_for_later_subscribers(mqtt_client, raw, version):
    t = topic("will")
    will_client(raw, version, t, b"last words", retain=True).close()
    watcher = mqtt_client(version)
    watcher.subscribe(t, 1)
    m = watcher.message("the retained will")
    assert (m.payload, m.retain) == (b"last words", True)


@pytest.mark.parametrize("version", VERSIONS)
def test_no_will_after_a_normal_disconnect(mqtt_client, raw, version):
    t = topic("will")
    sub = mqtt_client(version)
    sub.subscribe(t, 1)
    r = will_client(raw, version, t)
    r.send(wire.disconnect(LEVEL[version]))
    r.expect_eof("the broker to close after DISCONNECT")
    mqtt_client(version).publish(t, b"marker", qos=1)
    assert sub.message("the marker").payload == b"marker", "no will after DISCONNECT"


def test_disconnect_with_will_message_publishes_the_will(mqtt_client, raw):
    t = topic("will")
    sub = mqtt_client(V5)
    sub.subscribe(t, 1)
    r = will_client(raw, V5, t, b"asked for")
    r.send(wire.disconnect(5, reason=0x04))
    assert sub.message("the will after DISCONNECT 0x04").payload == b"asked for"


def test_the_will_waits_for_its_delay(mqtt_client, raw):
    t = topic("will")
    sub = mqtt_client(V5)
    sub.subscribe(t, 1)
    r = will_client(raw, V5, t, b"late", delay=1, expiry=60)
    start = time.monotonic()
    r.close()
    assert sub.message("the delayed will").payload == b"late"
    assert time.monotonic() - start >= 0.9, "the will came before its delay"


def test_a_session_resumed_within_the_will_delay_publishes_no_will(mqtt_client, raw):
    t = topic("will")
    sub = mqtt_client(V5)
    sub.subscribe(t, 1)
    cid = unique("resumed")
    resumed = will_client(raw, V5, t, b"must not come", delay=1, expiry=60, cid=cid)
    # A second dying client whose will comes later: the clock that proves
    # the first will's time has passed.
    clock = will_client(raw, V5, t, b"clock", delay=2, expiry=60)
    resumed.close()
    clock.close()
    again = raw(5)
    assert again.connect(cid, clean=False, props=wire.properties(session_expiry=60)).session_present
    assert sub.message("the clock will").payload == b"clock", "the resumed session's will was published"
    again.send(wire.disconnect(5))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "user, password, v5_code, v3_code",
    [
        ("guest", "guest", 0x00, 0),
        ("plant:sensor", "s3cret", 0x00, 0),
        ("guest", "wrong", 0x86, 4),
        ("nobody", "guest", 0x86, 4),
        ("sensor", "s3cret", 0x87, 5),  # no access to the default vhost
        ("nowhere:guest", "guest", 0x87, 5),
    ],
)
def test_login_against_the_brokers_users(raw, version, user, password, v5_code, v3_code):
    r = raw(LEVEL[version])
    ack = r.connect(unique("login"), username=user, password=password)
    assert ack.reason == (v5_code if version == V5 else v3_code), ack
    if ack.reason:
        if version == V5:
            assert ack.props.get("reason_string"), "a refusal says why"
        assert r.expect_eof("the broker to close after a refused CONNECT") == []


@pytest.mark.parametrize("version", VERSIONS)
def test_paho_sees_bad_credentials_refused(mqtt_client, version):
    c = mqtt_client(version, connect=False)
    _, rc, _ = c.connect(username="guest", password="wrong", expect=None)
    assert rc.value == 0x86 and rc.is_failure, rc
    c.disconnected("the broker to close after bad credentials")


def test_anonymous_clients_log_in_as_the_default_user(raw):
    r = raw(5)
    assert r.connect(unique("anon"), username=None, password=None).reason == 0


def test_an_empty_client_id_is_assigned_one_in_mqtt5(raw):
    r = raw(5)
    ack = r.connect("")
    assert ack.reason == 0
    assigned = ack.props.get("assigned_client_id", "")
    assert assigned.startswith("ferrymq-"), ack


def test_an_empty_client_id_with_clean_session_is_accepted_in_311(raw, mqtt_client):
    r = raw(4)
    ack = r.connect("", keepalive=30)
    assert ack.reason == 0 and not ack.session_present
    c = mqtt_client(V311, client_id="")
    c.round_trip()


def test_an_empty_client_id_without_clean_session_is_rejected_in_311(raw):
    r = raw(4)
    ack = r.connect("", clean=False)
    assert ack.reason == 2, f"identifier rejected expected: {ack}"
    assert r.expect_eof() == []


@pytest.mark.parametrize("version", VERSIONS)
def test_a_second_connection_with_the_same_id_takes_the_session_over(mqtt_client, version):
    cid = unique("twin")
    first = mqtt_client(version, cid)
    second = mqtt_client(version, cid)
    rc, p = first.disconnected("the first connection to be closed")
    if version == V5:
        assert rc.value == 0x8E, rc
        assert getattr(p, "ReasonString", ""), "DISCONNECT 0x8E carries a reason string"
    t = topic("twin")
    second.subscribe(t, 1)
    second.publish(t, b"still mine", qos=1)
    assert second.message("the second connection's own message").payload == b"still mine"

"""Subscriptions: `+` and `#`, `$` topics, granted QoS, UNSUBSCRIBE,
overlapping filters, MQTT 5 subscription identifiers and no-local, and
shared subscriptions (from 3.1.1 clients too)."""

from __future__ import annotations

import pytest

from conformance.mqtt import wire
from conformance.mqtt.conftest import LEVEL, V5, V311, VERSIONS, props, topic
from conformance.support import unique
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions


def marker_after(pub, sub, *topics_and_bodies):
    """Publishes each (topic, body) then a marker the subscriber listens to;
    returns the payloads the subscriber got before the marker."""
    marker = topic("marker")
    sub.subscribe(marker, 0)
    for t, body in topics_and_bodies:
        pub.publish(t, body, qos=1)
    pub.publish(marker, b"", qos=1)
    got = []
    while True:
        m = sub.message("the marker")
        if m.topic == marker:
            return got
        got.append(m.payload)


@pytest.mark.parametrize("version", VERSIONS)
def test_single_level_wildcard(mqtt_client, version):
    base = topic("plant")
    sub, pub = mqtt_client(version), mqtt_client(version)
    sub.subscribe(f"{base}/+/temp", 0)
    got = marker_after(
        pub, sub, (f"{base}/1/temp", b"yes"), (f"{base}/1/2/temp", b"too deep"), (f"{base}/temp", b"too shallow")
    )
    assert got == [b"yes"]


@pytest.mark.parametrize("version", VERSIONS)
def test_multi_level_wildcard_matches_the_parent_level_too(mqtt_client, version):
    base = topic("tree")
    sub, pub = mqtt_client(version), mqtt_client(version)
    sub.subscribe(f"{base}/#", 0)
    got = marker_after(pub, sub, (base, b"parent"), (f"{base}/a", b"child"), (f"{base}/a/b/c", b"deep"), ("other/x", b"no"))
    assert got == [b"parent", b"child", b"deep"]


@pytest.mark.parametrize("version", VERSIONS)
def test_leading_wildcards_do_not_match_dollar_topics(mqtt_client, version):
    u = unique("d").replace("-", "")
    sub, pub = mqtt_client(version), mqtt_client(version)
    sub.subscribe(f"+/{u}", 0)
    sub.subscribe(f"$SYS/{u}/+", 0)
    wild = mqtt_client(version)
    wild.subscribe("#", 0)
    got = marker_after(pub, sub, (f"$SYS/{u}", b"dollar"), (f"a/{u}", b"plain"), (f"$SYS/{u}/x", b"explicit"))
    assert got == [b"plain", b"explicit"]
    # `#` alone sees every topic but the `$` ones (and may see other tests' retained messages).
    seen = []
    marker = topic("end")
    pub.publish(marker, b"", qos=1)
    while (m := wild.message("the marker on #")).topic != marker:
        seen.append(m.topic)
    assert not [t for t in seen if t.startswith("$")], seen


@pytest.mark.parametrize("version", VERSIONS)
def test_granted_qos_is_the_requested_qos_and_bad_filters_are_refused(raw, version):
    # paho refuses to send the bad filters: a raw client does.
    level = LEVEL[version]
    r = raw(level)
    r.connect(unique("g"))
    base = topic("g")
    filters = [(f"{base}/0", 0), (f"{base}/1", 1), (f"{base}/2", 2), (f"{base}/#/bad", 1), (f"{base}/a+", 0)]
    r.send(wire.subscribe(3, filters, version=level))
    ack = r.expect(wire.SUBACK)
    bad = 0x8F if version == V5 else 0x80
    assert (ack.packet_id, ack.codes) == (3, [0, 1, 2, bad, bad])
    if version == V5:
        assert ack.props.get("reason_string"), "a refused filter is explained"
    r.send(wire.PING)
    r.expect(wire.PINGRESP, "the connection to go on after refused filters")


@pytest.mark.parametrize("version", VERSIONS)
def test_unsubscribe_stops_delivery(mqtt_client, version):
    t = topic("u")
    sub, pub = mqtt_client(version), mqtt_client(version)
    sub.subscribe(t, 1)
    assert marker_after(pub, sub, (t, b"before")) == [b"before"]
    codes = sub.unsubscribe(t)
    if version == V5:
        assert codes == [0]
        assert sub.unsubscribe(t) == [0x11], "no subscription existed"
    assert marker_after(pub, sub, (t, b"after")) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(mqtt_client, version):
    base = topic("o")
    sub, pub = mqtt_client(version), mqtt_client(version)
    sub.subscribe(f"{base}/#", 1)
    sub.subscribe(f"{base}/+", 2)
    sub.subscribe(f"{base}/x", 0)
    marker = topic("marker")
    # The marker at QoS 2 too: paho hands QoS 2 messages over at PUBREL,
    # in order among themselves but not with QoS 0 / 1 ones.
    sub.subscribe(marker, 2)
    pub.publish(f"{base}/x", b"one", qos=2)
    pub.publish(marker, b"", qos=2)
    m = sub.message("the overlapping delivery")
    assert (m.payload, m.qos) == (b"one", 2)
    assert sub.message("the marker").topic == marker, "a second copy was delivered"


def test_subscription_identifiers_are_reported(mqtt_client):
    base = topic("sid")
    sub, pub = mqtt_client(V5), mqtt_client(V5)
    sub.subscribe(f"{base}/#", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    sub.subscribe(f"{base}/+", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=300))
    sub.subscribe(f"{base}/only/#", 1)
    pub.publish(f"{base}/a", b"both", qos=1)
    m = sub.message("the message for both identifiers")
    assert sorted(m.properties.SubscriptionIdentifier) == [7, 300]
    pub.publish(f"{base}/only/deep", b"one", qos=1)
    m = sub.message("the message for one identifier")
    assert m.properties.SubscriptionIdentifier == [7]


@pytest.mark.parametrize("no_local, expect", [(True, [b"theirs"]), (False, [b"mine", b"theirs"])])
def test_no_local(mqtt_client, no_local, expect):
    t = topic("nl")
    me, other = mqtt_client(V5), mqtt_client(V5)
    me.subscribe(t, options=SubscribeOptions(qos=1, noLocal=no_local))
    me.publish(t, b"mine", qos=1)
    other.publish(t, b"theirs", qos=1)
    got = [me.message(f"message {i}").payload for i in range(len(expect))]
    assert got == expect


def test_shared_subscriptions_balance_between_members_of_both_versions(mqtt_client):
    base = topic("share")
    group = unique("g").replace("-", "")
    members = [mqtt_client(V311), mqtt_client(V5), mqtt_client(V5)]
    for m in members:
        assert m.subscribe(f"$share/{group}/{base}/#", 1) == [1]
    everyone = mqtt_client(V5)
    everyone.subscribe(f"{base}/#", 1)
    pub = mqtt_client(V5)
    n = 12
    for i in range(n):
        pub.publish(f"{base}/{i}", str(i).encode(), qos=1)
    all_seen = sorted(int(everyone.message(f"message {i} on the plain subscription").payload) for i in range(n))
    assert all_seen == list(range(n))
    got = []
    per_member = []
    for m in members:
        m.round_trip()
        mine = []
        while m.events.count("message"):
            mine.append(int(m.message().payload))
        per_member.append(mine)
        got += mine
    while len(got) < n:
        # Deliveries still in flight: wait for them from whichever member.
        for m, mine in zip(members, per_member):
            if m.events.count("message"):
                v = int(m.message().payload)
                mine.append(v)
                got.append(v)
        members[0].round_trip()
    assert sorted(got) == list(range(n)), f"each message once to the group: {per_member}"
    assert all(per_member), f"every member got a share: {per_member}"

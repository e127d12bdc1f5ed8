"""Retained messages: sent on subscribe, MQTT 5 retain handling and
retain-as-published, cleared by an empty retained publish, and retained
when an AMQP client publishes to amq.topic with `x-mqtt-retain: true`."""

from __future__ import annotations

import pika
import pytest

from conformance.mqtt.conftest import V5, VERSIONS, topic
from paho.mqtt.subscribeoptions import SubscribeOptions


def only_marker(sub, pub):
    """Asserts nothing reaches `sub` before a marker published now."""
    marker = topic("marker")
    sub.subscribe(marker, 0)
    pub.publish(marker, b"", qos=1)
    m = sub.message("the marker")
    assert m.topic == marker, f"unexpected {m.topic} {m.payload!r} retain={m.retain}"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_retained_message_is_sent_on_subscribe(mqtt_client, version):
    t = topic("r")
    pub = mqtt_client(version)
    pub.publish(t, b"21.5", qos=1, retain=True)
    pub.publish(t, b"22.0", qos=1, retain=True)
    sub = mqtt_client(version)
    sub.subscribe(t, 1)
    m = sub.message("the retained message")
    assert (m.payload, m.retain, m.qos) == (b"22.0", True, 1), "the last retained message, flagged retained"
    only_marker(sub, pub)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_retained_message_comes_at_the_lower_qos(mqtt_client, version):
    base = topic("r")
    t = f"{base}/leaf"
    mqtt_client(version).publish(t, b"q2", qos=2, retain=True)
    sub = mqtt_client(version)
    sub.subscribe(f"{base}/+", 1)
    m = sub.message("the retained message via a wildcard")
    assert (m.topic, m.qos, m.retain) == (t, 1, True)


@pytest.mark.parametrize("version", VERSIONS)
def test_live_messages_arrive_without_the_retain_flag_by_default(mqtt_client, version):
    t = topic("r")
    sub, pub = mqtt_client(version), mqtt_client(version)
    sub.subscribe(t, 1)
    pub.publish(t, b"live", qos=1, retain=True)
    m = sub.message("the live retained publish")
    assert (m.payload, m.retain) == (b"live", False)


@pytest.mark.parametrize("version", VERSIONS)
def test_an_empty_retained_publish_clears_the_topic(mqtt_client, version):
    t = topic("r")
    pub = mqtt_client(version)
    pub.publish(t, b"soon gone", qos=1, retain=True)
    pub.publish(t, b"", qos=1, retain=True)
    sub = mqtt_client(version)
    sub.subscribe(t, 1)
    only_marker(sub, pub)


@pytest.mark.parametrize("handling, first, again", [(0, True, True), (1, True, False), (2, False, False)])
def test_retain_handling(mqtt_client, handling, first, again):
    t = topic("rh")
    pub = mqtt_client(V5)
    pub.publish(t, b"kept", qos=1, retain=True)
    sub = mqtt_client(V5)
    opts = SubscribeOptions(qos=1, retainHandling=handling)
    for expected, when in ((first, "a new subscription"), (again, "an existing one")):
        sub.subscribe(t, options=opts)
        if expected:
            assert sub.message(f"the retained message for {when}").payload == b"kept"
        else:
            only_marker(sub, pub)


@pytest.mark.parametrize("rap", [True, False])
def test_retain_as_published(mqtt_client, rap):
    t = topic("rap")
    sub, pub = mqtt_client(V5), mqtt_client(V5)
    sub.subscribe(t, options=SubscribeOptions(qos=1, retainAsPublished=rap))
    pub.publish(t, b"flagged", qos=1, retain=True)
    pub.publish(t, b"plain", qos=1)
    assert [(m.payload, m.retain) for m in (sub.message(), sub.message())] == [(b"flagged", rap), (b"plain", False)]


@pytest.mark.parametrize("version", VERSIONS)
def test_an_amqp_publish_with_the_retain_header_is_retained_for_mqtt(mqtt_client, ch, version):
    t = topic("plant")
    key = t.replace("/", ".")
    ch.confirm_delivery()
    retain = pika.BasicProperties(headers={"x-mqtt-retain": True}, content_type="text/plain")
    ch.basic_publish("amq.topic", key, b"from amqp", retain)
    sub = mqtt_client(version)
    sub.subscribe(t, 1)
    m = sub.message("the message retained over AMQP")
    assert (m.topic, m.payload, m.retain) == (t, b"from amqp", True)
    if version == V5:
        assert m.properties.ContentType == "text/plain"
    # An empty body clears it, as an MQTT retained publish would.
    ch.basic_publish("amq.topic", key, b"", retain)
    late = mqtt_client(version)
    late.subscribe(t, 1)
    only_marker(late, mqtt_client(version))

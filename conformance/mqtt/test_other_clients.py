"""MQTT clients other than paho connect unchanged: MQTT.js (Node) and
Debian's mosquitto_pub / mosquitto_sub / mosquitto_rr, each against paho
and pika on the same broker. Each client library frames, aliases and acks
in its own way; these tests catch what paho alone would not."""

from __future__ import annotations

import pytest

from conformance.mqtt.conftest import V5, V311, Events, props, topic
from conformance.mqtt.other_clients import Lines, MqttJs, mosquitto_args, mosquitto_pub
from conformance.mqtt.test_cross import amqp_get, amqp_queue_on

LEVELS = [pytest.param(4, id="3.1.1"), pytest.param(5, id="5")]
ALL_LEVELS = [pytest.param(3, id="3.1"), *LEVELS]
PAHO = {3: V311, 4: V311, 5: V5}


@pytest.fixture
def mqttjs(broker):
    """Makes MQTT.js clients; closes them all at the end."""
    made: list[MqttJs] = []

    def make(version: int = 5, connect: bool = True, client_id: str | None = None, **options) -> MqttJs:
        c = MqttJs(broker, client_id=client_id)
        made.append(c)
        if connect:
            c.connack = c.connect(version, **options)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def processes():
    """Starts client processes whose output a test reads; kills leftovers."""
    started: list[Lines] = []

    def start(args: list[str]) -> Lines:
        p = Lines(args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


# --------------------------------------------------------------------------
# MQTT.js
# --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_LEVELS)
def test_mqttjs_publishes_and_receives_at_every_qos(mqttjs, mqtt_client, version):
    base = topic("js")
    sub = mqttjs(version)
    assert sub.connack["reasonCode"] == 0
    assert sub.subscribe(f"{base}/+/x", 2) == [2]
    pub = mqttjs(version)
    for qos in (0, 1, 2):
        assert pub.publish(f"{base}/q{qos}/x", f"js-{qos}".encode(), qos) == 0
    got = [sub.message(f"the QoS {q} publish") for q in range(3)]
    assert [(m["topic"], m["payload"], m["qos"]) for m in got] == [
        (f"{base}/q{q}/x", f"js-{q}".encode(), q) for q in range(3)
    ]
    # paho and MQTT.js meet in both directions.
    paho = mqtt_client(PAHO[version])
    paho.subscribe(f"{base}/paho/#", 2)
    pub.publish(f"{base}/paho/in", b"from-js", 2)
    m = paho.message("MQTT.js's QoS 2 publish at paho")
    assert (m.topic, m.payload, m.qos) == (f"{base}/paho/in", b"from-js", 2)
    paho.publish(f"{base}/p/x", b"from-paho", qos=2)
    m = sub.message("paho's QoS 2 publish at MQTT.js")
    assert (m["topic"], m["payload"], m["qos"]) == (f"{base}/p/x", b"from-paho", 2)


def test_mqttjs_v5_properties_reach_paho_and_amqp(mqttjs, mqtt_client, conn, ch):
    t = topic("jsprops")
    q = amqp_queue_on(ch, t.replace("/", "."))
    paho = mqtt_client(V5)
    paho.subscribe(t, 1)
    reply = topic("reply")
    properties = {
        "contentType": "application/json",
        "responseTopic": reply,
        "correlationData": "Y29yci03",  # b"corr-7"
        "messageExpiryInterval": 60,
        "userProperties": {"site": "east", "tag": ["a", "b"]},
    }
    mqttjs(5).publish(t, b"{}", 1, properties=properties)
    m = paho.message("MQTT.js's publish with properties at paho")
    p = m.properties
    assert (p.ContentType, p.ResponseTopic, p.CorrelationData) == ("application/json", reply, b"corr-7")
    assert 0 < p.MessageExpiryInterval <= 60
    assert sorted(p.UserProperty) == [("site", "east"), ("tag", "a"), ("tag", "b")]
    _, ap, body = amqp_get(conn, ch, q)
    assert (body, ap.content_type, ap.correlation_id) == (b"{}", "application/json", "corr-7")
    assert ap.headers["site"] == "east"
    assert ap.headers["x-reply-to-topic"] == reply.replace("/", ".")


def test_mqttjs_receives_paho_properties(mqttjs, mqtt_client):
    t = topic("jsin")
    sub = mqttjs(5)
    sub.subscribe(t, 1)
    p = props(ContentType="text/plain", CorrelationData=b"\x00\x01", UserProperty=[("k", "v")])
    mqtt_client(V5).publish(t, b"hello", qos=1, properties=p)
    m = sub.message("paho's publish with properties")
    mp = m["properties"]
    assert (m["payload"], mp["contentType"], mp["correlationData"], mp["userProperties"]) == (
        b"hello",
        "text/plain",
        "AAE=",
        {"k": "v"},
    )


def test_mqttjs_topic_aliases_both_ways(mqttjs, mqtt_client):
    """MQTT.js sends aliases of its own (autoUseTopicAlias) and accepts the
    broker's (topicAliasMaximum); topics arrive whole either way."""
    t = topic("alias")
    sub = mqttjs(5, properties={"topicAliasMaximum": 4})
    sub.subscribe(f"{t}/#", 1)
    assert sub.connack["properties"].get("topicAliasMaximum", 0) > 0, "the broker offers aliases"
    pub = mqttjs(5, autoAssignTopicAlias=True)
    paho = mqtt_client(V5)
    paho.subscribe(f"{t}/#", 1)
    for i in range(6):
        pub.publish(f"{t}/{i % 2}", f"n{i}".encode(), 1)
    got = [sub.message(f"aliased publish {i}") for i in range(6)]
    assert [(m["topic"], m["payload"]) for m in got] == [(f"{t}/{i % 2}", f"n{i}".encode()) for i in range(6)]
    assert [paho.message(f"paho copy {i}").topic for i in range(6)] == [f"{t}/{i % 2}" for i in range(6)]


def test_mqttjs_retained_and_a_persistent_session(mqttjs):
    t = topic("jsret")
    mqttjs(4).publish(t, b"kept", 1, retain=True)
    late = mqttjs(4)
    late.subscribe(t, 1)
    m = late.message("the retained message")
    assert (m["payload"], m["retain"]) == (b"kept", True)
    # A persistent session: what arrives while the client is away is kept.
    away = mqttjs(5, clean=False, properties={"sessionExpiryInterval": 300})
    away.subscribe(f"{t}/q", 1)
    away.end()
    mqttjs(5).publish(f"{t}/q", b"while-away", 1)
    back = mqttjs(5, client_id=away.client_id, clean=False, properties={"sessionExpiryInterval": 0})
    assert back.connack["sessionPresent"] is True
    m = back.message("the message queued while away")
    assert (m["topic"], m["payload"], m["qos"]) == (f"{t}/q", b"while-away", 1)


def test_mqttjs_shared_subscription_members_split_the_messages(broker, mqtt_client):
    t = topic("jsshare")
    group = f"$share/g{t.split('/')[1]}/{t}"
    together = Events()
    members = [MqttJs(broker, together), MqttJs(broker, together)]
    try:
        for version, m in zip((5, 4), members):
            m.connect(version)
            assert m.subscribe(group, 1) == [1]
        pub = mqtt_client(V5)
        n = 20
        for i in range(n):
            pub.publish(t, str(i).encode(), qos=1)
        got = [members[0].message(f"shared message {i + 1} of {n}") for i in range(n)]
        assert sorted(m["payload"] for m in got) == sorted(str(i).encode() for i in range(n)), "each exactly once"
        per_member = [sum(m["client"] == c.client_id for m in got) for c in members]
        assert all(per_member), f"both members got a share: {per_member}"
    finally:
        for m in members:
            m.close()


def test_mqttjs_refused_with_a_bad_password(mqttjs):
    c = mqttjs(5, connect=False)
    e = c.connect(5, expect=0x86, password="wrong")
    assert e["code"] == 0x86, e


# --------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub / mosquitto_rr
# --------------------------------------------------------------------------


def mosquitto_sub(processes, broker, version: int, *args: str) -> Lines:
    """Starts mosquitto_sub in debug mode and waits for its SUBACK, so
    what is published next is bound to reach it."""
    sub = processes(mosquitto_args("mosquitto_sub", broker, version, "-d", *args))
    sub.line("its SUBACK", lambda line: "received SUBACK" in line)
    return sub


def received(sub: Lines, what: str) -> str:
    """The next formatted message line (debug lines start with 'Client')."""
    return sub.line(what, lambda line: not line.startswith(("Client ", "Subscribed")))


@pytest.mark.parametrize("version", ALL_LEVELS)
def test_mosquitto_pub_and_sub_at_every_qos(processes, broker, version):
    t = topic("mosq")
    sub = mosquitto_sub(processes, broker, version, "-t", f"{t}/#", "-q", "2", "-F", "%t %q %r %p", "-C", "3")
    for qos in (0, 1, 2):
        mosquitto_pub(broker, version, "-t", f"{t}/{qos}", "-q", str(qos), "-m", f"m{qos}")
    assert [received(sub, f"the QoS {q} message") for q in range(3)] == [f"{t}/{q} {q} 0 m{q}" for q in range(3)]
    assert sub.exit_code("mosquitto_sub to exit after 3 messages") == 0


@pytest.mark.parametrize("version", LEVELS)
def test_mosquitto_retained_message_and_clearing_it(processes, broker, version):
    t = topic("mosqret")
    mosquitto_pub(broker, version, "-t", t, "-q", "1", "-r", "-m", "kept")
    sub = mosquitto_sub(processes, broker, version, "-t", t, "-F", "%r %p", "-C", "1")
    assert received(sub, "the retained message") == "1 kept"
    mosquitto_pub(broker, version, "-t", t, "-q", "1", "-r", "-n")
    # Cleared: a new subscriber gets only what is published after it.
    sub = mosquitto_sub(processes, broker, version, "-t", t, "-F", "%r %p", "-C", "1")
    mosquitto_pub(broker, version, "-t", t, "-q", "1", "-m", "fresh")
    assert received(sub, "the fresh message") == "0 fresh"


def test_mosquitto_many_lines_at_qos_1_all_arrive_in_order(processes, broker):
    """mosquitto_pub -l keeps up to its in-flight limit outstanding."""
    t = topic("mosqlines")
    n = 2000
    sub = mosquitto_sub(processes, broker, 5, "-t", t, "-q", "1", "-F", "%p", "-C", str(n))
    mosquitto_pub(broker, 5, "-t", t, "-q", "1", "-l", stdin="".join(f"{i}\n" for i in range(n)))
    assert [received(sub, f"line {i} of {n}") for i in range(n)] == [str(i) for i in range(n)]


def test_mosquitto_v5_properties_reach_paho_and_back(processes, broker, mqtt_client):
    t = topic("mosqprops")
    sub = mosquitto_sub(processes, broker, 5, "-t", t, "-q", "1", "-F", "%C|%D|%R|%P|%p", "-C", "1")
    paho = mqtt_client(V5)
    paho.subscribe(t, 1)
    reply = topic("reply")
    mosquitto_pub(
        broker,
        5,
        "-t",
        t,
        "-q",
        "1",
        "-m",
        "body",
        "-D",
        "publish",
        "content-type",
        "text/plain",
        "-D",
        "publish",
        "correlation-data",
        "c-1",
        "-D",
        "publish",
        "response-topic",
        reply,
        "-D",
        "publish",
        "user-property",
        "site",
        "west",
    )
    assert received(sub, "the message with properties") == f"text/plain|c-1|{reply}|site:west|body"
    p = paho.message("mosquitto_pub's message at paho").properties
    assert (p.ContentType, p.CorrelationData, p.ResponseTopic, p.UserProperty) == (
        "text/plain",
        b"c-1",
        reply,
        [("site", "west")],
    )


def test_mosquitto_rr_gets_its_answer_from_an_mqttjs_responder(processes, broker, mqttjs):
    """MQTT 5 request/response: mosquitto_rr asks with a response topic and
    correlation data; an MQTT.js responder answers on that topic."""
    requests = topic("rr")
    responder = mqttjs(5)
    responder.subscribe(requests, 1)
    rr = processes(
        mosquitto_args("mosquitto_rr", broker, 5, "-t", requests, "-e", f"{requests}/answer", "-m", "question", "-W", "20")
    )
    req = responder.message("mosquitto_rr's request")
    assert req["payload"] == b"question"
    rp = req["properties"]
    assert rp["responseTopic"] == f"{requests}/answer"
    responder.publish(
        rp["responseTopic"], b"answer", 1, properties={"correlationData": rp.get("correlationData", "")}
    )
    assert rr.line("the response") == "answer"
    assert rr.exit_code("mosquitto_rr to exit after its answer") == 0


@pytest.mark.parametrize("version", LEVELS)
def test_mosquitto_sub_killed_leaves_its_will(processes, broker, mqtt_client, version):
    t = topic("will")
    watcher = mqtt_client(V5)
    watcher.subscribe(f"{t}/#", 1)
    sub = mosquitto_sub(
        processes,
        broker,
        version,
        "-t",
        f"{t}/data",
        "--will-topic",
        f"{t}/gone",
        "--will-payload",
        "bye",
        "--will-qos",
        "1",
        "-k",
        "60",
    )
    sub.proc.kill()
    m = watcher.message("the will of the killed mosquitto_sub")
    assert (m.topic, m.payload, m.qos) == (f"{t}/gone", b"bye", 1)


def test_an_mqtt_publish_from_mosquitto_pub_reaches_amqp(broker, conn, ch):
    plant = topic("plant")
    q = amqp_queue_on(ch, f"{plant.replace('/', '.')}.temp")
    mosquitto_pub(broker, 4, "-t", f"{plant}/temp", "-q", "1", "-m", "21.5")
    method, p, body = amqp_get(conn, ch, q)
    assert (method.routing_key, body, p.delivery_mode) == (f"{plant.replace('/', '.')}.temp", b"21.5", 2)

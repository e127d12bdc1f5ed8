//! MQTT state across a broker restart: retained messages (after a clean
//! shutdown and after kill -9), MQTT 5 sessions with an expiry (present,
//! subscribed, their queue delivered, and still expiring on time), and a
//! QoS 2 publish whose PUBREL arrives only after the restart.

mod common;
mod mqtt_common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use common::{WAIT, fresh_dir, start_in, within};
use mqtt_common::{V4, V5, v4, v5_options, wait_until};
use rmqtt_codec::v5 as wire;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5};
use rumqttc::{Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

fn publish_of(p: Packet) -> Option<rumqttc::Publish> {
    match p {
        Packet::Publish(p) => Some(p),
        _ => None,
    }
}

fn publish5_of(p: P5) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
    match p {
        P5::Publish(p) => Some(p),
        _ => None,
    }
}

async fn subscribe4(c: &mut V4, filter: &str) {
    c.client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    c.expect(&format!("SUBACK for {filter}"), |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
}

async fn subscribe5(c: &mut V5, filter: &str) {
    c.client
        .subscribe_many(vec![Filter::new(
            filter,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )])
        .await
        .expect("subscribe queued");
    c.expect(&format!("SUBACK for {filter}"), |p| {
        matches!(p, P5::SubAck(_)).then_some(())
    })
    .await;
}

async fn publish4(c: &mut V4, topic: &str, retain: bool, body: &[u8]) {
    c.client
        .publish(topic, QoS::AtLeastOnce, retain, body.to_vec())
        .await
        .expect("publish queued");
    c.expect(&format!("PUBACK for {topic}"), |p| {
        matches!(p, Packet::PubAck(_)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn retained_messages_survive_a_restart_and_a_cleared_one_stays_cleared() {
    let dir = fresh_dir();
    {
        let server = start_in(&dir).await;
        let mut c = v4(&server, "retainer").await;
        publish4(&mut c, "sensors/1", true, b"21.5").await;
        publish4(&mut c, "sensors/2", true, b"19.0").await;
        publish4(&mut c, "sensors/2", true, b"").await;
        drop(c);
        server.shutdown(Duration::from_secs(5)).await;
    }
    let server = start_in(&dir).await;
    let mut c = v4(&server, "reader").await;
    subscribe4(&mut c, "sensors/#").await;
    let p = c.expect("the retained sensors/1", publish_of).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("sensors/1", &b"21.5"[..])
    );
    assert!(p.retain, "sent as retained");
    // Retained messages go out before any later publish: a marker after
    // them proves sensors/2 was not among them.
    publish4(&mut c, "sensors/marker", false, b"m").await;
    let p = c.expect("the marker", publish_of).await;
    assert_eq!(p.topic, "sensors/marker", "sensors/2 stayed cleared");
}

/// Starts the built binary on `dir` with AMQP and MQTT on ephemeral ports;
/// returns it with the MQTT port from its `ready` line.
fn spawn(dir: &std::path::Path) -> (Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args([
            "serve",
            "--amqp",
            "off",
            "--mqtt",
            "127.0.0.1:0",
            "--stomp",
            "off",
            "--http",
            "off",
            "--data-dir",
        ])
        .arg(dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrymq starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(port) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("mqtt="))
                .and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok())
            {
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(WAIT)
        .expect("the broker logged its ready line with mqtt=ADDR");
    (child, port)
}

fn options(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_acknowledged_before_kill_9_is_there_after_it() {
    let dir = fresh_dir();
    let (mut child, port) = spawn(&dir);
    let (mut c, _) = V4::connect(options(port, "crash-retainer")).await;
    publish4(&mut c, "status/door", true, b"open").await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    drop(c);
    let (mut child, port) = spawn(&dir);
    let (mut c, _) = V4::connect(options(port, "crash-reader")).await;
    subscribe4(&mut c, "status/+").await;
    let p = c.expect("the retained status/door", publish_of).await;
    assert_eq!(&p.payload[..], b"open");
    assert!(p.retain);
    child.kill().expect("stop");
    let _ = child.wait();
}

#[tokio::test]
async fn an_mqtt5_session_is_present_after_a_restart_and_still_expires_on_time() {
    let dir = fresh_dir();
    {
        let server = start_in(&dir).await;
        for (id, expiry) in [("keeper", 3600), ("brief", 1)] {
            let mut opts = v5_options(&server, id);
            opts.set_clean_start(false);
            opts.set_session_expiry_interval(Some(expiry));
            let (mut c, _) = V5::connect(opts).await;
            subscribe5(&mut c, "jobs/#").await;
            c.client.disconnect().await.expect("disconnect queued");
            c.closed("the broker to close after DISCONNECT").await;
        }
        let mut publisher = v4(&server, "dispatcher").await;
        publish4(&mut publisher, "jobs/1", false, b"one").await;
        drop(publisher);
        server.shutdown(Duration::from_secs(5)).await;
    }
    let server = start_in(&dir).await;
    let vhost = server.broker.vhost("/").expect("vhost");
    // The short session expires one second after its disconnect, although
    // the broker that parked it is gone.
    wait_until("the session 'brief' to expire after the restart", || {
        vhost.queue("mqtt-subscription-briefqos1").is_none() && !vhost.sessions().contains("brief")
    })
    .await;
    let mut opts = v5_options(&server, "keeper");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(3600));
    let (mut c, ack) = V5::connect(opts).await;
    assert!(ack.session_present, "the session survived the restart");
    let p = c.expect("the message queued while away", publish5_of).await;
    assert_eq!(&p.payload[..], b"one");
    let mut publisher = v4(&server, "dispatcher").await;
    publish4(&mut publisher, "jobs/2", false, b"two").await;
    let p = c
        .expect("a message through the recovered subscription", publish5_of)
        .await;
    assert_eq!(&p.payload[..], b"two");
    let mut opts = v5_options(&server, "brief");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(1));
    let (_b, ack) = V5::connect(opts).await;
    assert!(!ack.session_present, "the short session expired");
}

#[tokio::test]
async fn a_will_waiting_out_its_delay_across_two_restarts_is_published_when_due() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    const DELAY: u32 = 6;
    let dir = fresh_dir();
    let vanished;
    {
        let server = start_in(&dir).await;
        let mut opts = v5_options(&server, "willer");
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(60));
        let props = LastWillProperties {
            delay_interval: Some(DELAY),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        };
        opts.set_last_will(LastWill::new(
            "wills/restart",
            "late",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            Some(props),
        ));
        let (mut c, _) = V5::connect(opts).await;
        subscribe5(&mut c, "jobs/#").await;
        c.vanish();
        vanished = std::time::Instant::now();
        let vhost = server.broker.vhost("/").expect("vhost");
        wait_until("the session to be parked", || {
            vhost
                .sessions()
                .parked()
                .iter()
                .any(|(n, ..)| n == "willer")
        })
        .await;
        // Shutting down waits for the connection's task, which records
        // the will as it ends.
        server.shutdown(Duration::from_secs(5)).await;
    }
    // A second run: its first segment carries the will on, and the
    // segment that recorded it is let go.
    start_in(&dir).await.shutdown(Duration::from_secs(5)).await;
    let server = start_in(&dir).await;
    let vhost = server.broker.vhost("/").expect("vhost");
    wait_until("the will, due after its delay, to be published", || {
        vhost.retained().get("wills.restart").is_some()
    })
    .await;
    assert!(
        vanished.elapsed() >= Duration::from_millis(u64::from(DELAY) * 1000 - 100),
        "published when due, not as soon as it was recovered"
    );
}

/// One MQTT 5 client on a raw socket, so it can stop between PUBREC and
/// PUBREL.
struct Raw {
    socket: TcpStream,
    codec: wire::Codec,
    buf: BytesMut,
}

impl Raw {
    async fn connect(port: u16, id: &str, clean_start: bool) -> (Self, wire::ConnectAck) {
        let socket = within("TCP connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connects");
        let mut raw = Self {
            socket,
            codec: wire::Codec::new(1 << 20, 1 << 20),
            buf: BytesMut::new(),
        };
        raw.send(wire::Packet::Connect(Box::new(wire::Connect {
            clean_start,
            keep_alive: 30,
            session_expiry_interval_secs: 3600,
            client_id: id.into(),
            ..Default::default()
        })))
        .await;
        let ack = match raw.next("CONNACK").await {
            wire::Packet::ConnectAck(a) => *a,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (raw, ack)
    }

    async fn send(&mut self, p: wire::Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(p, &mut out).expect("encodes");
        self.socket.write_all(&out).await.expect("write");
    }

    async fn next(&mut self, what: &str) -> wire::Packet {
        loop {
            if let Some((p, _)) = self.codec.decode(&mut self.buf).expect("decodes") {
                return p;
            }
            let n = within(what, self.socket.read_buf(&mut self.buf))
                .await
                .expect("read");
            assert!(
                n > 0,
                "the broker closed the socket while waiting for {what}"
            );
        }
    }

    async fn publish_qos2(&mut self, dup: bool) -> wire::PublishAck {
        let id = std::num::NonZeroU16::new(7).expect("non-zero");
        self.send(wire::Packet::Publish(Box::new(
            rmqtt_codec::types::Publish {
                dup,
                retain: false,
                qos: rmqtt_codec::types::QoS::ExactlyOnce,
                topic: "orders/eu".into(),
                packet_id: Some(id),
                payload: bytes::Bytes::from_static(b"exactly once"),
                properties: None,
            },
        )))
        .await;
        match self.next("PUBREC").await {
            wire::Packet::PublishReceived(a) => a,
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_qos2_publish_awaiting_pubrel_is_routed_once_across_a_restart() {
    let dir = fresh_dir();
    {
        let server = start_in(&dir).await;
        // A durable subscriber session, so the message is journalled.
        let mut opts = v5_options(&server, "orders-sink");
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(3600));
        let (mut c, _) = V5::connect(opts).await;
        c.client
            .subscribe_many(vec![Filter::new(
                "orders/#",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            )])
            .await
            .expect("subscribe queued");
        c.expect("SUBACK", |p| matches!(p, P5::SubAck(_)).then_some(()))
            .await;
        c.client.disconnect().await.expect("disconnect queued");
        c.closed("the broker to close after DISCONNECT").await;
        let port = mqtt_common::port(&server);
        let (mut raw, _) = Raw::connect(port, "exactly", true).await;
        raw.publish_qos2(false).await;
        // Gone before PUBREL.
        drop(raw);
        server.shutdown(Duration::from_secs(5)).await;
    }
    let server = start_in(&dir).await;
    let port = mqtt_common::port(&server);
    let (mut raw, ack) = Raw::connect(port, "exactly", false).await;
    assert!(ack.session_present);
    // The client did not see the PUBREC, so it sends the PUBLISH again.
    let rec = raw.publish_qos2(true).await;
    assert_eq!(rec.reason_code, wire::PublishAckReason::Success);
    raw.send(wire::Packet::PublishRelease(wire::PublishAck2 {
        packet_id: rec.packet_id,
        reason_code: wire::PublishAck2Reason::Success,
        properties: Default::default(),
        reason_string: None,
    }))
    .await;
    match raw.next("PUBCOMP").await {
        wire::Packet::PublishComplete(c) => assert_eq!(
            c.reason_code,
            wire::PublishAck2Reason::Success,
            "the packet id was known after the restart"
        ),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    let q = server
        .broker
        .vhost("/")
        .expect("vhost")
        .queue("mqtt-subscription-orders-sinkqos1")
        .expect("the subscriber's queue survived");
    assert_eq!(q.message_count(), 1, "routed exactly once");
}

/// A session resumed with an expiry of 0 keeps its queue, and what was
/// queued while the client was away, only as long as that connection: a
/// crash meanwhile must not leave the queue behind as an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_with_expiry_zero_gets_its_queue_and_does_not_outlive_a_crash() {
    let dir = fresh_dir();
    let (mut child, port) = spawn(&dir);
    let opts5 = |expiry: u32| {
        let mut o = rumqttc::v5::MqttOptions::new("resumer", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(expiry));
        o
    };
    let (mut c, _) = V5::connect(opts5(600)).await;
    subscribe5(&mut c, "orders/#").await;
    c.client.disconnect().await.expect("disconnect queued");
    c.closed("the broker to close after DISCONNECT").await;
    let (mut publisher, _) = V4::connect(options(port, "orderer")).await;
    publish4(&mut publisher, "orders/1", false, b"one").await;
    let (mut c, ack) = V5::connect(opts5(0)).await;
    assert!(ack.session_present, "resumed with expiry 0");
    let p = c.expect("the message queued while away", publish5_of).await;
    assert_eq!(&p.payload[..], b"one");
    child.kill().expect("kill -9");
    let _ = child.wait();
    drop((c, publisher));

    let server = start_in(&dir).await;
    let vhost = server.broker.vhost("/").expect("vhost");
    wait_until(
        "the crashed expiry-0 session and its queue to be gone",
        || {
            vhost.queue("mqtt-subscription-resumerqos1").is_none()
                && !vhost.sessions().contains("resumer")
        },
    )
    .await;
}

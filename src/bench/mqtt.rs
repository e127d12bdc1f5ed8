//! The MQTT scenarios, against any MQTT 3.1.1 broker (ferrymq, Mosquitto,
//! RabbitMQ's MQTT plugin, rumqttd):
//!
//! - one publisher → one subscriber, or → ten subscribers of the same topic
//!   (fan-out), at QoS 0 and QoS 1, with 16 B and 1 KiB bodies;
//! - an MQTT publisher → an AMQP consumer on a queue bound to `amq.topic`
//!   (the cross-protocol path; ferrymq and RabbitMQ only);
//! - a slow QoS 1 subscriber that handles `SLOW_RATE` messages a second
//!   while the publisher runs, then catches up: every message the broker
//!   acknowledged with PUBACK should still arrive, so `lost` counts the ones
//!   the broker dropped.
//!
//! The publisher pipelines: it writes PUBLISH packets in batches of about
//! 64 KiB and, at QoS 1, keeps up to `WINDOW` of them awaiting PUBACK rather
//! than waiting for each one. Subscribers read in bulk and answer QoS 1
//! deliveries with one write of PUBACKs per read.
//!
//! The packets are written by hand rather than with rmqtt-codec (which the
//! broker uses): a client needs only CONNECT, SUBSCRIBE, PUBLISH, PUBACK and
//! DISCONNECT out and CONNACK, SUBACK, PUBACK and PUBLISH in, each a few
//! lines of bytes; writing them straight into the batch buffer costs no
//! allocation per message, where the codec wants an owned `Publish` (topic
//! string, payload `Bytes`) per message and, being the server's codec,
//! decodes client packets, not the broker's. The tests decode the
//! hand-written packets with the broker's own decoder.
//!
//! Bodies start with the nanoseconds since the scenario's start, then the
//! message's sequence number (1, 2, 3…), so latency is publish to receipt,
//! end to end, and each subscriber can count distinct messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BufMut, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::{Connection, Target};
use super::consumer::{AckMode, Consumer, latency_histogram};
use super::producer::record_settled;
use super::report::Outcome;
use super::scenario::Budget;
use super::usage::{UsageSampler, load1};

/// QoS 1 publishes awaiting PUBACK, at most.
const WINDOW: u64 = 1000;
/// Bytes of PUBLISH packets gathered before one write.
const WRITE_BATCH: usize = 64 * 1024;
/// No packet for this long while one is awaited means the broker is stuck.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Once the publisher is done, no new delivery for this long ends the
/// scenario: what has not arrived by then counts as lost.
const SETTLE: Duration = Duration::from_secs(5);
/// After the publisher is done, the subscribers may take this long at most.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Messages a second the slow subscriber handles while the publisher runs.
const SLOW_RATE: u64 = 1000;
/// Prefetch of the AMQP consumer in the cross-protocol scenario.
const AMQP_PREFETCH: u16 = 1000;
/// Seconds; long enough that no scenario needs a PINGREQ.
const KEEP_ALIVE: u16 = 600;
/// Subscribers in the fan-out scenarios.
const FAN_OUT: usize = 10;

/// Where the messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// MQTT subscribers of the publisher's topic.
    Mqtt { subscribers: usize, slow: bool },
    /// One AMQP consumer on a queue bound to `amq.topic`.
    Amqp,
}

/// One MQTT benchmark shape. Subscriptions are at the publishes' QoS.
#[derive(Clone, Copy, Debug)]
pub struct MqttScenario {
    pub name: &'static str,
    pub body_size: usize,
    pub qos: u8,
    pub sink: Sink,
}

const fn mqtt(name: &'static str, body_size: usize, qos: u8, subscribers: usize) -> MqttScenario {
    MqttScenario {
        name,
        body_size,
        qos,
        sink: Sink::Mqtt {
            subscribers,
            slow: false,
        },
    }
}

pub const ALL: [MqttScenario; 10] = [
    mqtt("mqtt-qos0-16b", 16, 0, 1),
    mqtt("mqtt-qos0-1k", 1024, 0, 1),
    mqtt("mqtt-qos1-16b", 16, 1, 1),
    mqtt("mqtt-qos1-1k", 1024, 1, 1),
    mqtt("mqtt-fanout10-qos0-16b", 16, 0, FAN_OUT),
    mqtt("mqtt-fanout10-qos0-1k", 1024, 0, FAN_OUT),
    mqtt("mqtt-fanout10-qos1-16b", 16, 1, FAN_OUT),
    mqtt("mqtt-fanout10-qos1-1k", 1024, 1, FAN_OUT),
    MqttScenario {
        name: "mqtt-to-amqp-qos1-1k",
        body_size: 1024,
        qos: 1,
        sink: Sink::Amqp,
    },
    MqttScenario {
        name: "mqtt-slow-sub-qos1-1k",
        body_size: 1024,
        qos: 1,
        sink: Sink::Mqtt {
            subscribers: 1,
            slow: true,
        },
    },
];

pub fn find(name: &str) -> Option<MqttScenario> {
    ALL.iter().copied().find(|s| s.name == name)
}

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct MqttTarget {
    pub addr: String,
    /// User name and password for CONNECT; `None` connects anonymously.
    pub login: Option<(String, String)>,
    /// The same broker's AMQP side, for the cross-protocol scenario.
    pub amqp: Option<Target>,
}

// --- packets ---------------------------------------------------------------

/// Control packet types (MQTT 3.1.1 §2.2.1), already shifted into the high nibble.
const CONNECT: u8 = 0x10;
const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const SUBSCRIBE: u8 = 0x82;
const SUBACK: u8 = 0x90;
const PINGRESP: u8 = 0xD0;
const DISCONNECT: u8 = 0xE0;

fn put_remaining_length(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            return;
        }
    }
}

fn put_string(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// CONNECT, protocol level 4 (3.1.1), clean session.
pub fn put_connect(out: &mut BytesMut, client_id: &str, login: Option<(&str, &str)>) {
    let mut flags = 0x02;
    let mut len = 10 + 2 + client_id.len();
    if let Some((user, password)) = login {
        flags |= 0x80 | 0x40;
        len += 2 + user.len() + 2 + password.len();
    }
    out.put_u8(CONNECT);
    put_remaining_length(out, len);
    put_string(out, b"MQTT");
    out.put_u8(4);
    out.put_u8(flags);
    out.put_u16(KEEP_ALIVE);
    put_string(out, client_id.as_bytes());
    if let Some((user, password)) = login {
        put_string(out, user.as_bytes());
        put_string(out, password.as_bytes());
    }
}

pub fn put_subscribe(out: &mut BytesMut, packet_id: u16, filter: &str, qos: u8) {
    out.put_u8(SUBSCRIBE);
    put_remaining_length(out, 2 + 2 + filter.len() + 1);
    out.put_u16(packet_id);
    put_string(out, filter.as_bytes());
    out.put_u8(qos);
}

/// PUBLISH; `packet_id` is written only at QoS 1.
pub fn put_publish(out: &mut BytesMut, topic: &str, qos: u8, packet_id: u16, body: &[u8]) {
    out.put_u8(PUBLISH | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    put_remaining_length(out, 2 + topic.len() + id_len + body.len());
    put_string(out, topic.as_bytes());
    if qos > 0 {
        out.put_u16(packet_id);
    }
    out.put_slice(body);
}

pub fn put_puback(out: &mut BytesMut, packet_id: u16) {
    out.put_u8(PUBACK);
    out.put_u8(2);
    out.put_u16(packet_id);
}

/// One packet from the broker: its first byte and its variable header and payload.
#[derive(Debug)]
struct Packet {
    first: u8,
    body: BytesMut,
}

/// The next whole packet in `buf`, or `None` when more bytes are needed.
fn next_packet(buf: &mut BytesMut) -> Result<Option<Packet>> {
    let mut len = 0usize;
    let mut shift = 0;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7F) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            bail!("the broker sent a remaining length of more than four bytes");
        }
    }
    if buf.len() < at + len {
        buf.reserve(at + len - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    let mut body = buf.split_to(at + len);
    body.advance(at);
    Ok(Some(Packet { first, body }))
}

/// What a subscriber needs from a PUBLISH: its QoS and packet id, and the
/// timestamp and sequence number at the start of its payload.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    qos: u8,
    packet_id: u16,
    stamp: Option<u64>,
    seq: Option<u64>,
}

fn parse_publish(p: &Packet) -> Result<Received> {
    let qos = (p.first >> 1) & 3;
    let b = &p.body[..];
    let topic_len = usize::from(u16::from_be_bytes([
        *b.first().ok_or_else(|| anyhow!("empty PUBLISH"))?,
        *b.get(1).ok_or_else(|| anyhow!("short PUBLISH"))?,
    ]));
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        let id = b
            .get(at..at + 2)
            .ok_or_else(|| anyhow!("PUBLISH without packet id"))?;
        packet_id = u16::from_be_bytes([id[0], id[1]]);
        at += 2;
    }
    let payload = b
        .get(at..)
        .ok_or_else(|| anyhow!("PUBLISH shorter than its topic"))?;
    let word = |from: usize| {
        payload
            .get(from..from + 8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
    };
    Ok(Received {
        qos,
        packet_id,
        stamp: word(0),
        seq: word(8),
    })
}

// --- connections -----------------------------------------------------------

struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
}

impl Conn {
    async fn open(target: &MqttTarget, client_id: &str) -> Result<Conn> {
        let stream = tokio::time::timeout(IDLE_TIMEOUT, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", target.addr))?
            .with_context(|| format!("connecting to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(256 * 1024),
        };
        let mut out = BytesMut::new();
        let login = target.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        put_connect(&mut out, client_id, login);
        conn.stream.write_all(&out).await?;
        let ack = conn.next("CONNACK").await?;
        if ack.first != CONNACK || ack.body.len() != 2 {
            bail!("expected CONNACK, got packet type {:#04x}", ack.first);
        }
        if ack.body[1] != 0 {
            bail!(
                "the broker refused CONNECT with return code {}",
                ack.body[1]
            );
        }
        Ok(conn)
    }

    async fn fill(&mut self, what: &str) -> Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 32 * 1024 {
            self.rbuf.reserve(128 * 1024);
        }
        let n = tokio::time::timeout(IDLE_TIMEOUT, self.stream.read_buf(&mut self.rbuf))
            .await
            .map_err(|_| {
                anyhow!("nothing from the broker for {IDLE_TIMEOUT:?} waiting for {what}")
            })??;
        if n == 0 {
            bail!("the broker closed the connection while we waited for {what}");
        }
        Ok(())
    }

    async fn next(&mut self, what: &str) -> Result<Packet> {
        loop {
            if let Some(p) = next_packet(&mut self.rbuf)? {
                return Ok(p);
            }
            self.fill(what).await?;
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<()> {
        let mut out = BytesMut::new();
        put_subscribe(&mut out, 1, filter, qos);
        self.stream.write_all(&out).await?;
        let ack = self.next("SUBACK").await?;
        if ack.first != SUBACK || ack.body.len() < 3 {
            bail!("expected SUBACK, got packet type {:#04x}", ack.first);
        }
        if ack.body[2] > 2 {
            bail!(
                "the broker refused the subscription to {filter} ({:#04x})",
                ack.body[2]
            );
        }
        Ok(())
    }

    async fn disconnect(mut self) {
        // Best effort: the measurement is already taken.
        let _ = self.stream.write_all(&[DISCONNECT, 0]).await;
        let _ = self.stream.shutdown().await;
    }
}

// --- the publisher ---------------------------------------------------------

struct Published {
    count: u64,
    elapsed: Duration,
    /// PUBLISH to PUBACK, QoS 1 only.
    acks: Option<Histogram<u64>>,
}

async fn publish(
    mut conn: Conn,
    topic: &str,
    scenario: MqttScenario,
    count: u64,
    epoch: Instant,
    deadline: Instant,
) -> Result<Published> {
    let mut body: Vec<u8> = (0..scenario.body_size)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let per_message = scenario.body_size + topic.len() + 8;
    let batch_max = (WRITE_BATCH / per_message).max(1) as u64;
    let mut out = BytesMut::with_capacity(WRITE_BATCH + per_message);
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut batches = VecDeque::new();
    let mut latency = latency_histogram();
    let qos1 = scenario.qos > 0;
    while sent < count && Instant::now() < deadline {
        let room = if qos1 {
            // Count the PUBACKs already here; wait only when the window is full.
            acked += take_pubacks(&mut conn)?;
            while sent - acked >= WINDOW {
                conn.fill("PUBACK").await?;
                acked += take_pubacks(&mut conn)?;
            }
            record_settled(&mut batches, acked + 1, Instant::now(), &mut latency);
            WINDOW - (sent - acked)
        } else {
            u64::MAX
        };
        let batch = (count - sent).min(batch_max).min(room);
        let encoded = Instant::now();
        for i in 1..=batch {
            let seq = sent + i;
            body[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
            body[8..16].copy_from_slice(&seq.to_le_bytes());
            // Packet ids cycle through 1..=65535; the window keeps them unique.
            let id = (seq % 65_535) as u16 + 1;
            put_publish(&mut out, topic, scenario.qos, id, &body);
        }
        if qos1 {
            batches.push_back((sent + 1, sent + batch, encoded));
        }
        tokio::time::timeout(IDLE_TIMEOUT, conn.stream.write_all(&out))
            .await
            .map_err(|_| {
                anyhow!("the broker stopped reading PUBLISH packets for {IDLE_TIMEOUT:?}")
            })??;
        out.clear();
        sent += batch;
    }
    while qos1 && acked < sent {
        acked += take_pubacks(&mut conn)?;
        record_settled(&mut batches, acked + 1, Instant::now(), &mut latency);
        if acked < sent {
            conn.fill("the last PUBACKs").await?;
        }
    }
    let elapsed = epoch.elapsed();
    conn.disconnect().await;
    Ok(Published {
        count: sent,
        elapsed,
        acks: qos1.then_some(latency),
    })
}

/// PUBACKs already read or readable without waiting.
fn take_pubacks(conn: &mut Conn) -> Result<u64> {
    if conn.rbuf.capacity() - conn.rbuf.len() < 4096 {
        conn.rbuf.reserve(64 * 1024);
    }
    match conn.stream.try_read_buf(&mut conn.rbuf) {
        Ok(0) => bail!("the broker closed the publisher's connection"),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e).context("reading PUBACKs"),
    }
    let mut n = 0;
    while let Some(p) = next_packet(&mut conn.rbuf)? {
        match p.first {
            PUBACK => n += 1,
            PINGRESP => {}
            other => bail!("unexpected packet type {other:#04x} on the publisher"),
        }
    }
    Ok(n)
}

// --- subscribers -----------------------------------------------------------

/// Which sequence numbers one subscriber has seen.
struct Seen {
    bits: Vec<u64>,
    distinct: u64,
    duplicates: u64,
}

impl Seen {
    fn new(count: u64) -> Self {
        Self {
            bits: vec![0; (count / 64 + 1) as usize],
            distinct: 0,
            duplicates: 0,
        }
    }

    /// Records `seq`; true if it is new.
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        if *w & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        *w |= 1 << bit;
        self.distinct += 1;
        true
    }
}

struct SubscriberOutcome {
    distinct: u64,
    duplicates: u64,
    latency: Histogram<u64>,
    last: Option<Instant>,
}

/// Receives until `stop`, PUBACKing QoS 1 deliveries. While `slow` is set
/// it handles at most `SLOW_RATE` messages a second.
async fn subscribe(
    mut conn: Conn,
    count: u64,
    epoch: Instant,
    delivered: Arc<AtomicU64>,
    slow: Option<Arc<AtomicBool>>,
    stop: CancellationToken,
) -> Result<SubscriberOutcome> {
    let mut seen = Seen::new(count);
    let mut latency = latency_histogram();
    let mut last = None;
    let mut acks = BytesMut::with_capacity(16 * 1024);
    let mut handled = 0u64;
    let started = Instant::now();
    loop {
        while let Some(p) = next_packet(&mut conn.rbuf)? {
            if p.first & 0xF0 != PUBLISH {
                if p.first == PINGRESP {
                    continue;
                }
                bail!("unexpected packet type {:#04x} on a subscriber", p.first);
            }
            if let Some(flag) = &slow
                && flag.load(Ordering::Relaxed)
            {
                let due = started + Duration::from_micros(handled * 1_000_000 / SLOW_RATE);
                if due > Instant::now() {
                    conn.stream.write_all(&acks).await?;
                    acks.clear();
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            let r = parse_publish(&p)?;
            let now = Instant::now();
            if let Some(stamp) = r.stamp {
                let sent = epoch + Duration::from_nanos(stamp);
                latency.saturating_record(now.saturating_duration_since(sent).as_micros() as u64);
            }
            if r.seq.is_some_and(|seq| seen.mark(seq)) {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            if r.qos > 0 {
                put_puback(&mut acks, r.packet_id);
            }
            handled += 1;
            last = Some(now);
        }
        if !acks.is_empty() {
            conn.stream.write_all(&acks).await?;
            acks.clear();
        }
        tokio::select! {
            r = conn.fill("PUBLISH packets") => r?,
            () = stop.cancelled() => break,
        }
    }
    conn.disconnect().await;
    Ok(SubscriberOutcome {
        distinct: seen.distinct,
        duplicates: seen.duplicates,
        latency,
        last,
    })
}

// --- a scenario ------------------------------------------------------------

/// Runs one scenario.
pub async fn run(
    target: &MqttTarget,
    scenario: MqttScenario,
    budget: Budget,
    broker_pid: Option<u32>,
) -> Result<Outcome> {
    if scenario.body_size < 16 {
        bail!("bodies carry a timestamp and a sequence number: 16 bytes at least");
    }
    let pid = std::process::id();
    let topic = format!("ferrymq-bench/{}/{pid}", scenario.name);
    let count = budget.messages;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let slow_flag = Arc::new(AtomicBool::new(true));
    let epoch = Instant::now() + Duration::from_millis(10);
    let mut tasks: JoinSet<Result<SubscriberOutcome>> = JoinSet::new();
    let mut amqp_queue = None;
    let expected_per_message;
    match scenario.sink {
        Sink::Mqtt { subscribers, slow } => {
            expected_per_message = subscribers as u64;
            let mut conns = Vec::with_capacity(subscribers);
            for i in 0..subscribers {
                let mut c = Conn::open(target, &format!("bench-{pid}-{}-sub{i}", scenario.name))
                    .await
                    .with_context(|| format!("subscriber {i}"))?;
                c.subscribe(&topic, scenario.qos)
                    .await
                    .with_context(|| format!("subscriber {i}"))?;
                conns.push(c);
            }
            for c in conns {
                tasks.spawn(subscribe(
                    c,
                    count,
                    epoch,
                    delivered.clone(),
                    slow.then(|| slow_flag.clone()),
                    stop.clone(),
                ));
            }
        }
        Sink::Amqp => {
            expected_per_message = 1;
            let amqp = target
                .amqp
                .as_ref()
                .ok_or_else(|| anyhow!("this scenario needs the broker's AMQP address (--amqp)"))?;
            let queue = format!("ferrymq-bench-{}-{pid}", scenario.name);
            let mut control = Connection::open(amqp)
                .await
                .context("AMQP control connection")?;
            control.declare_queue(&queue, false).await?;
            // MQTT's `/` is AMQP's `.` on amq.topic, both ways.
            control
                .bind_queue(&queue, "amq.topic", &topic.replace('/', "."))
                .await?;
            let consumer = Consumer::connect(
                amqp,
                &queue,
                "bench-amqp",
                AckMode::Manual {
                    prefetch: AMQP_PREFETCH,
                },
            )
            .await
            .context("AMQP consumer")?;
            let counter = delivered.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                let o = consumer.run(epoch, counter, stop).await?;
                Ok(SubscriberOutcome {
                    distinct: o.received,
                    duplicates: 0,
                    latency: o.latency,
                    last: o.last_delivery,
                })
            });
            amqp_queue = Some((control, queue));
        }
    }
    let result = measure(
        target,
        scenario,
        &topic,
        count,
        expected_per_message,
        budget,
        broker_pid,
        epoch,
        (&delivered, &slow_flag, &stop),
        &mut tasks,
    )
    .await;
    stop.cancel();
    tasks.abort_all();
    if let Some((mut control, queue)) = amqp_queue {
        let _ = control.delete_queue(&queue).await;
        let _ = control.close().await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    target: &MqttTarget,
    scenario: MqttScenario,
    topic: &str,
    count: u64,
    expected_per_message: u64,
    budget: Budget,
    broker_pid: Option<u32>,
    epoch: Instant,
    (delivered, slow_flag, stop): (&Arc<AtomicU64>, &Arc<AtomicBool>, &CancellationToken),
    tasks: &mut JoinSet<Result<SubscriberOutcome>>,
) -> Result<Outcome> {
    let publisher = Conn::open(
        target,
        &format!("bench-{}-{}-pub", std::process::id(), scenario.name),
    )
    .await
    .context("publisher")?;
    let load = load1();
    let usage = broker_pid.map(UsageSampler::start);
    tokio::time::sleep_until(epoch.into()).await;
    let deadline = epoch + Duration::from_secs(budget.seconds);
    let published = publish(publisher, topic, scenario, count, epoch, deadline)
        .await
        .context("publisher")?;
    // The slow subscriber catches up once the publisher is done.
    slow_flag.store(false, Ordering::Relaxed);

    let expected = published.count * expected_per_message;
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut progress = (delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let now_delivered = delivered.load(Ordering::Relaxed);
        if now_delivered >= expected {
            break;
        }
        if let Some(joined) = tasks.try_join_next() {
            joined.context("subscriber task")?.context("subscriber")?;
            bail!("a subscriber stopped early");
        }
        let now = Instant::now();
        if now_delivered != progress.0 {
            progress = (now_delivered, now);
        } else if now - progress.1 > SETTLE {
            tracing::warn!(
                scenario = scenario.name,
                "{} of {expected} copies arrived; no more for {SETTLE:?}",
                now_delivered
            );
            break;
        }
        if now > drain_deadline {
            tracing::warn!(scenario = scenario.name, "gave up after {DRAIN_TIMEOUT:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    let mut latency = latency_histogram();
    let mut distinct = 0;
    let mut duplicates = 0;
    let mut last: Option<Instant> = None;
    while let Some(joined) = tasks.join_next().await {
        let o = joined.context("subscriber task")?.context("subscriber")?;
        latency
            .add(&o.latency)
            .context("merging latency histograms")?;
        distinct += o.distinct;
        duplicates += o.duplicates;
        last = last.max(o.last);
    }
    if duplicates > 0 {
        tracing::info!(scenario = scenario.name, duplicates, "duplicate deliveries");
    }
    let usage = match usage {
        Some(sampler) => Some(sampler.finish().await),
        None => None,
    };
    let acks = published.acks.as_ref().filter(|h| !h.is_empty());
    Ok(Outcome {
        scenario: scenario.name,
        published: published.count,
        delivered: distinct,
        elapsed: last.unwrap_or(epoch).saturating_duration_since(epoch),
        publish_elapsed: published.elapsed,
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        peak_rss_kib: usage.as_ref().and_then(|u| u.peak_rss_kib),
        broker_cpu: usage.and_then(|u| u.cpu),
        confirm_p50_us: acks.map(|h| h.value_at_quantile(0.50)),
        confirm_p99_us: acks.map(|h| h.value_at_quantile(0.99)),
        lost: Some(expected.saturating_sub(distinct)),
        load1: load,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::codec::{Decoder, Inbound};
    use rmqtt_codec::v5;

    /// The broker's own decoder reads what the bench writes.
    fn decode_all(mut wire: BytesMut) -> Vec<Inbound> {
        let mut decoder = Decoder::new(1 << 20);
        let mut packets = Vec::new();
        while let Some(p) = decoder.decode(&mut wire).expect("valid MQTT") {
            packets.push(p);
        }
        assert!(wire.is_empty(), "every byte decoded");
        packets
    }

    #[test]
    fn hand_written_packets_decode_with_the_brokers_codec() {
        let mut wire = BytesMut::new();
        put_connect(&mut wire, "bench-1", Some(("guest", "secret")));
        put_subscribe(&mut wire, 1, "a/b", 1);
        let body = vec![7u8; 300];
        put_publish(&mut wire, "a/b", 1, 513, &body);
        put_publish(&mut wire, "a/b", 0, 0, b"0123456789abcdef");
        put_puback(&mut wire, 513);
        let packets = decode_all(wire);
        assert_eq!(packets.len(), 5, "{packets:?}");
        match &packets[0] {
            Inbound::Connect(_, c) => {
                assert_eq!(&*c.client_id, "bench-1");
                assert_eq!(c.username.as_deref(), Some("guest"));
                assert!(c.clean_start);
                assert_eq!(c.keep_alive, KEEP_ALIVE);
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
        assert!(
            matches!(&packets[1], Inbound::Packet(v5::Packet::Subscribe(s)) if s.topic_filters.len() == 1)
        );
        match &packets[2] {
            Inbound::Packet(v5::Packet::Publish(p)) => {
                assert_eq!(&*p.topic, "a/b");
                assert_eq!(p.packet_id.map(|i| i.get()), Some(513));
                assert_eq!(&p.payload[..], &body[..]);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
        assert!(
            matches!(&packets[3], Inbound::Packet(v5::Packet::Publish(p)) if p.packet_id.is_none())
        );
        assert!(
            matches!(&packets[4], Inbound::Packet(v5::Packet::PublishAck(a)) if a.packet_id.get() == 513)
        );
    }

    #[test]
    fn a_publish_from_the_broker_parses_byte_by_byte() {
        let mut body = 99u64.to_le_bytes().to_vec();
        body.extend_from_slice(&12_345u64.to_le_bytes());
        body.extend_from_slice(&[0; 200]);
        let mut wire = BytesMut::new();
        put_publish(&mut wire, "x/y/z", 1, 77, &body);
        put_puback(&mut wire, 3);
        let mut buf = BytesMut::new();
        let mut packets = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(p) = next_packet(&mut buf).unwrap() {
                packets.push(p);
            }
        }
        assert_eq!(packets.len(), 2);
        assert_eq!(
            parse_publish(&packets[0]).unwrap(),
            Received {
                qos: 1,
                packet_id: 77,
                stamp: Some(99),
                seq: Some(12_345),
            }
        );
        assert_eq!(packets[1].first, PUBACK);
        assert_eq!(&packets[1].body[..], &[0, 3]);
    }

    #[test]
    fn remaining_lengths_use_up_to_four_bytes() {
        for n in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let mut out = BytesMut::new();
            out.put_u8(PUBLISH);
            put_remaining_length(&mut out, n);
            out.extend(std::iter::repeat_n(0u8, n));
            let p = next_packet(&mut out).unwrap().expect("whole packet");
            assert_eq!(p.body.len(), n);
        }
    }

    #[test]
    fn seen_counts_each_sequence_number_once() {
        let mut s = Seen::new(100);
        assert!(s.mark(1));
        assert!(s.mark(64));
        assert!(!s.mark(1));
        assert!(s.mark(100));
        assert!(!s.mark(10_000), "out of range is ignored");
        assert_eq!((s.distinct, s.duplicates), (3, 1));
    }

    #[test]
    fn scenario_names_are_unique_and_topics_have_no_dots() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(names.iter().all(|n| !n.contains('.') && !n.contains('/')));
    }
}

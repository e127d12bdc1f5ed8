//! The STOMP scenarios: one producer SENDs to a queue destination, one
//! subscriber receives with `ack:auto` or `ack:client-individual`. The same
//! load runs against any broker with a STOMP listener (ferrymq, RabbitMQ's
//! plugin, ActiveMQ), written as their clients write it:
//!
//! - STOMP 1.2 and `/queue/<name>` with no queue headers, which all three
//!   understand alike: each broker's default queue (durable in ferrymq and
//!   RabbitMQ; the messages are not persistent). The queue outlives the run,
//!   under a name unique to it: scripts/bench-stomp.sh runs throwaway brokers.
//! - The producer writes SEND frames in batches of about 64 KiB, asks for a
//!   RECEIPT every `RECEIPT_EVERY` messages and keeps at most
//!   `RECEIPT_WINDOW` of them outstanding: pipelined, yet bounded.
//! - The subscriber reads in bulk; with client-individual acks it ACKs each
//!   message by the 1.2 `ack` header, one write per read. Its prefetch is
//!   `PREFETCH` (RabbitMQ's `prefetch-count`, ActiveMQ's
//!   `activemq.prefetchSize`).
//!
//! Each body starts with the nanoseconds since the scenario's start, as in
//! the AMQP scenarios, so latency is SEND to MESSAGE, end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::consumer::latency_histogram;
use super::report::Outcome;
use super::scenario::Budget;
use super::usage::UsageSampler;
use crate::stomp::codec::{Command, Frame, Item, StompCodec, Version};

/// A RECEIPT is asked for after this many SENDs...
const RECEIPT_EVERY: u64 = 1000;
/// ...and at most this many may be outstanding.
const RECEIPT_WINDOW: u64 = 8;
/// Unacknowledged messages a client-individual subscriber may hold.
const PREFETCH: u32 = 1000;
/// Bytes of SEND frames gathered before one write.
const WRITE_BATCH: usize = 64 * 1024;
/// No frame for this long means the broker is stuck.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the last SEND, how long the subscriber may take to drain the queue.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How the subscriber acknowledges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// `ack:auto`.
    Auto,
    /// `ack:client-individual`, one ACK per message.
    ClientIndividual,
}

/// One STOMP benchmark shape.
#[derive(Clone, Copy, Debug)]
pub struct StompScenario {
    pub name: &'static str,
    pub body_size: usize,
    pub ack: Ack,
}

pub const ALL: [StompScenario; 4] = [
    StompScenario {
        name: "stomp-auto-16b",
        body_size: 16,
        ack: Ack::Auto,
    },
    StompScenario {
        name: "stomp-auto-1k",
        body_size: 1024,
        ack: Ack::Auto,
    },
    StompScenario {
        name: "stomp-client-16b",
        body_size: 16,
        ack: Ack::ClientIndividual,
    },
    StompScenario {
        name: "stomp-client-1k",
        body_size: 1024,
        ack: Ack::ClientIndividual,
    },
];

pub fn find(name: &str) -> Option<StompScenario> {
    ALL.iter().copied().find(|s| s.name == name)
}

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct StompTarget {
    pub addr: String,
    pub login: String,
    pub passcode: String,
    pub host: String,
}

/// One STOMP 1.2 connection: a socket, a decoder and its read buffer.
struct Conn {
    stream: TcpStream,
    codec: StompCodec,
    rbuf: BytesMut,
}

impl Conn {
    async fn open(target: &StompTarget) -> Result<Conn> {
        let stream = tokio::time::timeout(IDLE_TIMEOUT, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", target.addr))?
            .with_context(|| format!("connecting to {}", target.addr))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            codec: StompCodec::default(),
            rbuf: BytesMut::with_capacity(256 * 1024),
        };
        let connect = Frame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", target.host.as_str())
            .with_header("login", target.login.as_str())
            .with_header("passcode", target.passcode.as_str())
            .with_header("heart-beat", "0,0");
        conn.write_frame(&connect).await?;
        let reply = conn.next_frame("CONNECTED").await?;
        if reply.command != Command::Connected {
            bail!("CONNECT refused: {}", describe(&reply));
        }
        if reply.header("version") != Some("1.2") {
            bail!("the broker does not speak STOMP 1.2: {reply:?}");
        }
        conn.codec.set_version(Version::V1_2);
        Ok(conn)
    }

    async fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        let mut out = BytesMut::new();
        self.codec.encode_frame(frame, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next decoded frame already buffered, skipping heart-beats.
    fn try_frame(&mut self) -> Result<Option<Frame>> {
        while let Some(item) = self.codec.decode(&mut self.rbuf)? {
            if let Item::Frame(f) = item {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// Reads more; fails on EOF or after IDLE_TIMEOUT.
    async fn fill(&mut self, what: &str) -> Result<()> {
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

    async fn next_frame(&mut self, what: &str) -> Result<Frame> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            self.fill(what).await?;
        }
    }

    /// Waits for RECEIPT `id`; an ERROR is the broker's refusal.
    async fn receipt(&mut self, id: &str) -> Result<()> {
        let f = self.next_frame(&format!("RECEIPT {id}")).await?;
        match (f.command, f.header("receipt-id")) {
            (Command::Receipt, Some(got)) if got == id => Ok(()),
            _ => bail!("expected RECEIPT {id}, got {}", describe(&f)),
        }
    }

    async fn disconnect(mut self) -> Result<()> {
        let bye = Frame::new(Command::Disconnect).with_header("receipt", "bye");
        self.write_frame(&bye).await?;
        // Some brokers close without the receipt; either ends it.
        loop {
            match self.try_frame()? {
                Some(f) if f.command == Command::Receipt => return Ok(()),
                Some(_) => continue,
                None => {}
            }
            let read =
                tokio::time::timeout(IDLE_TIMEOUT, self.stream.read_buf(&mut self.rbuf)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                Ok(Ok(_)) => {}
                Err(_) => bail!("no RECEIPT for DISCONNECT within {IDLE_TIMEOUT:?}"),
            }
        }
    }
}

fn describe(f: &Frame) -> String {
    match f.command {
        Command::Error => format!(
            "ERROR {}: {}",
            f.header("message").unwrap_or_default(),
            String::from_utf8_lossy(&f.body).trim()
        ),
        other => format!("{other} {:?}", f.headers),
    }
}

/// Runs one scenario.
pub async fn run(
    target: &StompTarget,
    scenario: StompScenario,
    budget: Budget,
    broker_pid: Option<u32>,
) -> Result<Outcome> {
    if scenario.body_size < 8 {
        bail!(
            "bodies carry an 8-byte timestamp, {} bytes is too small",
            scenario.body_size
        );
    }
    let queue = format!("ferrymq-bench-{}-{}", scenario.name, std::process::id());
    let destination = format!("/queue/{queue}");
    let mut sub = Conn::open(target).await.context("subscriber")?;
    let mut subscribe = Frame::new(Command::Subscribe)
        .with_header("destination", destination.as_str())
        .with_header("id", "0")
        .with_header("receipt", "subscribed");
    subscribe = match scenario.ack {
        Ack::Auto => subscribe.with_header("ack", "auto"),
        Ack::ClientIndividual => subscribe
            .with_header("ack", "client-individual")
            .with_header("prefetch-count", PREFETCH.to_string())
            .with_header("activemq.prefetchSize", PREFETCH.to_string()),
    };
    sub.write_frame(&subscribe).await?;
    sub.receipt("subscribed").await.context("SUBSCRIBE")?;
    let producer = Conn::open(target).await.context("producer")?;

    let load = super::usage::load1();
    let usage = broker_pid.map(UsageSampler::start);
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(budget.seconds);
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let consuming = tasks.spawn(consume(
        sub,
        scenario.ack,
        epoch,
        delivered.clone(),
        stop.clone(),
    ));
    let (published, publish_elapsed) = produce(
        producer,
        &destination,
        scenario.body_size,
        budget.messages,
        epoch,
        deadline,
    )
    .await?;

    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while delivered.load(Ordering::Relaxed) < published {
        if consuming.is_finished() {
            let joined = tasks.join_next().await.context("subscriber task")?;
            joined.context("subscriber task")??;
            bail!("the subscriber stopped early");
        }
        if Instant::now() > drain_deadline {
            bail!(
                "timed out after {DRAIN_TIMEOUT:?} waiting for the subscriber: {} of {published} delivered",
                delivered.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    let (received, latency, last) = tasks
        .join_next()
        .await
        .context("subscriber task")?
        .context("subscriber task")??;
    let usage = match usage {
        Some(sampler) => Some(sampler.finish().await),
        None => None,
    };
    Ok(Outcome {
        scenario: scenario.name,
        published,
        delivered: received,
        elapsed: last.unwrap_or(epoch).saturating_duration_since(epoch),
        publish_elapsed,
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        peak_rss_kib: usage.as_ref().and_then(|u| u.peak_rss_kib),
        broker_cpu: usage.and_then(|u| u.cpu),
        lost: Some(published.saturating_sub(received)),
        load1: load,
        ..Outcome::default()
    })
}

/// Writes one SEND frame by hand: the same bytes a client library writes,
/// without a `Frame` per message.
fn put_send(out: &mut BytesMut, destination: &str, body: &[u8], receipt: Option<u64>) {
    out.put_slice(b"SEND\ndestination:");
    out.put_slice(destination.as_bytes());
    out.put_u8(b'\n');
    if let Some(r) = receipt {
        out.put_slice(format!("receipt:{r}\n").as_bytes());
    }
    out.put_slice(format!("content-length:{}\n\n", body.len()).as_bytes());
    out.put_slice(body);
    out.put_u8(0);
}

/// Publishes `count` messages (or until `deadline`); returns how many and
/// how long until the broker acknowledged the last with its RECEIPT.
async fn produce(
    mut conn: Conn,
    destination: &str,
    body_size: usize,
    count: u64,
    epoch: Instant,
    deadline: Instant,
) -> Result<(u64, Duration)> {
    let mut body = vec![b'x'; body_size];
    let mut out = BytesMut::with_capacity(WRITE_BATCH + body_size + 256);
    let (mut asked, mut answered) = (0u64, 0u64);
    let mut sent = 0u64;
    while sent < count && Instant::now() < deadline {
        sent += 1;
        let stamp = epoch.elapsed().as_nanos() as u64;
        body[..8].copy_from_slice(&stamp.to_le_bytes());
        let receipt = (sent.is_multiple_of(RECEIPT_EVERY) || sent == count).then(|| {
            asked += 1;
            asked
        });
        put_send(&mut out, destination, &body, receipt);
        if out.len() >= WRITE_BATCH || receipt.is_some() {
            conn.stream.write_all(&out).await?;
            out.clear();
        }
        while asked - answered >= RECEIPT_WINDOW {
            answered += 1;
            conn.receipt(&answered.to_string()).await?;
        }
    }
    if !sent.is_multiple_of(RECEIPT_EVERY) && sent != count {
        // Stopped by the deadline: one last receipt closes the run.
        asked += 1;
        out.put_slice(b"BEGIN\ntransaction:end\n");
        out.put_slice(format!("receipt:{asked}\n\n\0").as_bytes());
    }
    conn.stream.write_all(&out).await?;
    while answered < asked {
        answered += 1;
        conn.receipt(&answered.to_string()).await?;
    }
    let elapsed = epoch.elapsed();
    conn.disconnect().await?;
    Ok((sent, elapsed))
}

type Received = (u64, hdrhistogram::Histogram<u64>, Option<Instant>);

/// Receives until `stop`, ACKing each message when the mode asks for it.
async fn consume(
    mut conn: Conn,
    ack: Ack,
    epoch: Instant,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<Received> {
    let mut latency = latency_histogram();
    let mut received = 0u64;
    let mut last = None;
    let mut acks = BytesMut::with_capacity(64 * 1024);
    loop {
        let mut batch = 0u64;
        while let Some(f) = conn.try_frame()? {
            if f.command != Command::Message {
                bail!("unexpected frame while consuming: {}", describe(&f));
            }
            let now = Instant::now();
            if let Some(stamp) = f.body.get(..8) {
                let stamp = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
                let sent = epoch + Duration::from_nanos(stamp);
                latency.saturating_record(now.saturating_duration_since(sent).as_micros() as u64);
            }
            last = Some(now);
            batch += 1;
            if ack == Ack::ClientIndividual {
                let id = f
                    .header("ack")
                    .or_else(|| f.header("message-id"))
                    .ok_or_else(|| anyhow!("a MESSAGE without ack or message-id: {f:?}"))?;
                acks.put_slice(b"ACK\nid:");
                // Ids are the broker's own text; escape as 1.2 requires.
                for c in id.chars() {
                    match c {
                        ':' => acks.put_slice(b"\\c"),
                        '\\' => acks.put_slice(b"\\\\"),
                        '\n' => acks.put_slice(b"\\n"),
                        '\r' => acks.put_slice(b"\\r"),
                        c => acks.put_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                acks.put_slice(b"\n\n\0");
            }
        }
        if batch > 0 {
            received += batch;
            delivered.fetch_add(batch, Ordering::Relaxed);
        }
        if !acks.is_empty() {
            conn.stream.write_all(&acks).await?;
            acks.clear();
        }
        tokio::select! {
            r = conn.fill("MESSAGE frames") => r?,
            () = stop.cancelled() => break,
        }
    }
    conn.disconnect().await?;
    Ok((received, latency, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_sends_decode_as_sends() {
        let mut out = BytesMut::new();
        put_send(&mut out, "/queue/q", b"12345678\0x", Some(7));
        let mut codec = StompCodec::default();
        codec.set_version(Version::V1_2);
        let Some(Item::Frame(f)) = codec.decode(&mut out).expect("valid") else {
            panic!("a frame");
        };
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("destination"), Some("/queue/q"));
        assert_eq!(f.header("receipt"), Some("7"));
        assert_eq!(&f.body[..], b"12345678\0x");
        assert!(out.is_empty());
    }
}

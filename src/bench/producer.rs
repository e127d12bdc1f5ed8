//! The publishing side: frames are written in batches without waiting for
//! the broker; with confirms, a reader task settles sequence numbers and the
//! writer stops only when the window of unconfirmed messages is full.

use super::client::{CHANNEL, Connection, Target, close_method, refusal, short};
use super::wire::{FrameReader, FrameWriter, Incoming, encode, encode_body};
use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, connection};
use anyhow::{Result, anyhow, bail};
use hdrhistogram::Histogram;
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// At most this many bytes of frames are encoded before one write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// How long a write, or a wait for confirms to free the window, may take.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What one producer publishes.
#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub queue: String,
    pub count: u64,
    pub body_size: usize,
    pub persistent: bool,
    /// `Some(window)`: publisher confirms with at most `window` unconfirmed messages.
    pub confirm_window: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct ProducerOutcome {
    pub published: u64,
    pub nacked: u64,
    pub elapsed: Duration,
    /// Publish to confirm, microseconds, when confirms were on.
    pub confirm_latency: Option<Histogram<u64>>,
}

/// Publishes written but not yet confirmed, as (first, last) sequence
/// numbers and when the batch was encoded: one entry per write, so timing
/// confirms costs a lock per batch, not per message.
type InFlight = Arc<Mutex<VecDeque<(u64, u64, Instant)>>>;

fn record_confirmed(in_flight: &InFlight, low: u64, now: Instant, latency: &mut Histogram<u64>) {
    let mut batches = in_flight.lock().unwrap_or_else(|p| p.into_inner());
    record_settled(&mut batches, low, now, latency);
}

/// Records, for every sequence number below `low`, the time since its
/// batch was encoded, and forgets those batches.
pub fn record_settled(
    batches: &mut VecDeque<(u64, u64, Instant)>,
    low: u64,
    now: Instant,
    latency: &mut Histogram<u64>,
) {
    while let Some(front) = batches.front_mut() {
        let (first, last, at) = *front;
        if first >= low {
            break;
        }
        let upto = last.min(low - 1);
        let us = now.saturating_duration_since(at).as_micros() as u64;
        latency.saturating_record_n(us, upto + 1 - first);
        if upto == last {
            batches.pop_front();
        } else {
            front.0 = upto + 1;
        }
    }
}

/// Confirms received so far: `settled` counts acks and nacks, `nacked` the nacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub settled: u64,
    pub nacked: u64,
}

/// Tracks which publish sequence numbers (1, 2, 3…) the broker has settled.
/// Brokers usually settle in order with `multiple`, but need not.
#[derive(Debug)]
pub struct ConfirmTracker {
    /// The lowest sequence number not yet settled.
    low: u64,
    /// Settled numbers above `low`, out of order.
    above: BTreeSet<u64>,
    progress: Progress,
}

impl Default for ConfirmTracker {
    fn default() -> Self {
        Self {
            low: 1,
            above: BTreeSet::new(),
            progress: Progress::default(),
        }
    }
}

impl ConfirmTracker {
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Records basic.ack (`nack == false`) or basic.nack for `tag`.
    pub fn settle(&mut self, tag: u64, multiple: bool, nack: bool) {
        let newly = if multiple {
            if tag < self.low {
                0
            } else {
                let already = self.above.range(self.low..=tag).count() as u64;
                let newly = tag + 1 - self.low - already;
                self.above = self.above.split_off(&(tag + 1));
                self.low = tag + 1;
                newly
            }
        } else if tag < self.low || !self.above.insert(tag) {
            0
        } else {
            1
        };
        while self.above.remove(&self.low) {
            self.low += 1;
        }
        self.progress.settled += newly;
        if nack {
            self.progress.nacked += newly;
        }
    }
}

/// A connected producer, ready to publish when the scenario starts.
pub struct Producer {
    conn: Connection,
    spec: ProducerSpec,
    /// basic.publish and the content header, identical for every message.
    prefix: Vec<u8>,
}

impl Producer {
    pub async fn connect(target: &Target, spec: ProducerSpec) -> Result<Self> {
        if spec.body_size < 8 {
            bail!(
                "bodies carry an 8-byte timestamp, {} bytes is too small",
                spec.body_size
            );
        }
        let mut conn = Connection::open(target).await?;
        if spec.confirm_window.is_some() {
            conn.confirm_select().await?;
        }
        let mut prefix = Vec::new();
        let publish = basic::Publish {
            exchange: short("")?,
            routing_key: short(&spec.queue)?,
            mandatory: false,
            immediate: false,
        };
        encode(
            &AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Basic(basic::AMQPMethod::Publish(publish)),
            ),
            &mut prefix,
        )?;
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: spec.body_size as u64,
            properties: BasicProperties::default().with_delivery_mode(if spec.persistent {
                2
            } else {
                1
            }),
        };
        encode(&AMQPFrame::Header(CHANNEL, header), &mut prefix)?;
        Ok(Self { conn, spec, prefix })
    }

    /// Publishes until `count` messages are out (and confirmed) or `deadline`
    /// passes. Each body starts with the nanoseconds since `epoch` at encoding.
    pub async fn run(self, epoch: Instant, deadline: Instant) -> Result<ProducerOutcome> {
        let Self { conn, spec, prefix } = self;
        let frame_max = conn.frame_max;
        let (tx, mut progress) = watch::channel(Progress::default());
        let in_flight = InFlight::default();
        let reader: JoinHandle<Result<Histogram<u64>>> =
            tokio::spawn(read_confirms(conn.reader, tx, in_flight.clone()));
        let mut writer = conn.writer;
        let started = Instant::now();
        let written = publish(
            &mut writer,
            &spec,
            &prefix,
            frame_max,
            epoch,
            deadline,
            &mut progress,
            &in_flight,
        )
        .await;
        let mut outcome = match written {
            Ok(published) => {
                let last = progress.borrow().to_owned();
                ProducerOutcome {
                    published,
                    nacked: last.nacked,
                    elapsed: started.elapsed(),
                    confirm_latency: None,
                }
            }
            Err(err) => {
                // A broker that closed the channel says why on the read side.
                return Err(
                    match tokio::time::timeout(Duration::from_secs(2), reader).await {
                        Ok(Ok(Err(why))) => why.context(err.to_string()),
                        _ => err,
                    },
                );
            }
        };
        writer.push_method(0, close_method())?;
        writer.flush(STALL_TIMEOUT).await?;
        let latency = match tokio::time::timeout(STALL_TIMEOUT, reader).await {
            Ok(joined) => joined??,
            Err(_) => bail!("timed out after {STALL_TIMEOUT:?} waiting for connection.close-ok"),
        };
        if spec.confirm_window.is_some() {
            outcome.confirm_latency = Some(latency);
        }
        Ok(outcome)
    }
}

/// Writes the messages. Each body starts with the nanoseconds since `epoch`
/// at encoding, then (bodies of 16 bytes or more) the message's sequence
/// number, 1, 2, 3…, which is also its publisher-confirm delivery tag.
#[allow(clippy::too_many_arguments)]
async fn publish(
    writer: &mut FrameWriter<OwnedWriteHalf>,
    spec: &ProducerSpec,
    prefix: &[u8],
    frame_max: u32,
    epoch: Instant,
    deadline: Instant,
    progress: &mut watch::Receiver<Progress>,
    in_flight: &InFlight,
) -> Result<u64> {
    let mut body: Vec<u8> = (0..spec.body_size).map(|i| b'a' + (i % 26) as u8).collect();
    let per_message = prefix.len() + spec.body_size + 8;
    let batch_max = (WRITE_BATCH_BYTES / per_message).max(1) as u64;
    let mut published = 0u64;
    while published < spec.count && Instant::now() < deadline {
        let mut room = spec.count - published;
        if let Some(window) = spec.confirm_window {
            let free = tokio::time::timeout(
                STALL_TIMEOUT,
                progress.wait_for(|p| published - p.settled < window),
            )
            .await
            .map(|r| r.map(|p| p.settled));
            let settled = match free {
                Ok(Ok(settled)) => settled,
                Ok(Err(_)) => bail!("the confirm reader stopped after {published} publishes"),
                Err(_) => bail!(
                    "timed out after {STALL_TIMEOUT:?} waiting for publisher confirms: {} of {published} unconfirmed, window {window}",
                    published - progress.borrow().settled
                ),
            };
            room = room.min(window - (published - settled));
        }
        let batch = room.min(batch_max);
        let encoded = Instant::now();
        for i in 0..batch {
            writer.buf.extend_from_slice(prefix);
            let stamp = epoch.elapsed().as_nanos() as u64;
            body[..8].copy_from_slice(&stamp.to_le_bytes());
            if body.len() >= 16 {
                body[8..16].copy_from_slice(&(published + i + 1).to_le_bytes());
            }
            encode_body(CHANNEL, &body, frame_max, &mut writer.buf);
        }
        if spec.confirm_window.is_some() {
            in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((published + 1, published + batch, encoded));
        }
        writer.flush(STALL_TIMEOUT).await?;
        published += batch;
    }
    if spec.confirm_window.is_some() {
        let all =
            tokio::time::timeout(STALL_TIMEOUT, progress.wait_for(|p| p.settled >= published))
                .await
                .map(|r| r.map(|_| ()));
        match all {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => bail!("the confirm reader stopped before the last confirm"),
            Err(_) => bail!(
                "timed out after {STALL_TIMEOUT:?} waiting for the last confirms: {} of {published} settled",
                progress.borrow().settled
            ),
        }
    }
    Ok(published)
}

/// Reads the producer's socket: confirms, flow notices, and the final
/// close-ok. Returns the publish-to-confirm latencies.
async fn read_confirms(
    mut reader: FrameReader<OwnedReadHalf>,
    tx: watch::Sender<Progress>,
    in_flight: InFlight,
) -> Result<Histogram<u64>> {
    let mut tracker = ConfirmTracker::default();
    let mut latency = super::consumer::latency_histogram();
    loop {
        let before = tracker.progress();
        while let Some(frame) = reader.try_next()? {
            match frame {
                Incoming::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
                    tracker.settle(ack.delivery_tag, ack.multiple, false);
                }
                Incoming::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(nack))) => {
                    tracker.settle(nack.delivery_tag, nack.multiple, true);
                }
                Incoming::Method(_, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    return Ok(latency);
                }
                Incoming::Method(_, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
                    tracing::warn!(reason = %b.reason, "broker blocked the publisher");
                }
                Incoming::Method(
                    _,
                    AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)),
                ) => {
                    tracing::info!("broker unblocked the publisher");
                }
                Incoming::Method(_, method) => {
                    return Err(refusal(&method)
                        .unwrap_or_else(|| anyhow!("unexpected {method:?} on a publisher")));
                }
                Incoming::Heartbeat => {}
                other => bail!("unexpected {other:?} on a publisher"),
            }
        }
        if tracker.progress() != before {
            record_confirmed(&in_flight, tracker.low, Instant::now(), &mut latency);
            tx.send_replace(tracker.progress());
        }
        reader.fill().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiple_acks_settle_everything_up_to_the_tag() {
        let mut t = ConfirmTracker::default();
        t.settle(5, true, false);
        assert_eq!(
            t.progress(),
            Progress {
                settled: 5,
                nacked: 0
            }
        );
        t.settle(5, true, false);
        t.settle(3, false, false);
        assert_eq!(t.progress().settled, 5, "repeats settle nothing");
    }

    #[test]
    fn out_of_order_single_acks_are_counted_once() {
        let mut t = ConfirmTracker::default();
        t.settle(2, false, false);
        t.settle(4, false, true);
        assert_eq!(
            t.progress(),
            Progress {
                settled: 2,
                nacked: 1
            }
        );
        t.settle(4, true, false);
        assert_eq!(
            t.progress(),
            Progress {
                settled: 4,
                nacked: 1
            },
            "1 and 3 newly settled"
        );
        t.settle(1, false, false);
        t.settle(5, false, false);
        assert_eq!(t.progress().settled, 5);
        assert_eq!(t.low, 6);
        assert!(t.above.is_empty());
    }

    #[test]
    fn confirm_latency_counts_each_message_once_across_partial_batches() {
        let in_flight = InFlight::default();
        let t0 = Instant::now();
        in_flight.lock().unwrap().push_back((1, 10, t0));
        in_flight.lock().unwrap().push_back((11, 20, t0));
        let mut h = crate::bench::consumer::latency_histogram();
        let later = t0 + Duration::from_millis(5);
        record_confirmed(&in_flight, 6, later, &mut h);
        assert_eq!(h.len(), 5, "1..=5 confirmed");
        record_confirmed(&in_flight, 16, later, &mut h);
        assert_eq!(h.len(), 15);
        assert_eq!(
            in_flight.lock().unwrap().front().copied(),
            Some((16, 20, t0))
        );
        record_confirmed(&in_flight, 21, later, &mut h);
        assert_eq!(h.len(), 20);
        assert!(in_flight.lock().unwrap().is_empty());
        assert!(h.value_at_quantile(0.5) >= 5_000);
    }
}

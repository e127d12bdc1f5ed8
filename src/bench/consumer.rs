//! The consuming side: one task reads in bulk, reassembles deliveries from
//! their method, header and body frames, records each message's latency, and
//! writes each ack as soon as it is due: one read can hold the whole
//! prefetch, and an ack held back until the read is handled would leave
//! the broker without credit meanwhile.

use super::client::{CHANNEL, Connection, Target, close_method, refusal};
use super::wire::Incoming;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, connection};
use anyhow::{Result, anyhow, bail};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A consumer that hears nothing for this long gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// One complete delivery: its tag, and the timestamp and sequence number
/// its producer embedded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub tag: u64,
    /// Nanoseconds since the scenario's epoch, or `None` for a body under 8 bytes.
    pub stamp: Option<u64>,
    /// The producer's sequence number, or `None` for a body under 16 bytes.
    pub seq: Option<u64>,
}

/// Bytes of a body the consumer looks at: timestamp, then sequence number.
const PREAMBLE: usize = 16;

impl Delivered {
    fn from_preamble(tag: u64, first: &[u8; PREAMBLE], have: usize) -> Self {
        let word = |at: usize| {
            (have >= at + 8)
                .then(|| u64::from_le_bytes(first[at..at + 8].try_into().expect("8 bytes")))
        };
        Self {
            tag,
            stamp: word(0),
            seq: word(8),
        }
    }
}

/// Where a delivery is between its frames (AMQP 0-9-1 §4.2.6: method, header, bodies).
#[derive(Debug, Default)]
enum Assembly {
    #[default]
    Idle,
    AwaitHeader {
        tag: u64,
    },
    Body {
        tag: u64,
        remaining: u64,
        first: [u8; PREAMBLE],
        have: usize,
    },
}

/// Reassembles deliveries frame by frame. Sans-IO.
#[derive(Debug, Default)]
pub struct Assembler {
    state: Assembly,
}

impl Assembler {
    pub fn on_frame(&mut self, frame: Incoming) -> Result<Option<Delivered>> {
        match (std::mem::take(&mut self.state), frame) {
            (_, Incoming::Heartbeat) => Ok(None),
            (Assembly::Idle, Incoming::Deliver(_, tag)) => {
                self.state = Assembly::AwaitHeader { tag };
                Ok(None)
            }
            (Assembly::AwaitHeader { tag }, Incoming::Header(_, body_size)) => {
                if body_size == 0 {
                    return Ok(Some(Delivered::from_preamble(tag, &[0; PREAMBLE], 0)));
                }
                self.state = Assembly::Body {
                    tag,
                    remaining: body_size,
                    first: [0; PREAMBLE],
                    have: 0,
                };
                Ok(None)
            }
            (
                Assembly::Body {
                    tag,
                    remaining,
                    mut first,
                    mut have,
                },
                Incoming::Body(_, part),
            ) => {
                let len = part.len() as u64;
                if len > remaining {
                    bail!(
                        "delivery {tag}: body frames carry {len} bytes, only {remaining} announced"
                    );
                }
                let take = (PREAMBLE - have).min(part.len());
                first[have..have + take].copy_from_slice(&part[..take]);
                have += take;
                if len == remaining {
                    return Ok(Some(Delivered::from_preamble(tag, &first, have)));
                }
                self.state = Assembly::Body {
                    tag,
                    remaining: remaining - len,
                    first,
                    have,
                };
                Ok(None)
            }
            (
                Assembly::Idle,
                Incoming::Method(_, AMQPClass::Connection(connection::AMQPMethod::Blocked(_))),
            )
            | (
                Assembly::Idle,
                Incoming::Method(_, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))),
            ) => Ok(None),
            (
                Assembly::Idle,
                Incoming::Method(_, AMQPClass::Basic(basic::AMQPMethod::Cancel(c))),
            ) => {
                bail!("the broker cancelled consumer {}", c.consumer_tag)
            }
            (_, Incoming::Method(_, method)) => {
                Err(refusal(&method)
                    .unwrap_or_else(|| anyhow!("unexpected {method:?} on a consumer")))
            }
            (state, frame) => bail!("unexpected {frame:?} while the delivery is at {state:?}"),
        }
    }
}

/// How the consumer settles deliveries.
#[derive(Clone, Copy, Debug)]
pub enum AckMode {
    /// basic.consume with no-ack: the broker forgets a message once sent.
    NoAck,
    /// Manual acks with this prefetch, acknowledged `multiple` every half prefetch.
    Manual { prefetch: u16 },
}

#[derive(Debug)]
pub struct ConsumerOutcome {
    pub received: u64,
    /// Deliveries whose sequence number was not above the one before: with
    /// one producer and nothing requeued, any of them breaks FIFO order.
    pub out_of_order: u64,
    /// End-to-end latency in microseconds.
    pub latency: Histogram<u64>,
    pub last_delivery: Option<Instant>,
}

pub fn latency_histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes at 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("these bounds are valid")
}

/// A connected consumer, its basic.consume already answered.
pub struct Consumer {
    conn: Connection,
    mode: AckMode,
}

impl Consumer {
    pub async fn connect(target: &Target, queue: &str, tag: &str, mode: AckMode) -> Result<Self> {
        let mut conn = Connection::open(target).await?;
        if let AckMode::Manual { prefetch } = mode {
            conn.qos(prefetch).await?;
        }
        conn.consume(queue, tag, matches!(mode, AckMode::NoAck))
            .await?;
        Ok(Self { conn, mode })
    }

    /// Consumes until `stop` is cancelled, adding each delivery to `delivered`.
    pub async fn run(
        self,
        epoch: Instant,
        delivered: Arc<AtomicU64>,
        stop: CancellationToken,
    ) -> Result<ConsumerOutcome> {
        let Self { mut conn, mode } = self;
        let ack_every = match mode {
            AckMode::NoAck => None,
            AckMode::Manual { prefetch } => Some(u64::from(prefetch / 2).max(1)),
        };
        let mut assembler = Assembler::default();
        let mut latency = latency_histogram();
        let mut received = 0u64;
        let mut unacked = 0u64;
        let mut last_tag = 0u64;
        let mut last_delivery = None;
        let mut last_seq = 0u64;
        let mut out_of_order = 0u64;
        loop {
            let mut batch = 0u64;
            while let Some(frame) = conn.reader.try_next()? {
                let Some(d) = assembler.on_frame(frame)? else {
                    continue;
                };
                let now = Instant::now();
                if let Some(stamp) = d.stamp {
                    let sent = epoch + Duration::from_nanos(stamp);
                    latency
                        .saturating_record(now.saturating_duration_since(sent).as_micros() as u64);
                }
                if let Some(seq) = d.seq {
                    out_of_order += u64::from(seq <= last_seq);
                    last_seq = seq;
                }
                last_delivery = Some(now);
                batch += 1;
                if let Some(every) = ack_every {
                    last_tag = d.tag;
                    unacked += 1;
                    if unacked >= every {
                        push_ack(&mut conn, last_tag)?;
                        conn.writer.flush(WRITE_TIMEOUT).await?;
                        unacked = 0;
                    }
                }
            }
            if batch > 0 {
                received += batch;
                delivered.fetch_add(batch, Ordering::Relaxed);
            }
            conn.writer.flush(WRITE_TIMEOUT).await?;
            tokio::select! {
                read = tokio::time::timeout(IDLE_TIMEOUT, conn.reader.fill()) => match read {
                    Ok(read) => read?,
                    Err(_) => bail!("no frame from the broker for {IDLE_TIMEOUT:?} while consuming ({received} received)"),
                },
                () = stop.cancelled() => break,
            }
        }
        if unacked > 0 {
            push_ack(&mut conn, last_tag)?;
        }
        conn.writer.push_method(0, close_method())?;
        conn.writer.flush(WRITE_TIMEOUT).await?;
        loop {
            match conn
                .reader
                .next(IDLE_TIMEOUT, "connection.close-ok")
                .await?
            {
                Incoming::Method(_, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    break;
                }
                Incoming::Method(_, m) => {
                    if let Some(err) = refusal(&m) {
                        return Err(err);
                    }
                }
                _ => {}
            }
        }
        Ok(ConsumerOutcome {
            received,
            out_of_order,
            latency,
            last_delivery,
        })
    }
}

fn push_ack(conn: &mut Connection, tag: u64) -> Result<()> {
    conn.writer.push(&AMQPFrame::Method(
        CHANNEL,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple: true,
        })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::AMQPContentHeader;
    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    /// The frame as the consumer gets it: encoded by amq-protocol, read
    /// back by the bench's decoder.
    fn decoded(frame: AMQPFrame) -> Incoming {
        let mut bytes = Vec::new();
        super::super::wire::encode(&frame, &mut bytes).expect("encodes");
        super::super::wire::FrameDecoder::default()
            .decode(&mut bytes::BytesMut::from(&bytes[..]))
            .expect("decodes")
            .expect("a whole frame")
    }

    fn deliver(tag: u64) -> Incoming {
        decoded(AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "c".into(),
                delivery_tag: tag,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
            })),
        ))
    }

    fn header(size: u64) -> Incoming {
        decoded(AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: size,
                properties: BasicProperties::default().with_content_type("text/plain".into()),
            },
        ))
    }

    #[test]
    fn a_timestamp_split_across_body_frames_is_reassembled() {
        let mut a = Assembler::default();
        let stamp = 0x0102_0304_0506_0708u64.to_le_bytes();
        assert_eq!(a.on_frame(deliver(7)).unwrap(), None);
        assert_eq!(a.on_frame(header(12)).unwrap(), None);
        assert_eq!(
            a.on_frame(Incoming::Body(1, Bytes::copy_from_slice(&stamp[..3])))
                .unwrap(),
            None
        );
        let mut rest = stamp[3..].to_vec();
        rest.extend_from_slice(b"tail");
        let done = a.on_frame(Incoming::Body(1, Bytes::from(rest))).unwrap();
        assert_eq!(
            done,
            Some(Delivered {
                tag: 7,
                stamp: Some(0x0102_0304_0506_0708),
                seq: None,
            })
        );
        assert_eq!(
            a.on_frame(deliver(8)).unwrap(),
            None,
            "ready for the next delivery"
        );
    }

    #[test]
    fn an_empty_body_completes_at_the_header() {
        let mut a = Assembler::default();
        a.on_frame(deliver(1)).unwrap();
        assert_eq!(
            a.on_frame(header(0)).unwrap(),
            Some(Delivered {
                tag: 1,
                stamp: None,
                seq: None,
            })
        );
    }

    #[test]
    fn the_sequence_number_follows_the_timestamp() {
        let mut a = Assembler::default();
        a.on_frame(deliver(3)).unwrap();
        a.on_frame(header(20)).unwrap();
        let mut body = 5u64.to_le_bytes().to_vec();
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(b"more");
        let done = a.on_frame(Incoming::Body(1, Bytes::from(body))).unwrap();
        assert_eq!(
            done,
            Some(Delivered {
                tag: 3,
                stamp: Some(5),
                seq: Some(42),
            })
        );
    }

    #[test]
    fn a_body_longer_than_announced_is_an_error() {
        let mut a = Assembler::default();
        a.on_frame(deliver(1)).unwrap();
        a.on_frame(header(4)).unwrap();
        assert!(
            a.on_frame(Incoming::Body(1, Bytes::from_static(b"too long")))
                .is_err()
        );
    }

    #[test]
    fn a_broker_cancel_is_reported() {
        let mut a = Assembler::default();
        let cancel = Incoming::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "c".into(),
                nowait: true,
            })),
        );
        assert!(
            a.on_frame(cancel)
                .unwrap_err()
                .to_string()
                .contains("cancelled")
        );
    }
}

//! Frames on the socket: a reader that checks frame-max from the 7-byte
//! header before buffering and hands body frames back without parsing them,
//! and a writer that batches frames into one buffer per `write_all`.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::AMQPClass;
use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frame type octets (AMQP 0-9-1 §4.2.3).
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type, channel and payload size precede every payload; one end octet follows.
pub const FRAME_OVERHEAD: usize = 8;
const FRAME_HEADER_LEN: usize = 7;
/// basic.deliver's class and method ids (60, 60).
const BASIC_DELIVER: [u8; 4] = [0, 60, 0, 60];

/// The frame-max we propose, and the limit used before tune settles it.
pub const CLIENT_FRAME_MAX: u32 = 131_072;

/// One frame from the broker, with body payloads kept as shared bytes.
#[derive(Debug)]
pub enum Incoming {
    Method(u16, AMQPClass),
    /// basic.deliver, by its delivery tag: all a consumer needs of it.
    Deliver(u16, u64),
    /// A content header, by its body size: the properties are not read.
    Header(u16, u64),
    Body(u16, Bytes),
    Heartbeat,
}

impl Incoming {
    /// The channel the frame arrived on (heartbeats belong to the connection, 0).
    pub fn channel(&self) -> u16 {
        match self {
            Incoming::Method(ch, _)
            | Incoming::Deliver(ch, _)
            | Incoming::Header(ch, _)
            | Incoming::Body(ch, _) => *ch,
            Incoming::Heartbeat => 0,
        }
    }
}

/// Turns a byte stream into frames. Sans-IO: feed it with [`FrameReader`].
#[derive(Debug)]
pub struct FrameDecoder {
    frame_max: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            frame_max: CLIENT_FRAME_MAX,
        }
    }
}

impl FrameDecoder {
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    /// The next whole frame in `buf`, or `Ok(None)` when more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Incoming>> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind = buf[0];
        let channel = u16::from_be_bytes([buf[1], buf[2]]);
        let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
        // parse_frame would wait forever for a frame that announces 4 GiB.
        if size + FRAME_OVERHEAD > self.frame_max as usize {
            bail!(
                "broker sent a {} byte frame, above the negotiated frame-max {}",
                size + FRAME_OVERHEAD,
                self.frame_max
            );
        }
        let total = size + FRAME_OVERHEAD;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        if buf[total - 1] != FRAME_END {
            bail!("frame of type {kind} on channel {channel} does not end with 0xCE");
        }
        let mut frame = buf.split_to(total);
        match kind {
            FRAME_BODY => {
                frame.advance(FRAME_HEADER_LEN);
                frame.truncate(size);
                Ok(Some(Incoming::Body(channel, frame.freeze())))
            }
            FRAME_HEARTBEAT => Ok(Some(Incoming::Heartbeat)),
            // The two frames every delivery brings are read by hand: the
            // load generator must not be what limits a consumer, and
            // amq-protocol's parser allocates the deliver's three strings
            // and the header's property table (a fifth of the bench's CPU
            // in the 16-byte confirm row). Everything else goes to it.
            FRAME_HEADER => {
                let payload = &frame[FRAME_HEADER_LEN..total - 1];
                // class-id, weight, then the body size (§4.2.6.1).
                let size = payload
                    .get(4..12)
                    .ok_or_else(|| anyhow!("a content header of {} bytes", payload.len()))?;
                let size = u64::from_be_bytes(size.try_into().expect("8 bytes"));
                Ok(Some(Incoming::Header(channel, size)))
            }
            FRAME_METHOD
                if frame.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + 4)
                    == Some(&BASIC_DELIVER[..]) =>
            {
                let args = &frame[FRAME_HEADER_LEN + 4..total - 1];
                // consumer-tag (a short string), then the delivery tag.
                let tag = args
                    .first()
                    .map(|&n| 1 + usize::from(n))
                    .and_then(|at| args.get(at..at + 8))
                    .ok_or_else(|| anyhow!("a basic.deliver of {} bytes", args.len()))?;
                let tag = u64::from_be_bytes(tag.try_into().expect("8 bytes"));
                Ok(Some(Incoming::Deliver(channel, tag)))
            }
            FRAME_METHOD => match parse_frame(&frame[..]) {
                Ok((_, AMQPFrame::Method(ch, method))) => Ok(Some(Incoming::Method(ch, method))),
                Ok((_, other)) => bail!("unexpected frame {other:?}"),
                Err(e) => bail!("cannot parse a frame of type {kind} on channel {channel}: {e:?}"),
            },
            _ => bail!("unknown frame type {kind} on channel {channel}"),
        }
    }
}

/// The read half of a connection plus its buffer.
pub struct FrameReader<R> {
    io: R,
    /// The only non-zero channel frames may arrive on.
    channel: u16,
    buf: BytesMut,
    pub decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, channel: u16) -> Self {
        Self {
            io,
            channel,
            buf: BytesMut::with_capacity(256 * 1024),
            decoder: FrameDecoder::default(),
        }
    }

    /// A frame already buffered, without reading the socket.
    pub fn try_next(&mut self) -> Result<Option<Incoming>> {
        let frame = self.decoder.decode(&mut self.buf)?;
        if let Some(ch) = frame.as_ref().map(Incoming::channel)
            && ch != 0
            && ch != self.channel
        {
            bail!(
                "the broker sent a frame on channel {ch}; only channel {} is open",
                self.channel
            );
        }
        Ok(frame)
    }

    /// Reads whatever the socket has (at least one byte). Cancel-safe.
    pub async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < 64 * 1024 {
            self.buf.reserve(256 * 1024);
        }
        let n = self
            .io
            .read_buf(&mut self.buf)
            .await
            .context("reading from the broker")?;
        if n == 0 {
            bail!("the broker closed the connection");
        }
        Ok(())
    }

    /// The next frame, waiting at most `timeout`; `what` names it in the error.
    pub async fn next(&mut self, timeout: Duration, what: &str) -> Result<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(frame) = self.try_next()? {
                return Ok(frame);
            }
            tokio::time::timeout_at(deadline, self.fill())
                .await
                .map_err(|_| anyhow!("timed out after {timeout:?} waiting for {what}"))??;
        }
    }
}

/// The write half of a connection plus the buffer that batches frames.
pub struct FrameWriter<W> {
    io: W,
    pub buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        Self {
            io,
            buf: Vec::with_capacity(128 * 1024),
        }
    }

    pub fn push(&mut self, frame: &AMQPFrame) -> Result<()> {
        encode(frame, &mut self.buf)
    }

    pub fn push_method(&mut self, channel: u16, method: AMQPClass) -> Result<()> {
        self.push(&AMQPFrame::Method(channel, method))
    }

    /// Writes the buffered frames, waiting at most `timeout`.
    pub async fn flush(&mut self, timeout: Duration) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let len = self.buf.len();
        tokio::time::timeout(timeout, self.io.write_all(&self.buf))
            .await
            .map_err(|_| anyhow!("timed out after {timeout:?} writing {len} bytes to the broker"))?
            .context("writing to the broker")?;
        self.buf.clear();
        Ok(())
    }
}

/// Appends one frame to `out` with amq-protocol's generator.
pub fn encode(frame: &AMQPFrame, out: &mut Vec<u8>) -> Result<()> {
    let ctx = gen_frame(frame)(WriteContext::from(std::mem::take(out)))
        .map_err(|e| anyhow!("cannot encode {frame:?}: {e}"))?;
    *out = ctx.write;
    Ok(())
}

/// Appends body frames for `payload`, split so no frame exceeds `frame_max`.
/// Written by hand: `AMQPFrame::Body` would need the payload copied into a Vec first.
pub fn encode_body(channel: u16, payload: &[u8], frame_max: u32, out: &mut Vec<u8>) {
    let chunk = frame_max as usize - FRAME_OVERHEAD;
    for part in payload.chunks(chunk) {
        out.push(FRAME_BODY);
        out.extend_from_slice(&channel.to_be_bytes());
        // A part is at most frame_max - 8 bytes, so it fits in u32.
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
        out.push(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::AMQPContentHeader;
    use amq_protocol::protocol::{BasicProperties, basic};

    fn publish_frames(body: &[u8], frame_max: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        }));
        encode(&AMQPFrame::Method(1, publish), &mut out).unwrap();
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: BasicProperties::default(),
        };
        encode(&AMQPFrame::Header(1, header), &mut out).unwrap();
        encode_body(1, body, frame_max, &mut out);
        out
    }

    #[test]
    fn bodies_split_at_frame_max_and_decode_back_byte_by_byte() {
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let wire = publish_frames(&body, 4096);
        let decoder = FrameDecoder { frame_max: 4096 };
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[byte]);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert!(matches!(
            frames[0],
            Incoming::Method(1, AMQPClass::Basic(_))
        ));
        assert!(matches!(&frames[1], Incoming::Header(1, 10_000)));
        let parts: Vec<&[u8]> = frames[2..]
            .iter()
            .map(|f| match f {
                Incoming::Body(1, b) => &b[..],
                other => panic!("expected a body frame, got {other:?}"),
            })
            .collect();
        assert_eq!(parts.len(), 3, "10000 bytes at 4088 per frame");
        assert!(parts.iter().all(|p| p.len() + FRAME_OVERHEAD <= 4096));
        assert_eq!(parts.concat(), body);
    }

    #[test]
    fn a_frame_above_frame_max_is_refused_from_its_header() {
        let decoder = FrameDecoder { frame_max: 4096 };
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(decoder.decode(&mut buf).is_err());
    }

    #[test]
    fn a_deliver_is_read_by_hand_to_the_tag_amq_protocol_wrote() {
        for tag_len in [0usize, 1, 200, 255] {
            let mut out = Vec::new();
            let deliver = AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Deliver(
                amq_protocol::protocol::basic::Deliver {
                    consumer_tag: "c".repeat(tag_len).into(),
                    delivery_tag: 0x0102_0304_0506_0708 + tag_len as u64,
                    redelivered: true,
                    exchange: "x".repeat(255).into(),
                    routing_key: "k".into(),
                },
            ));
            encode(&AMQPFrame::Method(3, deliver), &mut out).unwrap();
            let got = FrameDecoder::default()
                .decode(&mut BytesMut::from(&out[..]))
                .unwrap();
            assert!(
                matches!(got, Some(Incoming::Deliver(3, t)) if t == 0x0102_0304_0506_0708 + tag_len as u64),
                "consumer tag of {tag_len}: {got:?}"
            );
        }
    }

    #[test]
    fn a_header_is_read_by_hand_to_its_body_size_whatever_its_properties() {
        let mut out = Vec::new();
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: 1 << 40,
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id("m".repeat(200).into())
                .with_priority(9),
        };
        encode(&AMQPFrame::Header(2, header), &mut out).unwrap();
        let got = FrameDecoder::default()
            .decode(&mut BytesMut::from(&out[..]))
            .unwrap();
        assert!(
            matches!(got, Some(Incoming::Header(2, size)) if size == 1 << 40),
            "{got:?}"
        );
    }

    #[test]
    fn a_deliver_or_header_cut_short_is_an_error_not_a_panic() {
        // Frames whose payload ends before the field that is read.
        let frame = |kind: u8, payload: &[u8]| {
            let mut f = vec![kind, 0, 1];
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(payload);
            f.push(FRAME_END);
            BytesMut::from(&f[..])
        };
        let decoder = FrameDecoder::default();
        for payload in [
            &[0, 60, 0, 60][..],
            &[0, 60, 0, 60, 5, b'a'],
            &[0, 60, 0, 60, 0, 1, 2],
        ] {
            assert!(
                decoder.decode(&mut frame(FRAME_METHOD, payload)).is_err(),
                "{payload:?}"
            );
        }
        assert!(
            decoder
                .decode(&mut frame(FRAME_HEADER, &[0, 60, 0, 0, 1]))
                .is_err()
        );
        assert!(decoder.decode(&mut frame(FRAME_METHOD, &[0, 60])).is_err());
    }

    #[test]
    fn heartbeats_decode() {
        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert!(matches!(
            decoder.decode(&mut buf).unwrap(),
            Some(Incoming::Heartbeat)
        ));
        assert!(buf.is_empty());
    }
}

//! AMQP frames off and onto the wire. amq-protocol parses and generates
//! methods and content headers; this file only adds what a server needs
//! around it: the frame-max check from the 7-byte frame header before the
//! payload is buffered (the crate's streaming parser would wait for any
//! announced size), and body frames taken as `Bytes` slices of the read
//! buffer instead of the crate's per-frame `Vec` copy.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::AMQPClass;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// type (1) + channel (2) + size (4)
const FRAME_HEADER_LEN: usize = 7;
/// Class and method id of basic.qos, whose first field is prefetch-size.
const BASIC_QOS: [u8; 4] = [0, 60, 0, 10];

/// The protocol header this server speaks.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// One inbound frame.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// The client's `AMQP 0-9-1` greeting.
    ProtocolHeader,
    /// A method on a channel.
    Method(u16, AMQPClass),
    /// A content header on a channel.
    Header(u16, AMQPContentHeader),
    /// A body frame on a channel.
    Body(u16, Bytes),
    /// A heartbeat on a channel (only 0 is valid).
    Heartbeat(u16),
}

/// Why the byte stream cannot be read as AMQP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The first 8 bytes were not `AMQP 0 0 9 1`.
    #[error("bad protocol header")]
    BadProtocolHeader,
    /// A frame larger than the negotiated frame-max.
    #[error("frame size {size} exceeds the negotiated frame_max {max}")]
    TooLarge {
        /// Announced frame size, with envelope.
        size: usize,
        /// Negotiated limit.
        max: usize,
    },
    /// A frame whose last byte is not the frame-end octet.
    #[error("frame end octet missing")]
    BadFrameEnd,
    /// An unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A method or content header that does not parse.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// basic.qos with a prefetch-size, which RabbitMQ does not implement
    /// either (it answers 540); amq-protocol's parser drops the field, so
    /// the codec reads it from the frame.
    #[error("prefetch_size!=0 ({0})")]
    PrefetchSize(u32),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// Decodes the protocol header, then frames.
#[derive(Debug)]
pub struct AmqpCodec {
    greeted: bool,
    frame_max: usize,
}

impl AmqpCodec {
    /// A codec for a new connection, limited to `frame_max` bytes per frame
    /// until negotiation lowers it.
    pub fn new(frame_max: usize) -> Self {
        Self {
            greeted: false,
            frame_max,
        }
    }

    /// Applies the negotiated frame-max.
    pub fn set_frame_max(&mut self, frame_max: usize) {
        self.frame_max = frame_max;
    }
}

impl Decoder for AmqpCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if !self.greeted {
            // Compare what has arrived so far, so garbage is refused at once.
            let n = src.len().min(PROTOCOL_HEADER.len());
            if src[..n] != PROTOCOL_HEADER[..n] {
                return Err(CodecError::BadProtocolHeader);
            }
            if n < PROTOCOL_HEADER.len() {
                return Ok(None);
            }
            src.advance(PROTOCOL_HEADER.len());
            self.greeted = true;
            return Ok(Some(Inbound::ProtocolHeader));
        }
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind = src[0];
        let channel = u16::from_be_bytes([src[1], src[2]]);
        let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]) as usize;
        let total = size + FRAME_HEADER_LEN + 1;
        if total > self.frame_max {
            return Err(CodecError::TooLarge {
                size: total,
                max: self.frame_max,
            });
        }
        if !matches!(
            kind,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ) {
            return Err(CodecError::UnknownFrameType(kind));
        }
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        if src[total - 1] != FRAME_END {
            return Err(CodecError::BadFrameEnd);
        }
        if kind == FRAME_METHOD && size >= 11 && src[7..11] == BASIC_QOS {
            let prefetch_size = u32::from_be_bytes([src[11], src[12], src[13], src[14]]);
            if prefetch_size != 0 {
                return Err(CodecError::PrefetchSize(prefetch_size));
            }
        }
        let inbound = match kind {
            FRAME_BODY => {
                src.advance(FRAME_HEADER_LEN);
                let body = src.split_to(size).freeze();
                src.advance(1);
                return Ok(Some(Inbound::Body(channel, body)));
            }
            FRAME_HEARTBEAT => Inbound::Heartbeat(channel),
            _ => match parse_frame(&src[..total]) {
                Ok((_, AMQPFrame::Method(ch, method))) => Inbound::Method(ch, method),
                Ok((_, AMQPFrame::Header(ch, header))) => Inbound::Header(ch, header),
                _ if kind == FRAME_METHOD => return Err(CodecError::Malformed("method")),
                _ => return Err(CodecError::Malformed("content header")),
            },
        };
        src.advance(total);
        Ok(Some(inbound))
    }
}

/// Appends frames to a connection's write buffer.
#[derive(Debug, Default)]
pub struct FrameWriter {
    scratch: Vec<u8>,
}

impl FrameWriter {
    /// Serialises a method or content-header frame.
    pub fn frame(&mut self, out: &mut BytesMut, frame: &AMQPFrame) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch = match gen_frame(frame)(WriteContext::from(scratch)) {
            Ok(ctx) => ctx.write,
            Err(e) => {
                // Only values the server built go through here; a failure
                // means a bug in that construction, so log it and send nothing.
                tracing::error!(error = %e, "could not serialise an outbound frame");
                Vec::new()
            }
        };
        out.extend_from_slice(&scratch);
        self.scratch = scratch;
    }

    /// Writes a method frame.
    pub fn method(&mut self, out: &mut BytesMut, channel: u16, method: AMQPClass) {
        self.frame(out, &AMQPFrame::Method(channel, method));
    }

    /// Writes a basic.deliver method frame. Written by hand because it goes
    /// out once per message: through amq-protocol it cost three
    /// `ShortString` allocations and a generator run each time. Strings
    /// longer than a short string's 255 bytes are cut at a character
    /// boundary, as `session::short` cuts them; a test holds the bytes
    /// equal to amq-protocol's.
    pub fn deliver(
        out: &mut BytesMut,
        channel: u16,
        consumer_tag: &str,
        delivery_tag: u64,
        redelivered: bool,
        exchange: &str,
        routing_key: &str,
    ) {
        fn short_str(out: &mut BytesMut, s: &str) {
            let mut end = s.len().min(255);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.put_u8(end as u8);
            out.put_slice(&s.as_bytes()[..end]);
        }
        out.reserve(FRAME_HEADER_LEN + 4 + 3 + 8 + 1 + 3 * 255);
        out.put_u8(FRAME_METHOD);
        out.put_u16(channel);
        let size_at = out.len();
        out.put_u32(0);
        out.put_slice(&[0, 60, 0, 60]);
        short_str(out, consumer_tag);
        out.put_u64(delivery_tag);
        out.put_u8(u8::from(redelivered));
        short_str(out, exchange);
        short_str(out, routing_key);
        let size = (out.len() - size_at - 4) as u32;
        out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
        out.put_u8(FRAME_END);
    }

    /// Writes a body as frames of at most `frame_max` bytes each.
    pub fn body(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: usize) {
        let chunk = frame_max.saturating_sub(FRAME_HEADER_LEN + 1).max(1);
        for piece in body.chunks(chunk) {
            out.reserve(piece.len() + FRAME_HEADER_LEN + 1);
            out.put_u8(FRAME_BODY);
            out.put_u16(channel);
            out.put_u32(piece.len() as u32);
            out.put_slice(piece);
            out.put_u8(FRAME_END);
        }
    }

    /// Writes a heartbeat frame.
    pub fn heartbeat(out: &mut BytesMut) {
        out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
    }
}

/// Fuzzing entry (fuzz/fuzz_targets/amqp.rs and a property test below):
/// the protocol header and then `data` are decoded whole and split in two
/// at a cut its first byte chooses, as reads split a socket's bytes; both
/// must give the same frames and the same error, and nothing may panic.
#[cfg(any(fuzzing, test))]
pub fn fuzz_decode(data: &[u8]) {
    fn run(pieces: &[&[u8]]) -> (Vec<String>, Option<CodecError>) {
        let mut codec = AmqpCodec::new(4096);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(item)) => out.push(format!("{item:?}")),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }
    let mut wire = PROTOCOL_HEADER.to_vec();
    wire.extend_from_slice(data);
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % (wire.len() + 1));
    let whole = run(&[&wire]);
    let split = run(&[&wire[..cut], &wire[cut..]]);
    assert_eq!(
        whole, split,
        "frames do not depend on how reads split the bytes"
    );
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        #[test]
        fn random_input_decodes_the_same_however_it_is_split(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            super::fuzz_decode(&data);
        }
    }

    use super::*;
    use amq_protocol::protocol::{basic, channel};

    fn encode(frames: &[AMQPFrame]) -> BytesMut {
        let mut out = BytesMut::new();
        let mut w = FrameWriter::default();
        for f in frames {
            w.frame(&mut out, f);
        }
        out
    }

    fn decode_all(codec: &mut AmqpCodec, bytes: &[u8], one_at_a_time: bool) -> Vec<Inbound> {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let step = if one_at_a_time { 1 } else { bytes.len().max(1) };
        for piece in bytes.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(f) = codec.decode(&mut buf).expect("valid input") {
                got.push(f);
            }
        }
        assert!(buf.is_empty(), "every byte consumed");
        got
    }

    #[test]
    fn header_method_and_body_frames_decode_whole_and_byte_by_byte() {
        let mut wire = BytesMut::from(&PROTOCOL_HEADER[..]);
        wire.extend_from_slice(&encode(&[
            AMQPFrame::Method(
                0,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            ),
            AMQPFrame::Header(
                3,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 5,
                    properties: basic::AMQPProperties::default().with_delivery_mode(2),
                },
            ),
        ]));
        FrameWriter::body(&mut wire, 3, b"hello", 131072);
        FrameWriter::heartbeat(&mut wire);
        for one in [false, true] {
            let got = decode_all(&mut AmqpCodec::new(131072), &wire, one);
            assert_eq!(got.len(), 5);
            assert_eq!(got[0], Inbound::ProtocolHeader);
            assert!(matches!(got[1], Inbound::Method(0, AMQPClass::Channel(_))));
            assert!(matches!(&got[2], Inbound::Header(3, h) if h.body_size == 5));
            assert_eq!(got[3], Inbound::Body(3, Bytes::from_static(b"hello")));
            assert_eq!(got[4], Inbound::Heartbeat(0));
        }
    }

    #[test]
    fn bodies_split_at_frame_max() {
        let mut out = BytesMut::new();
        FrameWriter::body(&mut out, 1, &[7u8; 10], 12);
        // 12-byte frames carry 4 body bytes each: 4 + 4 + 2
        assert_eq!(out.len(), 3 * 8 + 10);
        let mut codec = AmqpCodec {
            greeted: true,
            frame_max: 12,
        };
        let got = decode_all(&mut codec, &out, false);
        let sizes: Vec<usize> = got
            .iter()
            .map(|f| match f {
                Inbound::Body(1, b) => b.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(sizes, [4, 4, 2]);
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header_alone() {
        let mut codec = AmqpCodec {
            greeted: true,
            frame_max: 4096,
        };
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0xFF, 0xFF, 0xFF, 0xF0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn deliver_is_written_as_amq_protocol_writes_it(
            channel: u16,
            tag in "\\PC{0,300}",
            delivery_tag: u64,
            redelivered: bool,
            exchange in "\\PC{0,300}",
            key in "\\PC{0,300}",
        ) {
            let mut ours = BytesMut::new();
            FrameWriter::deliver(&mut ours, channel, &tag, delivery_tag, redelivered, &exchange, &key);
            let mut theirs = BytesMut::new();
            FrameWriter::default().method(
                &mut theirs,
                channel,
                AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Deliver(
                    amq_protocol::protocol::basic::Deliver {
                        consumer_tag: crate::amqp::session::short(&tag),
                        delivery_tag,
                        redelivered,
                        exchange: crate::amqp::session::short(&exchange),
                        routing_key: crate::amqp::session::short(&key),
                    },
                )),
            );
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn a_qos_with_a_prefetch_size_is_refused_and_one_without_is_not() {
        let qos = |size: u32| {
            let mut f = vec![FRAME_METHOD, 0, 1, 0, 0, 0, 11, 0, 60, 0, 10];
            f.extend_from_slice(&size.to_be_bytes());
            f.extend_from_slice(&[0, 10, 0, FRAME_END]);
            BytesMut::from(&f[..])
        };
        let mut codec = AmqpCodec {
            greeted: true,
            frame_max: 4096,
        };
        assert_eq!(
            codec.decode(&mut qos(65536)),
            Err(CodecError::PrefetchSize(65536))
        );
        assert!(matches!(
            codec.decode(&mut qos(0)),
            Ok(Some(Inbound::Method(1, AMQPClass::Basic(_))))
        ));
    }

    #[test]
    fn garbage_is_refused() {
        let mut codec = AmqpCodec::new(4096);
        assert_eq!(
            codec.decode(&mut BytesMut::from(&b"HTTP/1.1"[..])),
            Err(CodecError::BadProtocolHeader)
        );
        let mut codec = AmqpCodec::new(4096);
        assert_eq!(
            codec.decode(&mut BytesMut::from(&b"AMQP\x00\x00\x08\x00"[..])),
            Err(CodecError::BadProtocolHeader)
        );
        let mut codec = AmqpCodec {
            greeted: true,
            frame_max: 4096,
        };
        let mut bad_end = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0x00][..]);
        assert_eq!(codec.decode(&mut bad_end), Err(CodecError::BadFrameEnd));
        let mut bad_type = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(
            codec.decode(&mut bad_type),
            Err(CodecError::UnknownFrameType(9))
        );
        // a method frame whose payload is not a known class/method
        let mut bad_method =
            BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0, 4, 0, 99, 0, 1, FRAME_END][..]);
        assert_eq!(
            codec.decode(&mut bad_method),
            Err(CodecError::Malformed("method"))
        );
    }
}

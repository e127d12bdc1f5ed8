//! Bytes <-> MQTT packets, over rmqtt-codec.
//!
//! Why rmqtt-codec 0.3: it decodes and encodes every packet of 3.1, 3.1.1
//! and 5.0 in both directions with public fields, reads AUTH and a v5
//! DISCONNECT without properties, checks the size limit from the fixed
//! header before buffering a body, and survived our random-input probe with
//! no panic. rumqttd's protocol module, tried first, keeps PUBLISH's QoS,
//! packet id and dup flag private to its crate, panics (`unreachable!`) on
//! a CONNACK or UNSUBACK sent to a server, cannot read AUTH, and brings
//! about 200 crates (axum, metrics, config) with it. rumqttc's codec is
//! written for clients: it rejects a zero-length v5 DISCONNECT and cannot
//! read AUTH either.
//!
//! The session speaks one dialect, MQTT 5's packet types: `Decoder` lifts
//! 3.1 / 3.1.1 packets into them, and `Writer` lowers them again for a
//! 3.1.1 peer (dropping properties, mapping reason codes to 3.1.1's return
//! codes). Both halves always carry a size limit: rmqtt-codec reads 0 as
//! "unlimited".

use std::num::NonZeroU16;

use bytes::{Buf, BytesMut};
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3;
use rmqtt_codec::v5;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use tokio_util::codec::{Decoder as _, Encoder as _};

/// The protocol level a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 (protocol name MQIsdp, level 3).
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Version {
    /// Whether the peer speaks MQTT 5.
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }
}

/// One packet from the client, in MQTT 5 terms.
#[derive(Debug)]
pub enum Inbound {
    /// CONNECT, with the level it came with.
    Connect(Version, Box<v5::Connect>),
    /// Any other packet.
    Packet(v5::Packet),
}

/// Why the input cannot be read any further.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The packet announced more bytes than the limit.
    #[error("packet of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Announced remaining length.
        size: u32,
        /// The limit.
        max: u32,
    },
    /// The first packet was not a CONNECT of a protocol level we speak.
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
    /// A CONNECT with an empty client id that asks to keep its session.
    #[error("empty client id with a persistent session")]
    InvalidClientId,
    /// Bytes that are not a well-formed packet.
    #[error("malformed packet: {0}")]
    Malformed(DecodeError),
    /// An MQTT 5 PUBLISH with Topic Alias 0, which no alias may be
    /// (MQTT-3.3.2-8): a protocol error with its own reason code, 0x94.
    #[error("topic alias 0 is not a valid alias")]
    TopicAliasZero,
}

impl From<DecodeError> for CodecError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::MaxSizeExceeded { size, max } => CodecError::TooLarge { size, max },
            DecodeError::InvalidProtocol | DecodeError::UnsupportedProtocolLevel => {
                CodecError::UnsupportedProtocol
            }
            DecodeError::InvalidClientId => CodecError::InvalidClientId,
            other => CodecError::Malformed(other),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Waiting for CONNECT's protocol level.
    Sniff,
    V3(v3::Codec),
    V5(v5::Codec),
}

/// The read half: sniffs the protocol level from CONNECT, then decodes
/// with that version's codec.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    max_in: u32,
    /// rmqtt-codec has taken a fixed header and waits for the rest of its
    /// packet: the buffer starts inside a body, not at a packet.
    mid_packet: bool,
}

impl Decoder {
    /// A decoder that refuses packets whose remaining length is over `max_in`.
    pub fn new(max_in: u32) -> Self {
        assert!(max_in > 0, "0 means unlimited to rmqtt-codec");
        Self {
            state: State::Sniff,
            max_in,
            mid_packet: false,
        }
    }

    /// Decodes the next whole packet, if one is buffered.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if let State::Sniff = self.state {
            // The sniff reads CONNECT's header without consuming anything.
            let Some(version) = VersionCodec.decode(buf)? else {
                return Ok(None);
            };
            self.state = match version {
                ProtocolVersion::MQTT3 => State::V3(v3::Codec::new(self.max_in)),
                ProtocolVersion::MQTT5 => State::V5(v5::Codec::new(self.max_in, self.max_in)),
            };
        }
        if !self.mid_packet
            && let [PUBACK, 2, high, low, ..] = buf[..]
            && let Some(packet_id) = NonZeroU16::new(u16::from_be_bytes([high, low]))
        {
            // A QoS 1 subscriber's every delivery comes back as this
            // 4-byte PUBACK, the same in 3.1.1 and 5.0 (reason Success, no
            // properties: MQTT 5 §3.4.2.1). Through rmqtt-codec each one
            // split a shared handle off the read buffer and built the
            // packet through two layers: read here, decoding fell from
            // 7.6 % to 3.6 % of the broker's CPU samples in the fan-out
            // bench at QoS 1. Anything else, a packet id of 0 included,
            // still goes to rmqtt-codec.
            buf.advance(4);
            return Ok(Some(Inbound::Packet(v5::Packet::PublishAck(ok_ack(
                packet_id,
            )))));
        }
        if let [first, len, ..] = buf[..]
            && !self.mid_packet
            && matches!(first, PINGREQ | PINGRESP)
            && len != 0
        {
            // rmqtt-codec skips a body it does not expect; a PINGREQ is two
            // bytes (MQTT 3.1.1 §3.12, MQTT 5 §3.12), so a longer one is
            // malformed, not a ping.
            return Err(CodecError::Malformed(DecodeError::MalformedPacket));
        }
        if matches!(self.state, State::V5(_)) && !self.mid_packet {
            match scan_publish_alias(buf, self.max_in) {
                AliasScan::Zero => return Err(CodecError::TopicAliasZero),
                AliasScan::NeedMore => return Ok(None),
                AliasScan::NotZero => {}
            }
        }
        let before = buf.len();
        let packet = match &mut self.state {
            State::Sniff => unreachable!("set above"),
            State::V5(codec) => codec.decode(buf)?.map(|(p, _)| match p {
                v5::Packet::Connect(c) => Inbound::Connect(Version::V5, c),
                other => Inbound::Packet(other),
            }),
            State::V3(codec) => codec.decode(buf)?.map(|(p, _)| lift(p)),
        };
        if packet.is_some() {
            self.mid_packet = false;
        } else if buf.len() < before {
            self.mid_packet = true;
        }
        Ok(packet)
    }

    /// The version CONNECT announced, once seen (3.1 reads as 3.1.1 here).
    pub fn version(&self) -> Option<Version> {
        match self.state {
            State::Sniff => None,
            State::V3(_) => Some(Version::V311),
            State::V5(_) => Some(Version::V5),
        }
    }
}

/// What the look at a PUBLISH's properties found.
enum AliasScan {
    /// Topic Alias 0.
    Zero,
    /// No alias 0, or not a PUBLISH, or something for rmqtt-codec to judge.
    NotZero,
    /// The properties have not all arrived.
    NeedMore,
}

/// Reads a variable byte integer: `Some((value, bytes))`, `None` when
/// incomplete; a fifth continuation byte reads as `(u32::MAX, 0)`.
fn varint(b: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, byte) in b.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    if b.len() >= 4 {
        Some((u32::MAX, 0))
    } else {
        None
    }
}

/// Looks for Topic Alias 0 in an MQTT 5 PUBLISH at the front of `buf`.
/// Hand-written because rmqtt-codec reads the alias as a `NonZeroU16` and
/// reports the whole packet as malformed (0x81) where MQTT 5 wants 0x94;
/// anything unusual is left to rmqtt-codec, which decodes the packet.
fn scan_publish_alias(buf: &[u8], max_in: u32) -> AliasScan {
    let Some(&first) = buf.first() else {
        return AliasScan::NotZero;
    };
    if first >> 4 != 3 {
        return AliasScan::NotZero;
    }
    let Some((remaining, n)) = varint(&buf[1..]) else {
        return AliasScan::NeedMore;
    };
    if n == 0 || remaining > max_in {
        return AliasScan::NotZero;
    }
    let end = 1 + n + remaining as usize;
    let mut p = 1 + n;
    let Some(len) = buf.get(p..p + 2) else {
        return if end >= p + 2 {
            AliasScan::NeedMore
        } else {
            AliasScan::NotZero
        };
    };
    p += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
    if (first >> 1) & 3 != 0 {
        p += 2;
    }
    if p >= end {
        return AliasScan::NotZero;
    }
    let Some((props, m)) = varint(buf.get(p..).unwrap_or_default()) else {
        return AliasScan::NeedMore;
    };
    let props_end = p + m + props as usize;
    if m == 0 || props_end > end {
        return AliasScan::NotZero;
    }
    let Some(mut rest) = buf.get(p + m..props_end) else {
        return AliasScan::NeedMore;
    };
    let u16_at = |b: &[u8], at: usize| {
        b.get(at..at + 2)
            .map(|x| usize::from(u16::from_be_bytes([x[0], x[1]])))
    };
    while let Some((&id, tail)) = rest.split_first() {
        let skip = match id {
            0x01 => Some(1),
            0x02 => Some(4),
            0x03 | 0x08 | 0x09 => u16_at(tail, 0).map(|l| 2 + l),
            0x0B => varint(tail).filter(|(_, k)| *k > 0).map(|(_, k)| k),
            0x23 => match u16_at(tail, 0) {
                Some(0) => return AliasScan::Zero,
                Some(_) => Some(2),
                None => None,
            },
            0x26 => u16_at(tail, 0).and_then(|k| u16_at(tail, 2 + k).map(|v| 4 + k + v)),
            _ => None,
        };
        match skip.and_then(|k| tail.get(k..)) {
            Some(next) => rest = next,
            None => return AliasScan::NotZero,
        }
    }
    AliasScan::NotZero
}

fn ok_ack(packet_id: std::num::NonZeroU16) -> v5::PublishAck {
    v5::PublishAck {
        packet_id,
        reason_code: v5::PublishAckReason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}

fn ok_ack2(packet_id: std::num::NonZeroU16) -> v5::PublishAck2 {
    v5::PublishAck2 {
        packet_id,
        reason_code: v5::PublishAck2Reason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}

/// A 3.1 / 3.1.1 packet in MQTT 5 terms.
fn lift(p: v3::Packet) -> Inbound {
    use v3::Packet as P;
    let packet = match p {
        P::Connect(c) => {
            let version = if c.protocol.level() == 3 {
                Version::V31
            } else {
                Version::V311
            };
            let c = *c;
            return Inbound::Connect(
                version,
                Box::new(v5::Connect {
                    clean_start: c.clean_session,
                    keep_alive: c.keep_alive,
                    // 3.1.1's persistent session never expires on its own.
                    session_expiry_interval_secs: if c.clean_session { 0 } else { u32::MAX },
                    last_will: c.last_will.map(|w| v5::LastWill {
                        qos: w.qos,
                        retain: w.retain,
                        topic: w.topic,
                        message: w.message,
                        will_delay_interval_sec: None,
                        correlation_data: None,
                        message_expiry_interval: None,
                        content_type: None,
                        user_properties: Vec::new(),
                        is_utf8_payload: None,
                        response_topic: None,
                    }),
                    client_id: c.client_id,
                    username: c.username,
                    password: c.password,
                    ..Default::default()
                }),
            );
        }
        P::Publish(p) => v5::Packet::Publish(p),
        P::PublishAck { packet_id } => v5::Packet::PublishAck(ok_ack(packet_id)),
        P::PublishReceived { packet_id } => v5::Packet::PublishReceived(ok_ack(packet_id)),
        P::PublishRelease { packet_id } => v5::Packet::PublishRelease(ok_ack2(packet_id)),
        P::PublishComplete { packet_id } => v5::Packet::PublishComplete(ok_ack2(packet_id)),
        P::Subscribe {
            packet_id,
            topic_filters,
        } => v5::Packet::Subscribe(v5::Subscribe {
            packet_id,
            id: None,
            user_properties: Vec::new(),
            topic_filters: topic_filters
                .into_iter()
                .map(|(f, qos)| {
                    (
                        f,
                        v5::SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        }),
        P::Unsubscribe {
            packet_id,
            topic_filters,
        } => v5::Packet::Unsubscribe(v5::Unsubscribe {
            packet_id,
            user_properties: Vec::new(),
            topic_filters,
        }),
        P::PingRequest => v5::Packet::PingRequest,
        P::Disconnect => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::NormalDisconnection,
            session_expiry_interval_secs: None,
            server_reference: None,
            reason_string: None,
            user_properties: Vec::new(),
        }),
        // Packets only a server sends: the session refuses them.
        P::ConnectAck(_) => v5::Packet::ConnectAck(Box::default()),
        P::SubscribeAck { packet_id, .. } => v5::Packet::SubscribeAck(v5::SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: Vec::new(),
        }),
        P::UnsubscribeAck { packet_id } => v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: Vec::new(),
        }),
        P::PingResponse => v5::Packet::PingResponse,
    };
    Inbound::Packet(packet)
}

/// A PUBACK's fixed-header first byte (its flags are always 0).
const PUBACK: u8 = 0x40;
/// Fixed-header first bytes of the two packets that are never longer
/// than their fixed header.
const PINGREQ: u8 = 0xC0;
const PINGRESP: u8 = 0xD0;

/// The write half: encodes MQTT 5 packets for the connected version.
#[derive(Debug)]
pub struct Writer {
    version: Version,
    v3: v3::Codec,
    v5: v5::Codec,
    problem_info: bool,
}

impl Writer {
    /// A writer for a version, never writing a packet over `max_out` bytes.
    pub fn new(version: Version, max_out: u32) -> Self {
        assert!(max_out > 0, "0 means unlimited to rmqtt-codec");
        let mut v5 = v5::Codec::new(max_out, max_out);
        v5.set_max_outbound_size(max_out);
        Self {
            version,
            v3: v3::Codec::new(max_out),
            v5,
            problem_info: true,
        }
    }

    /// The version it writes.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Lowers the limit to the client's Maximum Packet Size (MQTT 5).
    pub fn set_max_out(&mut self, max: u32) {
        self.v5.set_max_outbound_size(max.max(6));
    }

    /// The client asked for no reason strings or user properties on acks.
    pub fn set_problem_info(&mut self, on: bool) {
        self.problem_info = on;
    }

    /// Encodes one packet. `Ok(false)`: the packet has no 3.1.1 form (a
    /// server DISCONNECT, AUTH) and nothing was written.
    pub fn write(&mut self, packet: v5::Packet, out: &mut BytesMut) -> Result<bool, EncodeError> {
        match self.version {
            Version::V5 => {
                let packet = if self.problem_info {
                    packet
                } else {
                    strip_problem_info(packet)
                };
                match self.v5.encode(packet.clone(), out) {
                    // An ack's reason string or user properties are what
                    // made it too large: they are the first to go.
                    Err(EncodeError::OverMaxPacketSize { .. })
                        if !matches!(packet, v5::Packet::Publish(_)) =>
                    {
                        self.v5.encode(strip_problem_info(packet), out)?;
                    }
                    r => r?,
                }
                Ok(true)
            }
            Version::V31 | Version::V311 => match lower(packet) {
                Some(p) => {
                    if let v3::Packet::Publish(ref publish) = p
                        && publish.payload.len() + publish.topic.len() + 4
                            > self.v5.max_outbound_size() as usize
                    {
                        return Err(EncodeError::OverMaxPacketSize {
                            size: publish.payload.len() as u32,
                            max: self.v5.max_outbound_size(),
                        });
                    }
                    self.v3.encode(p, out)?;
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }
}

/// A PUBLISH toward a client, borrowed from the message it carries.
#[derive(Debug)]
pub struct OutPublish<'a> {
    /// The routing key, written as the topic with `/` and `.` swapped on
    /// the way (topic.rs); `None`: an empty topic, sent with a topic alias.
    pub key: Option<&'a str>,
    pub qos: QoS,
    pub dup: bool,
    pub retain: bool,
    pub packet_id: Option<std::num::NonZeroU16>,
    /// MQTT 5 only; ignored for 3.1.1.
    pub properties: Option<&'a v5::PublishProperties>,
    pub payload: &'a [u8],
}

impl Writer {
    /// Encodes a PUBLISH straight into `out`: the topic is swapped from
    /// the routing key in place, and no packet value is built, moved or
    /// dropped per delivered copy (rmqtt-codec's path cost a topic
    /// `String`, a `ByteString` and a boxed packet each). Same size rules
    /// as `write`.
    pub fn write_publish(&self, p: &OutPublish<'_>, out: &mut BytesMut) -> Result<(), EncodeError> {
        let topic_len = p.key.map_or(0, str::len);
        if topic_len > usize::from(u16::MAX) {
            return Err(EncodeError::InvalidLength);
        }
        let max = self.v5.max_outbound_size();
        let pid_len = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
        let props = match (self.version, p.properties) {
            (Version::V5, Some(props)) => Some(props),
            _ => None,
        };
        let size = match self.version {
            Version::V5 => {
                let props_len = props.map_or(0, publish_properties_len);
                2 + topic_len + pid_len + var_int_len(props_len) + props_len + p.payload.len()
            }
            Version::V31 | Version::V311 => {
                if p.payload.len() + topic_len + 4 > max as usize {
                    return Err(EncodeError::OverMaxPacketSize {
                        size: p.payload.len() as u32,
                        max,
                    });
                }
                2 + topic_len + pid_len + p.payload.len()
            }
        };
        if self.version == Version::V5 && size > max as usize {
            return Err(EncodeError::OverMaxPacketSize {
                size: size as u32,
                max,
            });
        }
        let Ok(remaining) = u32::try_from(size) else {
            return Err(EncodeError::InvalidLength);
        };
        if remaining > MAX_VAR_INT {
            return Err(EncodeError::InvalidLength);
        }
        out.reserve(size + 5);
        out.extend_from_slice(&[0x30
            | (u8::from(p.qos) << 1)
            | (u8::from(p.dup && pid_len > 0) << 3)
            | u8::from(p.retain)]);
        put_var_int(remaining, out);
        out.extend_from_slice(&(topic_len as u16).to_be_bytes());
        if let Some(key) = p.key {
            let start = out.len();
            out.extend_from_slice(key.as_bytes());
            // Byte-wise is exact: both separators are ASCII, and no byte
            // of a multi-byte UTF-8 sequence is ASCII.
            for b in &mut out[start..] {
                *b = match *b {
                    b'/' => b'.',
                    b'.' => b'/',
                    other => other,
                };
            }
        }
        if let Some(id) = p.packet_id.filter(|_| pid_len > 0) {
            out.extend_from_slice(&id.get().to_be_bytes());
        } else if pid_len > 0 {
            return Err(EncodeError::PacketIdRequired);
        }
        if self.version == Version::V5 {
            match props {
                Some(props) => put_publish_properties(props, out)?,
                None => out.extend_from_slice(&[0]),
            }
        }
        out.extend_from_slice(p.payload);
        Ok(())
    }
}

/// The largest value of MQTT's variable byte integer.
const MAX_VAR_INT: u32 = 268_435_455;

fn var_int_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_var_int(mut v: u32, out: &mut BytesMut) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.extend_from_slice(&[byte]);
            return;
        }
        out.extend_from_slice(&[byte | 0x80]);
    }
}

/// Property identifiers of a PUBLISH (MQTT 5 §3.3.2.3).
mod prop {
    pub const UTF8_PAYLOAD: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0b;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const USER: u8 = 0x26;
}

fn publish_properties_len(p: &v5::PublishProperties) -> usize {
    let string = |len: Option<usize>| len.map_or(0, |l| 3 + l);
    p.topic_alias.map_or(0, |_| 3)
        + string(p.correlation_data.as_ref().map(|c| c.len()))
        + p.message_expiry_interval.map_or(0, |_| 5)
        + string(p.content_type.as_ref().map(|s| s.len()))
        + usize::from(p.is_utf8_payload) * 2
        + string(p.response_topic.as_ref().map(|s| s.len()))
        + p.subscription_ids
            .iter()
            .map(|id| 1 + var_int_len(id.get() as usize))
            .sum::<usize>()
        + p.user_properties
            .iter()
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>()
}

/// Writes the properties in rmqtt-codec's order, so either path gives the
/// same bytes.
fn put_publish_properties(
    p: &v5::PublishProperties,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    fn put_bytes(id: u8, b: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
        let len = u16::try_from(b.len()).map_err(|_| EncodeError::InvalidLength)?;
        out.extend_from_slice(&[id]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b);
        Ok(())
    }
    put_var_int(publish_properties_len(p) as u32, out);
    if let Some(a) = p.topic_alias {
        out.extend_from_slice(&[prop::TOPIC_ALIAS]);
        out.extend_from_slice(&a.get().to_be_bytes());
    }
    if let Some(c) = &p.correlation_data {
        put_bytes(prop::CORRELATION_DATA, c, out)?;
    }
    if let Some(e) = p.message_expiry_interval {
        out.extend_from_slice(&[prop::MESSAGE_EXPIRY]);
        out.extend_from_slice(&e.get().to_be_bytes());
    }
    if let Some(c) = &p.content_type {
        put_bytes(prop::CONTENT_TYPE, c.as_ref(), out)?;
    }
    if p.is_utf8_payload {
        out.extend_from_slice(&[prop::UTF8_PAYLOAD, 1]);
    }
    if let Some(r) = &p.response_topic {
        put_bytes(prop::RESPONSE_TOPIC, r.as_ref(), out)?;
    }
    for id in &p.subscription_ids {
        out.extend_from_slice(&[prop::SUBSCRIPTION_ID]);
        put_var_int(id.get(), out);
    }
    for (k, v) in &p.user_properties {
        let len = u16::try_from(k.len()).map_err(|_| EncodeError::InvalidLength)?;
        out.extend_from_slice(&[prop::USER]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        let len = u16::try_from(v.len()).map_err(|_| EncodeError::InvalidLength)?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    Ok(())
}

fn strip_problem_info(p: v5::Packet) -> v5::Packet {
    use v5::Packet as P;
    match p {
        P::PublishAck(mut a) => {
            a.properties.clear();
            a.reason_string = None;
            P::PublishAck(a)
        }
        P::PublishReceived(mut a) => {
            a.properties.clear();
            a.reason_string = None;
            P::PublishReceived(a)
        }
        P::PublishRelease(mut a) => {
            a.properties.clear();
            a.reason_string = None;
            P::PublishRelease(a)
        }
        P::PublishComplete(mut a) => {
            a.properties.clear();
            a.reason_string = None;
            P::PublishComplete(a)
        }
        P::SubscribeAck(mut a) => {
            a.properties.clear();
            a.reason_string = None;
            P::SubscribeAck(a)
        }
        P::UnsubscribeAck(mut a) => {
            a.properties.clear();
            a.reason_string = None;
            P::UnsubscribeAck(a)
        }
        P::Disconnect(mut d) => {
            d.user_properties.clear();
            d.reason_string = None;
            P::Disconnect(d)
        }
        other => other,
    }
}

/// An MQTT 5 packet in 3.1.1 terms; `None` when 3.1.1 has no such packet.
fn lower(p: v5::Packet) -> Option<v3::Packet> {
    use v5::Packet as P;
    Some(match p {
        P::ConnectAck(a) => v3::Packet::ConnectAck(v3::ConnectAck {
            session_present: a.session_present,
            return_code: connack_code(a.reason_code),
        }),
        P::Publish(mut p) => {
            p.properties = None;
            v3::Packet::Publish(p)
        }
        P::PublishAck(a) => v3::Packet::PublishAck {
            packet_id: a.packet_id,
        },
        P::PublishReceived(a) => v3::Packet::PublishReceived {
            packet_id: a.packet_id,
        },
        P::PublishRelease(a) => v3::Packet::PublishRelease {
            packet_id: a.packet_id,
        },
        P::PublishComplete(a) => v3::Packet::PublishComplete {
            packet_id: a.packet_id,
        },
        P::SubscribeAck(a) => v3::Packet::SubscribeAck {
            packet_id: a.packet_id,
            status: a
                .status
                .into_iter()
                .map(|s| match s {
                    v5::SubscribeAckReason::GrantedQos0 => {
                        v3::SubscribeReturnCode::Success(QoS::AtMostOnce)
                    }
                    v5::SubscribeAckReason::GrantedQos1 => {
                        v3::SubscribeReturnCode::Success(QoS::AtLeastOnce)
                    }
                    v5::SubscribeAckReason::GrantedQos2 => {
                        v3::SubscribeReturnCode::Success(QoS::ExactlyOnce)
                    }
                    _ => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        P::UnsubscribeAck(a) => v3::Packet::UnsubscribeAck {
            packet_id: a.packet_id,
        },
        P::PingResponse => v3::Packet::PingResponse,
        P::Disconnect(_) | P::Auth(_) => return None,
        // Client-only packets are never written by the server.
        P::Connect(_) | P::Subscribe(_) | P::Unsubscribe(_) | P::PingRequest => return None,
    })
}

/// MQTT 5 CONNACK reason codes as 3.1.1 return codes.
fn connack_code(r: v5::ConnectAckReason) -> v3::ConnectAckReason {
    use v3::ConnectAckReason as O;
    use v5::ConnectAckReason as R;
    match r {
        R::Success => O::ConnectionAccepted,
        R::UnsupportedProtocolVersion => O::UnacceptableProtocolVersion,
        R::ClientIdentifierNotValid => O::IdentifierRejected,
        R::BadUserNameOrPassword => O::BadUserNameOrPassword,
        R::ServerUnavailable | R::ServerBusy | R::UseAnotherServer | R::ServerMoved => {
            O::ServiceUnavailable
        }
        _ => O::NotAuthorized,
    }
}

/// The 3.1.1 CONNACK "unacceptable protocol level", written before the
/// version is known (MQTT-3.1.2-2).
pub const CONNACK_UNACCEPTABLE_PROTOCOL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// Fuzzing entry (fuzz/fuzz_targets/mqtt.rs and a property test below):
/// a CONNECT (3.1.1 or 5.0, as `data`'s first byte says) and then `data`
/// are decoded whole and split in two at a cut the second byte chooses, as
/// reads split a socket's bytes; both must give the same packets and
/// whether an error ended them, and nothing may panic.
#[cfg(any(fuzzing, test))]
pub fn fuzz_decode(data: &[u8]) {
    fn run(pieces: &[&[u8]]) -> (Vec<String>, bool) {
        let mut decoder = Decoder::new(512);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(item)) => out.push(format!("{item:?}")),
                    Ok(None) => break,
                    Err(_) => return (out, true),
                }
            }
        }
        (out, false)
    }
    // CONNECT, clean session, keepalive 60, client id "f".
    let v311: &[u8] = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01f";
    let v5: &[u8] = b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01f";
    let mut wire = if data.first().is_some_and(|b| b & 1 == 1) {
        v5
    } else {
        v311
    }
    .to_vec();
    wire.extend_from_slice(data);
    let cut = data
        .get(1)
        .map_or(0, |b| usize::from(*b) % (wire.len() + 1));
    let whole = run(&[&wire]);
    let split = run(&[&wire[..cut], &wire[cut..]]);
    assert_eq!(
        whole, split,
        "packets do not depend on how reads split the bytes"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn topic_alias_zero_is_its_own_error_and_other_aliases_pass() {
        let connect: &[u8] = b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01f";
        // PUBLISH QoS 0, topic "t", properties: user property, alias.
        let publish = |alias: u8| {
            let mut p = vec![0x30, 0, 0x00, 0x01, b't', 0];
            let props = [0x26, 0, 1, b'k', 0, 1, b'v', 0x23, 0, alias];
            p[5] = props.len() as u8;
            p.extend_from_slice(&props);
            p.extend_from_slice(b"body");
            p[1] = (p.len() - 2) as u8;
            p
        };
        for (alias, zero) in [(0u8, true), (3, false)] {
            let whole = publish(alias);
            // Whole, and one byte at a time: the answer is the same.
            for step in [whole.len(), 1] {
                let mut d = super::Decoder::new(512);
                let mut buf = bytes::BytesMut::from(connect);
                assert!(matches!(
                    d.decode(&mut buf),
                    Ok(Some(super::Inbound::Connect(..)))
                ));
                let mut got = None;
                for chunk in whole.chunks(step) {
                    buf.extend_from_slice(chunk);
                    match d.decode(&mut buf) {
                        Ok(None) => {}
                        other => {
                            got = Some(other);
                            break;
                        }
                    }
                }
                match got {
                    Some(Err(super::CodecError::TopicAliasZero)) => assert!(zero, "alias {alias}"),
                    Some(Ok(Some(super::Inbound::Packet(_)))) => assert!(!zero, "alias {alias}"),
                    other => panic!("alias {alias} step {step}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_publish_written_directly_has_the_bytes_rmqtt_codec_writes() {
        use super::{OutPublish, Version, Writer};
        use bytes::Bytes;
        use bytestring::ByteString;
        use rmqtt_codec::types::{Publish, QoS};
        use rmqtt_codec::v5;
        use std::num::{NonZeroU16, NonZeroU32};

        let full = v5::PublishProperties {
            topic_alias: NonZeroU16::new(7),
            correlation_data: Some(Bytes::from_static(b"\x00\xffcorr")),
            message_expiry_interval: NonZeroU32::new(90),
            content_type: Some(ByteString::from("text/plain")),
            user_properties: vec![
                (ByteString::from("k"), ByteString::from("v")),
                (ByteString::from("k"), ByteString::from("w\u{e9}")),
            ],
            is_utf8_payload: true,
            response_topic: Some(ByteString::from("r/1")),
            subscription_ids: vec![
                NonZeroU32::new(1).expect("1"),
                NonZeroU32::new(300_000).expect("n"),
            ],
        };
        let big = [b'x'; 200];
        for version in [Version::V311, Version::V5] {
            for props in [
                None,
                Some(v5::PublishProperties::default()),
                Some(full.clone()),
            ] {
                for (qos, id) in [
                    (QoS::AtMostOnce, None),
                    (QoS::AtLeastOnce, NonZeroU16::new(513)),
                    (QoS::ExactlyOnce, NonZeroU16::new(1)),
                ] {
                    for key in [Some("a.b/c.d\u{e9}.x"), None] {
                        for payload in [&b""[..], b"hello", &big[..]] {
                            for (dup, retain, max) in [
                                (false, true, 1 << 20),
                                (true, false, 1 << 20),
                                (false, false, 40),
                            ] {
                                let mut writer = Writer::new(version, max);
                                let expected = {
                                    let mut out = bytes::BytesMut::new();
                                    let topic = key.map_or_else(ByteString::new, |k| {
                                        ByteString::from(crate::mqtt::topic::key_to_topic(k))
                                    });
                                    let publish = Publish {
                                        // MQTT-3.3.1-2: never DUP at QoS 0.
                                        dup: dup && id.is_some(),
                                        retain,
                                        qos,
                                        topic,
                                        packet_id: id,
                                        payload: Bytes::copy_from_slice(payload),
                                        properties: props.clone(),
                                    };
                                    writer
                                        .write(v5::Packet::Publish(Box::new(publish)), &mut out)
                                        .map(|_| out)
                                        .ok()
                                };
                                let mut out = bytes::BytesMut::from(&b"before"[..]);
                                let p = OutPublish {
                                    key,
                                    qos,
                                    dup,
                                    retain,
                                    packet_id: id,
                                    properties: props.as_ref(),
                                    payload,
                                };
                                let got = writer
                                    .write_publish(&p, &mut out)
                                    .map(|()| out.split_off(6))
                                    .ok();
                                assert_eq!(
                                    got,
                                    expected,
                                    "{version:?} {qos:?} {key:?} {} {dup} {retain} {max} {props:?}",
                                    payload.len()
                                );
                                writer.set_problem_info(false);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_body_arriving_later_is_not_read_as_a_ping() {
        // Found by fuzzing: once rmqtt-codec has taken a fixed header, the
        // buffer starts inside the body; a body starting 0xC0 0xEF is data,
        // not a malformed PINGREQ.
        super::fuzz_decode(&[0xfd, 0x7d, 0xc0, 0xef]);
    }

    #[test]
    fn the_fuzzing_prefixes_are_valid_connects() {
        // Without a valid CONNECT first, every fuzz case would stop at it.
        super::fuzz_decode(&[0]);
        super::fuzz_decode(&[1]);
        for first in [0u8, 1] {
            let mut d = super::Decoder::new(512);
            let wire: &[u8] = if first == 0 {
                b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01f"
            } else {
                b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01f"
            };
            let mut buf = bytes::BytesMut::from(wire);
            assert!(matches!(
                d.decode(&mut buf),
                Ok(Some(super::Inbound::Connect(..)))
            ));
        }
    }

    proptest::proptest! {
        #[test]
        fn random_input_decodes_the_same_however_it_is_split(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            super::fuzz_decode(&data);
        }
    }

    use super::*;

    /// The PUBACK read past rmqtt-codec must be what rmqtt-codec reads.
    #[test]
    fn a_puback_reads_as_rmqtt_codec_reads_it_in_both_versions() {
        let mut rand = crate::core::id_ring::test_rng(0x51ed_270b_2740_9f1b);
        for v5 in [false, true] {
            let connect: &[u8] = if v5 {
                b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01f"
            } else {
                b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01f"
            };
            let mut d = Decoder::new(512);
            let mut buf = BytesMut::from(connect);
            assert!(matches!(d.decode(&mut buf), Ok(Some(Inbound::Connect(..)))));
            let mut ids: Vec<u16> = vec![1, 2, 0x0102, 0xff00, u16::MAX];
            ids.extend((0..200).map(|_| (rand() % 65_535 + 1) as u16));
            for id in ids {
                let wire = [PUBACK, 2, (id >> 8) as u8, id as u8];
                let ours = d.decode(&mut BytesMut::from(&wire[..])).expect("decodes");
                let theirs = if v5 {
                    v5::Codec::new(512, 512)
                        .decode(&mut BytesMut::from(&wire[..]))
                        .expect("rmqtt decodes")
                        .map(|(p, _)| Inbound::Packet(p))
                } else {
                    v3::Codec::new(512)
                        .decode(&mut BytesMut::from(&wire[..]))
                        .expect("rmqtt decodes")
                        .map(|(p, _)| lift(p))
                };
                assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "id {id}");
            }
            // Split anywhere, a run of them still reads whole and in order.
            let wire = [PUBACK, 2, 0, 7, PUBACK, 2, 1, 0, PUBACK, 2, 0, 9];
            for cut in 0..wire.len() {
                let mut buf = BytesMut::from(&wire[..cut]);
                let mut got = Vec::new();
                while let Some(p) = d.decode(&mut buf).expect("decodes") {
                    got.push(p);
                }
                buf.extend_from_slice(&wire[cut..]);
                while let Some(p) = d.decode(&mut buf).expect("decodes") {
                    got.push(p);
                }
                let ids: Vec<u16> = got
                    .iter()
                    .map(|p| match p {
                        Inbound::Packet(v5::Packet::PublishAck(a)) => a.packet_id.get(),
                        other => panic!("PUBACK expected, got {other:?}"),
                    })
                    .collect();
                assert_eq!(ids, [7, 256, 9], "cut at {cut}");
            }
            // Packet id 0 is still rmqtt-codec's to refuse.
            let zero = d.decode(&mut BytesMut::from(&[PUBACK, 2, 0, 0][..]));
            assert!(zero.is_err(), "{zero:?}");
        }
    }

    #[test]
    fn a_v311_connect_is_lifted_and_acks_are_lowered() {
        let mut buf = BytesMut::from(&b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03cid"[..]);
        let mut d = Decoder::new(1024);
        let Some(Inbound::Connect(v, c)) = d.decode(&mut buf).unwrap() else {
            panic!("CONNECT expected")
        };
        assert_eq!(v, Version::V311);
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(&*c.client_id, "cid");
        assert!(buf.is_empty());
        let mut w = Writer::new(Version::V311, 1024);
        let mut out = BytesMut::new();
        let ack = v5::ConnectAck {
            reason_code: v5::ConnectAckReason::BadUserNameOrPassword,
            ..Default::default()
        };
        assert!(
            w.write(v5::Packet::ConnectAck(Box::new(ack)), &mut out)
                .unwrap()
        );
        assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x04]);
        out.clear();
        let disconnect = v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::ProtocolError,
            session_expiry_interval_secs: None,
            server_reference: None,
            reason_string: None,
            user_properties: Vec::new(),
        });
        assert!(
            !w.write(disconnect, &mut out).unwrap(),
            "no server DISCONNECT in 3.1.1"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn oversized_and_unknown_input_are_errors_not_panics() {
        let mut d = Decoder::new(16);
        let mut buf = BytesMut::from(&b"\x10\x7f\x00\x04MQTT\x05"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&b"\x10\x0f\x00\x04MQTT\x07\x02\x00\x3c\x00\x03cid"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(CodecError::UnsupportedProtocol)
        ));
        let mut d = Decoder::new(1024);
        let mut buf = BytesMut::from(&b"\x30\x02\x00\x01"[..]);
        assert!(d.decode(&mut buf).is_err(), "PUBLISH before CONNECT");
    }

    #[test]
    fn a_pingreq_with_a_body_is_malformed() {
        for connect in [
            &b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03cid"[..],
            &b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03cid"[..],
        ] {
            let mut d = Decoder::new(1024);
            let mut buf = BytesMut::from(connect);
            assert!(matches!(d.decode(&mut buf), Ok(Some(Inbound::Connect(..)))));
            buf.extend_from_slice(b"\xc0\x00");
            assert!(matches!(
                d.decode(&mut buf),
                Ok(Some(Inbound::Packet(v5::Packet::PingRequest)))
            ));
            buf.extend_from_slice(b"\xc0\x01\x00");
            assert!(matches!(d.decode(&mut buf), Err(CodecError::Malformed(_))));
        }
    }
}

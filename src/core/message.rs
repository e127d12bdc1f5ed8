//! Messages as the core sees them: a shared body, normalised properties and
//! a header map. Adapters map their wire properties onto these once, at the edge.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;

use super::names::{ExchangeName, RoutingKey};

/// A header value. The variants keep the integer widths AMQP tables carry so
/// a message read back over AMQP has the types its publisher wrote.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// No value.
    Void,
    /// A boolean.
    Bool(bool),
    /// Signed 8-bit.
    I8(i8),
    /// Unsigned 8-bit.
    U8(u8),
    /// Signed 16-bit.
    I16(i16),
    /// Unsigned 16-bit.
    U16(u16),
    /// Signed 32-bit.
    I32(i32),
    /// Unsigned 32-bit.
    U32(u32),
    /// Signed 64-bit.
    I64(i64),
    /// 32-bit float.
    F32(f32),
    /// 64-bit float.
    F64(f64),
    /// A decimal: value × 10^-scale.
    Decimal {
        /// Digits after the point.
        scale: u8,
        /// Unscaled value.
        value: u32,
    },
    /// A text string.
    Str(String),
    /// Raw bytes.
    Bytes(Bytes),
    /// Seconds since the Unix epoch.
    Timestamp(u64),
    /// A list.
    Array(Vec<Value>),
    /// A nested map.
    Table(Headers),
}

impl Value {
    /// The value as text when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as an integer when it is any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::U8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a boolean, accepting "true"/"false" strings as AMQP
    /// clients that cannot send booleans in headers do.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => match s.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Header map; ordered so that records and snapshots are deterministic.
pub type Headers = litemap::LiteMap<HeaderName, Value>;

/// A header's name. The names the broker sets itself (an MQTT publish's
/// QoS, a retained flag) are constants and cost no allocation per
/// message; names from the wire are owned. Stored as a string is.
pub type HeaderName = std::borrow::Cow<'static, str>;

/// The properties every protocol can express, plus headers for the rest.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Properties {
    /// MIME content type.
    pub content_type: Option<String>,
    /// MIME content encoding.
    pub content_encoding: Option<String>,
    /// Application headers and properties with no named counterpart.
    pub headers: Headers,
    /// Survives a broker restart when routed to a durable queue.
    pub persistent: bool,
    /// Priority 0-255 (queues honour up to their x-max-priority).
    pub priority: Option<u8>,
    /// Request/response correlation.
    pub correlation_id: Option<String>,
    /// Where replies go.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string (RabbitMQ's form).
    pub expiration: Option<String>,
    /// Application message id.
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Application message type.
    pub kind: Option<String>,
    /// Authenticated user id claimed by the publisher.
    pub user_id: Option<String>,
    /// Publishing application.
    pub app_id: Option<String>,
    /// Deprecated AMQP cluster id, kept so it round-trips.
    pub cluster_id: Option<String>,
}

impl Properties {
    /// The per-message TTL, if the expiration is a valid millisecond count.
    pub fn ttl_millis(&self) -> Option<u64> {
        self.expiration.as_deref().and_then(|e| e.parse().ok())
    }
}

/// One message. Cloning shares everything: a fan-out to N queues copies a
/// pointer N times, never the body.
#[derive(Clone, Debug)]
pub struct Message(Arc<MessageData>);

/// A message as stored: what survives a restart. The wall-clock time it
/// was accepted keeps its TTL counting while the broker is down.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredMessage {
    exchange: ExchangeName,
    routing_key: RoutingKey,
    properties: Properties,
    body: Bytes,
    received_ms: u64,
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl serde::Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("StoredMessage", 5)?;
        st.serialize_field("exchange", &self.0.exchange)?;
        st.serialize_field("routing_key", &self.0.routing_key)?;
        st.serialize_field("properties", &self.0.properties)?;
        st.serialize_field("body", &self.0.body)?;
        let received_ms = now_ms().saturating_sub(self.age().as_millis() as u64);
        st.serialize_field("received_ms", &received_ms)?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for Message {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = StoredMessage::deserialize(d)?;
        let mut message = Message::new(m.exchange, m.routing_key, m.properties, m.body);
        // An `Instant` cannot reach back before boot, and a broker down
        // across a reboot may have been down longer than that; the age
        // before loading is kept apart instead.
        let earlier = Duration::from_millis(now_ms().saturating_sub(m.received_ms));
        if let Some(data) = Arc::get_mut(&mut message.0) {
            data.earlier = earlier;
        }
        Ok(message)
    }
}

/// The contents of a message.
#[derive(Debug)]
pub struct MessageData {
    /// The exchange it was published to.
    pub exchange: ExchangeName,
    /// The key it was published with.
    pub routing_key: RoutingKey,
    /// Properties and headers.
    pub properties: Properties,
    /// The body, shared.
    pub body: Bytes,
    /// When this process accepted or loaded it.
    pub received: Instant,
    /// Its age when this process loaded it from the journal (zero for a
    /// message published since the start); with `received`, drives TTL.
    pub earlier: Duration,
    /// The named client session that published it, if it has a name
    /// (sessions.rs); subscriptions that refuse their own messages use it.
    pub origin: Option<Arc<str>>,
    /// `PUBLISH_QOS_HEADER` as an integer, read once here: every MQTT
    /// delivery of the message asks for it, and in a fan-out the header
    /// map's lookup on each consumer's thread was 2% of the broker's CPU.
    publish_qos: Option<i64>,
}

/// Header: the QoS an MQTT client published the message with. Read for
/// every MQTT delivery; kept as a header so that it reaches AMQP and STOMP
/// consumers and the journal as RabbitMQ's MQTT plugin names it.
pub const PUBLISH_QOS_HEADER: &str = "x-mqtt-publish-qos";

fn publish_qos(properties: &Properties) -> Option<i64> {
    properties
        .headers
        .get(PUBLISH_QOS_HEADER)
        .and_then(Value::as_i64)
}

/// Bodies shorter than this are copied out of the read buffer they came
/// in; longer ones keep sharing it.
pub const DETACH_BELOW: usize = 8 * 1024;

/// The body to keep for a message whose bytes are a slice of a
/// connection's read buffer. A slice keeps the whole buffer (64 KiB) alive
/// as long as the message lives: a queue that took one message in a
/// hundred of a busy stream held 12 KiB per 100-byte message that way,
/// the rest of each buffer being messages long gone. A short body costs
/// less to copy than to pin; from `DETACH_BELOW` up, a body fills an
/// eighth of a buffer or more, so at most eight times its size is held.
pub fn detach_body(body: Bytes) -> Bytes {
    if body.len() < DETACH_BELOW {
        Bytes::copy_from_slice(&body)
    } else {
        body
    }
}

impl Message {
    /// Builds a message received now.
    pub fn new(
        exchange: ExchangeName,
        routing_key: RoutingKey,
        properties: Properties,
        body: Bytes,
    ) -> Self {
        Self(Arc::new(MessageData {
            exchange,
            routing_key,
            publish_qos: publish_qos(&properties),
            properties,
            body,
            received: Instant::now(),
            earlier: Duration::ZERO,
            origin: None,
        }))
    }

    /// The same message, marked as published by a named client session.
    pub fn with_origin(self, origin: Arc<str>) -> Self {
        let mut this = self;
        match Arc::get_mut(&mut this.0) {
            Some(data) => data.origin = Some(origin),
            None => {
                let d = &this.0;
                this = Self(Arc::new(MessageData {
                    exchange: d.exchange.clone(),
                    routing_key: d.routing_key.clone(),
                    properties: d.properties.clone(),
                    body: d.body.clone(),
                    received: d.received,
                    earlier: d.earlier,
                    origin: Some(origin),
                    publish_qos: d.publish_qos,
                }));
            }
        }
        this
    }

    /// `PUBLISH_QOS_HEADER`'s value, when it is an integer.
    pub fn publish_qos(&self) -> Option<i64> {
        self.0.publish_qos
    }

    /// The named client session that published it.
    pub fn origin(&self) -> Option<&str> {
        self.0.origin.as_deref()
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &ExchangeName {
        &self.0.exchange
    }
    /// The key it was published with.
    pub fn routing_key(&self) -> &RoutingKey {
        &self.0.routing_key
    }
    /// Properties and headers.
    pub fn properties(&self) -> &Properties {
        &self.0.properties
    }
    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.0.body
    }
    /// Bytes a queue accounts for this message (body only, as RabbitMQ's
    /// x-max-length-bytes does).
    pub fn size(&self) -> usize {
        self.0.body.len()
    }
    /// When this process accepted or loaded it.
    pub fn received(&self) -> Instant {
        self.0.received
    }
    /// How long ago the broker accepted it, counting time it spent in the
    /// journal while the broker was down.
    pub fn age(&self) -> Duration {
        self.0.earlier + self.0.received.elapsed()
    }

    /// The same message with its body in an allocation of its own. A body
    /// that arrived in a read buffer is a slice of it and keeps the whole
    /// buffer (up to 64 KiB) alive: a message kept for long (a retained
    /// one) should not hold the reads it came in with. A short body that
    /// `detach_body` already copied out is its allocation's only user and
    /// is not copied again.
    pub fn with_own_body(&self) -> Self {
        let d = &self.0;
        let body = if d.body.len() < DETACH_BELOW && d.body.is_unique() {
            d.body.clone()
        } else {
            Bytes::copy_from_slice(&d.body)
        };
        Self(Arc::new(MessageData {
            exchange: d.exchange.clone(),
            routing_key: d.routing_key.clone(),
            properties: d.properties.clone(),
            body,
            received: d.received,
            earlier: d.earlier,
            origin: d.origin.clone(),
            publish_qos: d.publish_qos,
        }))
    }

    /// A copy with other routing and properties; the body stays shared.
    pub fn rerouted(
        &self,
        exchange: ExchangeName,
        routing_key: RoutingKey,
        properties: Properties,
    ) -> Self {
        Self(Arc::new(MessageData {
            exchange,
            routing_key,
            publish_qos: publish_qos(&properties),
            properties,
            body: self.0.body.clone(),
            received: Instant::now(),
            earlier: Duration::ZERO,
            origin: self.0.origin.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short body slice is copied out of its read buffer; a long one
    /// stays where it is.
    #[test]
    fn short_bodies_leave_their_read_buffer() {
        use bytes::Buf;
        let mut rbuf = bytes::BytesMut::with_capacity(64 * 1024);
        rbuf.extend((0..64 * 1024).map(|i| i as u8));
        let buffer = rbuf.as_ptr_range();
        let inside = |b: &Bytes| buffer.contains(&b.as_ptr());
        rbuf.advance(10);
        let short = rbuf.split_to(100).freeze();
        let long = rbuf.split_to(DETACH_BELOW).freeze();
        let (short_copy, long_kept) = (short.clone(), long.clone());
        assert!(inside(&short) && inside(&long));

        let short = detach_body(short);
        assert!(
            !inside(&short),
            "a 100-byte body still points into the read buffer"
        );
        assert_eq!(short, short_copy);
        let long = detach_body(long);
        assert!(inside(&long), "a body of DETACH_BELOW bytes was copied");
        assert_eq!(long.as_ptr(), long_kept.as_ptr());
        assert!(detach_body(Bytes::new()).is_empty());
    }

    /// A body still in its read buffer is copied for keeping; one that
    /// `detach_body` copied out already is kept as it is.
    #[test]
    fn a_kept_message_copies_only_a_body_still_in_its_read_buffer() {
        let message = |body: Bytes| {
            Message::new(
                ExchangeName::from("amq.topic"),
                RoutingKey::from("k"),
                Properties::default(),
                body,
            )
        };
        let rbuf = Bytes::from(vec![3u8; 64 * 1024]);
        let in_buffer = message(rbuf.slice(10..110));
        let kept = in_buffer.with_own_body();
        assert_eq!(kept.body(), in_buffer.body());
        assert_ne!(
            kept.body().as_ptr(),
            in_buffer.body().as_ptr(),
            "not copied"
        );

        let detached = message(detach_body(rbuf.slice(10..110)));
        let kept = detached.with_own_body();
        assert_eq!(
            kept.body().as_ptr(),
            detached.body().as_ptr(),
            "a detached body was copied again"
        );
    }

    fn with_headers(headers: Headers) -> Message {
        let properties = Properties {
            headers,
            ..Default::default()
        };
        Message::new(
            ExchangeName::from("amq.topic"),
            RoutingKey::from("a.b"),
            properties,
            Bytes::from_static(b"x"),
        )
    }

    #[test]
    fn the_publish_qos_header_is_read_once_and_follows_every_copy() {
        let qos = |v: Value| with_headers(Headers::from_iter([(PUBLISH_QOS_HEADER.into(), v)]));
        assert_eq!(qos(Value::U8(1)).publish_qos(), Some(1));
        // As AMQP clients may send it: another integer width.
        assert_eq!(qos(Value::I32(2)).publish_qos(), Some(2));
        assert_eq!(qos(Value::Str("1".into())).publish_qos(), None);
        assert_eq!(with_headers(Headers::new()).publish_qos(), None);

        let m = qos(Value::U8(2));
        assert_eq!(m.clone().with_origin("c".into()).publish_qos(), Some(2));
        assert_eq!(m.with_own_body().publish_qos(), Some(2));
        // A copy with new properties reads them instead.
        let rerouted = m.rerouted(
            ExchangeName::from("dlx"),
            RoutingKey::from("k"),
            Properties::default(),
        );
        assert_eq!(rerouted.publish_qos(), None);
        // And so does one read back from the journal.
        let stored = serde_json::to_vec(&m).expect("serialize");
        let back: Message = serde_json::from_slice(&stored).expect("deserialize");
        assert_eq!(back.publish_qos(), Some(2));
    }

    #[test]
    fn headers_are_sorted_and_stored_as_a_b_tree_map_was() {
        let pairs = [
            ("z", Value::U8(1)),
            ("a", Value::Str("x".into())),
            (
                "m",
                Value::Table(Headers::from_iter([(
                    HeaderName::Owned("k".to_owned()),
                    Value::Bool(true),
                )])),
            ),
        ];
        let headers =
            Headers::from_iter(pairs.iter().map(|(k, v)| (HeaderName::from(*k), v.clone())));
        let keys: Vec<&str> = headers.keys().map(|k| &**k).collect();
        assert_eq!(keys, ["a", "m", "z"]);

        // Journals written while headers were a BTreeMap of strings read
        // back unchanged.
        let old: std::collections::BTreeMap<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let old_bytes = postcard::to_stdvec(&old).expect("serialize");
        assert_eq!(postcard::to_stdvec(&headers).expect("serialize"), old_bytes);
        let back: Headers = postcard::from_bytes(&old_bytes).expect("deserialize");
        assert_eq!(back, headers);
    }
}

//! MQTT 5 publish properties <-> the core's Properties and headers, per the
//! mapping table of DESIGN.md. The only place MQTT's property types meet
//! the core's.
//!
//! Inbound (an MQTT PUBLISH or will becomes a core message):
//! - content type -> `content-type`
//! - correlation data -> `correlation-id` when it is UTF-8 of at most 255
//!   bytes, else header `x-correlation-id` (bytes)
//! - response topic `r/1` -> header `x-reply-to-topic: r.1`
//! - message expiry interval (s) -> `expiration` (ms, decimal)
//! - user properties -> headers (a repeated name becomes an array of strings)
//! - payload format indicator -> header `x-mqtt-payload-format: 1`
//! - QoS -> `persistent` when >= 1, and header `x-mqtt-publish-qos`
//! - retain -> header `x-mqtt-retain: true`
//!
//! Outbound (a core message becomes an MQTT PUBLISH) is the reverse. A core
//! property MQTT has no field for (message-id, type, app-id, reply-to, …)
//! travels as a user property of the same name. Header values become text:
//! numbers and booleans in decimal / `true` / `false`, bytes as UTF-8 when
//! they are (else lower-case hex), an array of scalars as one user property
//! per element, and a nested table or an array holding one as JSON text.

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{PublishProperties, UserProperties};

use super::topic::swap_separators;
use crate::core::{Headers, Message, Properties, Value};

/// Header: the topic a reply should be published to, as a routing key.
pub const REPLY_TO_TOPIC: &str = "x-reply-to-topic";
/// Header: correlation data that is not short UTF-8.
pub const CORRELATION_BYTES: &str = "x-correlation-id";
/// Header: the QoS the message was published with.
pub use crate::core::message::PUBLISH_QOS_HEADER as PUBLISH_QOS;
/// Header: the payload format indicator (1: UTF-8 text).
pub const PAYLOAD_FORMAT: &str = "x-mqtt-payload-format";
/// Header: the message was published with the retain flag.
pub use crate::core::retained::RETAIN_HEADER;

/// The MQTT-side properties of a publish or will, whichever version sent it.
#[derive(Debug, Default, Clone)]
pub struct Inbound<'a> {
    /// QoS of the publish.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 properties.
    pub content_type: Option<&'a str>,
    /// Correlation data.
    pub correlation_data: Option<&'a Bytes>,
    /// Response topic (MQTT form, with `/`).
    pub response_topic: Option<&'a str>,
    /// Message expiry interval, seconds.
    pub expiry: Option<u32>,
    /// Payload format indicator.
    pub utf8_payload: bool,
    /// User properties.
    pub user_properties: &'a [(ByteString, ByteString)],
}

/// An inbound publish's properties as core properties.
pub fn to_core(p: &Inbound<'_>) -> Properties {
    // Sized up front: a plain publish holds a vector of one, its QoS.
    let named = [
        true,
        p.retain,
        p.utf8_payload,
        p.response_topic.is_some(),
        p.correlation_data.is_some(),
    ];
    let mut headers =
        Headers::with_capacity(p.user_properties.len() + named.iter().filter(|&&b| b).count());
    for (k, v) in p.user_properties {
        let v = Value::Str(v.to_string());
        match headers.get_mut(&**k) {
            None => {
                headers.insert(k.to_string().into(), v);
            }
            Some(Value::Array(items)) => items.push(v),
            Some(first) => {
                let first = std::mem::replace(first, Value::Void);
                headers.insert(k.to_string().into(), Value::Array(vec![first, v]));
            }
        }
    }
    let mut correlation_id = None;
    if let Some(data) = p.correlation_data {
        match std::str::from_utf8(data) {
            Ok(s) if s.len() <= 255 => correlation_id = Some(s.to_owned()),
            _ => {
                headers.insert(CORRELATION_BYTES.into(), Value::Bytes(data.clone()));
            }
        }
    }
    if let Some(topic) = p.response_topic {
        headers.insert(REPLY_TO_TOPIC.into(), Value::Str(swap_separators(topic)));
    }
    if p.utf8_payload {
        headers.insert(PAYLOAD_FORMAT.into(), Value::U8(1));
    }
    headers.insert(PUBLISH_QOS.into(), Value::U8(p.qos));
    if p.retain {
        headers.insert(RETAIN_HEADER.into(), Value::Bool(true));
    }
    Properties {
        content_type: p.content_type.map(str::to_owned),
        headers,
        persistent: p.qos >= 1,
        correlation_id,
        expiration: p.expiry.map(|s| (u64::from(s) * 1000).to_string()),
        ..Default::default()
    }
}

/// The QoS a message was published with: the header if an MQTT client
/// published it, else 1 for persistent messages and 0 otherwise.
pub fn published_qos(m: &Message) -> QoS {
    match m.publish_qos() {
        Some(2) => QoS::ExactlyOnce,
        Some(1) => QoS::AtLeastOnce,
        Some(_) => QoS::AtMostOnce,
        None if m.properties().persistent => QoS::AtLeastOnce,
        None => QoS::AtMostOnce,
    }
}

/// Whether the message was published with the retain flag.
pub fn published_retained(m: &Message) -> bool {
    crate::core::retained::wants_retain(m)
}

/// Seconds left before the message expires: `Some(0)` when it already
/// has, `None` when it never does.
pub fn remaining_expiry(m: &Message) -> Option<u32> {
    let ttl = Duration::from_millis(m.properties().ttl_millis()?);
    let left = ttl.saturating_sub(m.age());
    // Round up so a message with 0.4 s left is not sent as "no expiry".
    let secs = left.as_millis().div_ceil(1000);
    Some(u32::try_from(secs).unwrap_or(u32::MAX))
}

/// A core message's properties as MQTT 5 publish properties.
pub fn to_mqtt(m: &Message) -> PublishProperties {
    let p = m.properties();
    let mut user: UserProperties = Vec::new();
    let mut correlation_data = p
        .correlation_id
        .as_ref()
        .map(|c| Bytes::copy_from_slice(c.as_bytes()));
    let mut response_topic = None;
    let mut utf8 = false;
    for (k, v) in &p.headers {
        match &**k {
            PUBLISH_QOS | RETAIN_HEADER => {}
            REPLY_TO_TOPIC => match v.as_str() {
                Some(key) => response_topic = Some(ByteString::from(swap_separators(key))),
                None => push_value(&mut user, k, v),
            },
            CORRELATION_BYTES if correlation_data.is_none() => match v {
                Value::Bytes(b) => correlation_data = Some(b.clone()),
                Value::Str(s) => correlation_data = Some(Bytes::copy_from_slice(s.as_bytes())),
                other => push_value(&mut user, k, other),
            },
            PAYLOAD_FORMAT => utf8 = v.as_i64() == Some(1),
            _ => push_value(&mut user, k, v),
        }
    }
    let mut named = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            user.push((name.into(), v.as_str().into()));
        }
    };
    named("content-encoding", &p.content_encoding);
    named("reply-to", &p.reply_to);
    named("message-id", &p.message_id);
    named("type", &p.kind);
    named("user-id", &p.user_id);
    named("app-id", &p.app_id);
    named("cluster-id", &p.cluster_id);
    if let Some(ts) = p.timestamp {
        user.push(("timestamp".into(), ts.to_string().into()));
    }
    if let Some(pr) = p.priority {
        user.push(("priority".into(), pr.to_string().into()));
    }
    PublishProperties {
        topic_alias: None,
        correlation_data,
        message_expiry_interval: remaining_expiry(m).and_then(NonZeroU32::new),
        content_type: p.content_type.as_deref().map(ByteString::from),
        user_properties: user,
        is_utf8_payload: utf8,
        response_topic,
        subscription_ids: Vec::new(),
    }
}

fn push_value(user: &mut UserProperties, key: &str, v: &Value) {
    match v {
        Value::Array(items) if items.iter().all(is_scalar) => {
            for item in items {
                user.push((key.into(), scalar_text(item).into()));
            }
        }
        v if is_scalar(v) => user.push((key.into(), scalar_text(v).into())),
        v => {
            let mut json = String::new();
            write_json(&mut json, v);
            user.push((key.into(), json.into()));
        }
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Table(_))
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Void => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::F32(f) => f.to_string(),
        Value::F64(f) => f.to_string(),
        Value::Decimal { scale, value } => decimal_text(*scale, *value),
        Value::Str(s) => s.clone(),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => b.iter().fold(String::new(), |mut s, byte| {
                let _ = write!(s, "{byte:02x}");
                s
            }),
        },
        other => other.as_i64().map(|n| n.to_string()).unwrap_or_default(),
    }
}

fn decimal_text(scale: u8, value: u32) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::Void => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Str(_) | Value::Bytes(_) => write_json_string(out, &scalar_text(v)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Value::Table(t) => {
            out.push('{');
            for (i, (k, item)) in t.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, k);
                out.push(':');
                write_json(out, item);
            }
            out.push('}');
        }
        Value::F32(f) if !f.is_finite() => out.push_str("null"),
        Value::F64(f) if !f.is_finite() => out.push_str("null"),
        other => out.push_str(&scalar_text(other)),
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ExchangeName, RoutingKey};

    fn message(props: Properties) -> Message {
        Message::new(
            ExchangeName::from("amq.topic"),
            RoutingKey::from("a.b"),
            props,
            Bytes::from_static(b"x"),
        )
    }

    #[test]
    fn mqtt_properties_map_to_core_and_back() {
        let corr = Bytes::from_static(b"req-1");
        let user = vec![
            ("k".into(), "v".into()),
            ("dup".into(), "1".into()),
            ("dup".into(), "2".into()),
        ];
        let core = to_core(&Inbound {
            qos: 1,
            retain: true,
            content_type: Some("application/json"),
            correlation_data: Some(&corr),
            response_topic: Some("r/1"),
            expiry: Some(60),
            utf8_payload: true,
            user_properties: &user,
        });
        assert!(core.persistent);
        assert_eq!(core.content_type.as_deref(), Some("application/json"));
        assert_eq!(core.correlation_id.as_deref(), Some("req-1"));
        assert_eq!(core.expiration.as_deref(), Some("60000"));
        assert_eq!(
            core.headers.get(REPLY_TO_TOPIC),
            Some(&Value::Str("r.1".into()))
        );
        assert_eq!(core.headers.get("k"), Some(&Value::Str("v".into())));
        assert_eq!(
            core.headers.get("dup"),
            Some(&Value::Array(vec![
                Value::Str("1".into()),
                Value::Str("2".into())
            ]))
        );
        let m = message(core);
        assert_eq!(published_qos(&m), QoS::AtLeastOnce);
        assert!(published_retained(&m));
        let back = to_mqtt(&m);
        assert_eq!(back.content_type.as_deref(), Some("application/json"));
        assert_eq!(back.correlation_data, Some(corr));
        assert_eq!(back.response_topic.as_deref(), Some("r/1"));
        assert_eq!(back.message_expiry_interval.map(|n| n.get()), Some(60));
        assert!(back.is_utf8_payload);
        let names: Vec<(&str, &str)> = back
            .user_properties
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .collect();
        assert_eq!(names, vec![("dup", "1"), ("dup", "2"), ("k", "v")]);
    }

    #[test]
    fn binary_correlation_data_travels_as_a_header() {
        let corr = Bytes::from_static(&[0xff, 0x00]);
        let core = to_core(&Inbound {
            correlation_data: Some(&corr),
            ..Default::default()
        });
        assert_eq!(core.correlation_id, None);
        assert_eq!(
            core.headers.get(CORRELATION_BYTES),
            Some(&Value::Bytes(corr.clone()))
        );
        assert_eq!(to_mqtt(&message(core)).correlation_data, Some(corr));
    }

    #[test]
    fn amqp_properties_and_nested_headers_become_user_properties() {
        let mut nested = Headers::new();
        nested.insert("n".into(), Value::I64(-3));
        nested.insert("s".into(), Value::Str("q\"".into()));
        let mut headers = Headers::new();
        headers.insert("t".into(), Value::Table(nested));
        headers.insert("i".into(), Value::I32(7));
        headers.insert("b".into(), Value::Bool(true));
        headers.insert("d".into(), Value::Decimal { scale: 2, value: 5 });
        headers.insert(
            "a".into(),
            Value::Array(vec![Value::U8(1), Value::Str("x".into())]),
        );
        let m = message(Properties {
            headers,
            message_id: Some("m-1".into()),
            persistent: true,
            ..Default::default()
        });
        assert_eq!(
            published_qos(&m),
            QoS::AtLeastOnce,
            "persistent AMQP is QoS 1"
        );
        let out = to_mqtt(&m);
        let pairs: Vec<(String, String)> = out
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let expect = [
            ("a", "1"),
            ("a", "x"),
            ("b", "true"),
            ("d", "0.05"),
            ("i", "7"),
            ("t", r#"{"n":-3,"s":"q\""}"#),
            ("message-id", "m-1"),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs, expect);
    }
}

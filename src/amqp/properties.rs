//! AMQP basic properties and field tables <-> the core's Properties and
//! Headers. The only place AMQP's property types meet the core's.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use bytes::Bytes;

use crate::core::{Headers, Properties, Value};

/// A field table as core headers.
pub fn headers_from_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned().into(), value_from_amqp(v)))
        .collect()
}

fn value_from_amqp(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::I8(*n),
        AMQPValue::ShortShortUInt(n) => Value::U8(*n),
        AMQPValue::ShortInt(n) => Value::I16(*n),
        AMQPValue::ShortUInt(n) => Value::U16(*n),
        AMQPValue::LongInt(n) => Value::I32(*n),
        AMQPValue::LongUInt(n) => Value::U32(*n),
        AMQPValue::LongLongInt(n) => Value::I64(*n),
        AMQPValue::Float(f) => Value::F32(*f),
        AMQPValue::Double(f) => Value::F64(*f),
        AMQPValue::DecimalValue(d) => Value::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => Value::Str(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::Str(text.to_owned()),
            Err(_) => Value::Bytes(Bytes::copy_from_slice(s.as_bytes())),
        },
        AMQPValue::FieldArray(a) => {
            Value::Array(a.as_slice().iter().map(value_from_amqp).collect())
        }
        AMQPValue::Timestamp(t) => Value::Timestamp(*t),
        AMQPValue::FieldTable(t) => Value::Table(headers_from_table(t)),
        AMQPValue::ByteArray(b) => Value::Bytes(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => Value::Void,
    }
}

/// Core headers as a field table. Strings go out as long strings: a short
/// string inside a table is written with a tag no client parses.
pub fn table_from_headers(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        // Header names come from other protocols too; a name AMQP cannot
        // carry (over 255 bytes) is skipped rather than breaking the frame.
        if let Ok(key) = ShortString::try_new(&**k) {
            table.insert(key, value_to_amqp(v));
        }
    }
    table
}

fn value_to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Void => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::I8(n) => AMQPValue::ShortShortInt(*n),
        Value::U8(n) => AMQPValue::ShortShortUInt(*n),
        Value::I16(n) => AMQPValue::ShortInt(*n),
        Value::U16(n) => AMQPValue::ShortUInt(*n),
        Value::I32(n) => AMQPValue::LongInt(*n),
        Value::U32(n) => AMQPValue::LongUInt(*n),
        Value::I64(n) => AMQPValue::LongLongInt(*n),
        Value::F32(f) => AMQPValue::Float(*f),
        Value::F64(f) => AMQPValue::Double(*f),
        Value::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        Value::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        Value::Timestamp(t) => AMQPValue::Timestamp(*t),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(value_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Table(t) => AMQPValue::FieldTable(table_from_headers(t)),
    }
}

fn text(s: &Option<ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_owned())
}

/// AMQP basic properties as core properties.
pub fn from_amqp(p: &AMQPProperties) -> Properties {
    Properties {
        content_type: text(p.content_type()),
        content_encoding: text(p.content_encoding()),
        headers: p
            .headers()
            .as_ref()
            .map(headers_from_table)
            .unwrap_or_default(),
        persistent: *p.delivery_mode() == Some(2),
        priority: *p.priority(),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        expiration: text(p.expiration()),
        message_id: text(p.message_id()),
        timestamp: *p.timestamp(),
        kind: text(p.kind()),
        user_id: text(p.user_id()),
        app_id: text(p.app_id()),
        cluster_id: text(p.cluster_id()),
    }
}

/// Core properties as AMQP basic properties. Values longer than a short
/// string allows (possible when they came from MQTT or STOMP) travel as
/// headers named after the property instead of being cut.
pub fn to_amqp(p: &Properties) -> AMQPProperties {
    let mut headers = p.headers.clone();
    let mut short = |name: &'static str, v: &Option<String>| -> Option<ShortString> {
        let v = v.as_ref()?;
        match ShortString::try_new(v.as_str()) {
            Ok(s) => Some(s),
            Err(_) => {
                headers.insert(name.into(), Value::Str(v.clone()));
                None
            }
        }
    };
    let content_type = short("content-type", &p.content_type);
    let content_encoding = short("content-encoding", &p.content_encoding);
    let correlation_id = short("x-correlation-id", &p.correlation_id);
    let reply_to = short("x-reply-to", &p.reply_to);
    let expiration = short("x-expiration", &p.expiration);
    let message_id = short("x-message-id", &p.message_id);
    let kind = short("x-type", &p.kind);
    let user_id = short("x-user-id", &p.user_id);
    let app_id = short("x-app-id", &p.app_id);
    let cluster_id = short("x-cluster-id", &p.cluster_id);
    let mut out = AMQPProperties::default();
    if let Some(v) = content_type {
        out = out.with_content_type(v);
    }
    if let Some(v) = content_encoding {
        out = out.with_content_encoding(v);
    }
    if !headers.is_empty() {
        out = out.with_headers(table_from_headers(&headers));
    }
    out = out.with_delivery_mode(if p.persistent { 2 } else { 1 });
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = correlation_id {
        out = out.with_correlation_id(v);
    }
    if let Some(v) = reply_to {
        out = out.with_reply_to(v);
    }
    if let Some(v) = expiration {
        out = out.with_expiration(v);
    }
    if let Some(v) = message_id {
        out = out.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = kind {
        out = out.with_type(v);
    }
    if let Some(v) = user_id {
        out = out.with_user_id(v);
    }
    if let Some(v) = app_id {
        out = out.with_app_id(v);
    }
    if let Some(v) = cluster_id {
        out = out.with_cluster_id(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_through_the_core() {
        let mut nested = FieldTable::default();
        nested.insert("n".into(), AMQPValue::LongLongInt(-3));
        let mut table = FieldTable::default();
        table.insert("s".into(), AMQPValue::LongString("text".into()));
        table.insert("b".into(), AMQPValue::Boolean(true));
        table.insert("i".into(), AMQPValue::LongInt(7));
        table.insert("t".into(), AMQPValue::FieldTable(nested));
        table.insert(
            "a".into(),
            AMQPValue::FieldArray(vec![AMQPValue::ShortShortUInt(1)].into()),
        );
        table.insert("x".into(), AMQPValue::ByteArray(vec![0xFF, 0].into()));
        let amqp = AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_headers(table)
            .with_delivery_mode(2)
            .with_priority(4)
            .with_correlation_id("c-1".into())
            .with_reply_to("r".into())
            .with_expiration("60000".into())
            .with_message_id("m".into())
            .with_timestamp(1_700_000_000)
            .with_type("t".into())
            .with_user_id("guest".into())
            .with_app_id("app".into());
        let core = from_amqp(&amqp);
        assert!(core.persistent);
        assert_eq!(core.ttl_millis(), Some(60_000));
        assert_eq!(to_amqp(&core), amqp);
    }

    #[test]
    fn values_too_long_for_a_short_string_travel_as_headers() {
        let long = "c".repeat(300);
        let core = Properties {
            correlation_id: Some(long.clone()),
            ..Default::default()
        };
        let amqp = to_amqp(&core);
        assert!(amqp.correlation_id().is_none());
        let back = from_amqp(&amqp);
        assert_eq!(
            back.headers.get("x-correlation-id"),
            Some(&Value::Str(long))
        );
    }
}

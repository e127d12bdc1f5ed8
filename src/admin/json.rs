//! Core values in the JSON shapes RabbitMQ's management API uses, and back.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value as Json, json};

use crate::core::connections::ConnectionSnapshot;
use crate::core::exchange::{BindingSpec, Destination, ExchangeSpec};
use crate::core::queue::Queue;
use crate::core::{Headers, Message, Properties, Value};

/// A header or argument value as JSON.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Void => Json::Null,
        Value::Bool(b) => json!(b),
        Value::I8(n) => json!(n),
        Value::U8(n) => json!(n),
        Value::I16(n) => json!(n),
        Value::U16(n) => json!(n),
        Value::I32(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::F32(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::Decimal { scale, value } => json!(f64::from(*value) / 10f64.powi((*scale).into())),
        Value::Str(s) => json!(s),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => json!(s),
            Err(_) => json!(BASE64.encode(b)),
        },
        Value::Timestamp(t) => json!(t),
        Value::Array(items) => Json::Array(items.iter().map(value_to_json).collect()),
        Value::Table(t) => headers_to_json(t),
    }
}

/// A header map as a JSON object.
pub fn headers_to_json(h: &Headers) -> Json {
    Json::Object(
        h.iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

/// A JSON value as a header or argument value: integers stay integers,
/// as RabbitMQ's API does for `x-max-length` and friends.
pub fn value_from_json(j: &Json) -> Value {
    match j {
        Json::Null => Value::Void,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::I64(i),
            None => Value::F64(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(value_from_json).collect()),
        Json::Object(o) => Value::Table(headers_from_json(o)),
    }
}

/// A JSON object as a header map.
pub fn headers_from_json(o: &Map<String, Json>) -> Headers {
    o.iter()
        .map(|(k, v)| (k.clone().into(), value_from_json(v)))
        .collect()
}

/// Message properties as RabbitMQ's API shows them.
pub fn properties_to_json(p: &Properties) -> Json {
    let mut o = Map::new();
    let mut put = |k: &str, v: Option<Json>| {
        if let Some(v) = v {
            o.insert(k.into(), v);
        }
    };
    put("content_type", p.content_type.as_ref().map(|v| json!(v)));
    put(
        "content_encoding",
        p.content_encoding.as_ref().map(|v| json!(v)),
    );
    put(
        "delivery_mode",
        Some(json!(if p.persistent { 2 } else { 1 })),
    );
    put("priority", p.priority.map(|v| json!(v)));
    put(
        "correlation_id",
        p.correlation_id.as_ref().map(|v| json!(v)),
    );
    put("reply_to", p.reply_to.as_ref().map(|v| json!(v)));
    put("expiration", p.expiration.as_ref().map(|v| json!(v)));
    put("message_id", p.message_id.as_ref().map(|v| json!(v)));
    put("timestamp", p.timestamp.map(|v| json!(v)));
    put("type", p.kind.as_ref().map(|v| json!(v)));
    put("user_id", p.user_id.as_ref().map(|v| json!(v)));
    put("app_id", p.app_id.as_ref().map(|v| json!(v)));
    if !p.headers.is_empty() {
        o.insert("headers".into(), headers_to_json(&p.headers));
    }
    Json::Object(o)
}

/// Message properties from RabbitMQ's publish request shape.
pub fn properties_from_json(j: &Json) -> Properties {
    let text = |k: &str| j.get(k).and_then(Json::as_str).map(str::to_owned);
    Properties {
        content_type: text("content_type"),
        content_encoding: text("content_encoding"),
        headers: j
            .get("headers")
            .and_then(Json::as_object)
            .map(headers_from_json)
            .unwrap_or_default(),
        persistent: j.get("delivery_mode").and_then(Json::as_u64) == Some(2),
        priority: j
            .get("priority")
            .and_then(Json::as_u64)
            .map(|p| p.min(255) as u8),
        correlation_id: text("correlation_id"),
        reply_to: text("reply_to"),
        expiration: text("expiration"),
        message_id: text("message_id"),
        timestamp: j.get("timestamp").and_then(Json::as_u64),
        kind: text("type"),
        user_id: text("user_id"),
        app_id: text("app_id"),
        cluster_id: None,
    }
}

/// A message as `POST /api/queues/.../get` returns it.
pub fn message_to_json(m: &Message, redelivered: bool, remaining: usize, base64: bool) -> Json {
    let body = m.body();
    let (payload, encoding) = match (base64, std::str::from_utf8(body)) {
        (false, Ok(s)) => (s.to_owned(), "string"),
        _ => (BASE64.encode(body), "base64"),
    };
    json!({
        "payload_bytes": body.len(),
        "redelivered": redelivered,
        "exchange": m.exchange().as_str(),
        "routing_key": m.routing_key().as_str(),
        "message_count": remaining,
        "properties": properties_to_json(m.properties()),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// A queue as the queue listings show it.
pub fn queue_to_json(vhost: &str, q: &Queue, node: &str) -> Json {
    let d = q.depth();
    let spec = q.spec();
    json!({
        "name": q.name().as_str(),
        "vhost": vhost,
        "durable": spec.durable,
        "auto_delete": spec.auto_delete,
        "exclusive": spec.exclusive.is_some(),
        "owner_pid": spec.exclusive.map(|c| c.0),
        "arguments": headers_to_json(&spec.arguments),
        "messages": d.ready + d.unacked,
        "messages_ready": d.ready,
        "messages_unacknowledged": d.unacked,
        "message_bytes_ready": d.ready_bytes,
        "consumers": d.consumers,
        "state": "running",
        "type": "classic",
        "node": node,
    })
}

/// An exchange as the exchange listings show it; the default exchange is
/// listed with an empty name, as RabbitMQ does.
pub fn exchange_to_json(vhost: &str, e: &ExchangeSpec) -> Json {
    json!({
        "name": e.name.as_str(),
        "vhost": vhost,
        "type": e.kind.as_str(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": headers_to_json(&e.arguments),
    })
}

/// The `properties_key` RabbitMQ uses to name one binding in a URL: the
/// routing key, `~` for an empty one, and a digest of the arguments.
pub fn binding_props_key(b: &BindingSpec) -> String {
    let key = b.key.as_str();
    let base = if key.is_empty() { "~" } else { key };
    if b.arguments.is_empty() {
        return base.to_owned();
    }
    let text = format!("{:?}", b.arguments);
    // FNV-1a: stable across runs and builds, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{base}~{h:016x}")
}

/// A binding as the binding listings show it.
pub fn binding_to_json(vhost: &str, b: &BindingSpec) -> Json {
    let (destination, kind) = match &b.destination {
        Destination::Queue(q) => (q.as_str(), "queue"),
        Destination::Exchange(e) => (e.as_str(), "exchange"),
    };
    json!({
        "source": b.source.as_str(),
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": b.key.as_str(),
        "arguments": headers_to_json(&b.arguments),
        "properties_key": binding_props_key(b),
    })
}

/// A connection's RabbitMQ-style name: the peer address and its id.
pub fn connection_name(c: &ConnectionSnapshot) -> String {
    format!("{}-{}", c.info.peer, c.info.id.0)
}

/// A connection as the connection listings show it.
pub fn connection_to_json(c: &ConnectionSnapshot, node: &str) -> Json {
    let protocol = match c.info.protocol {
        crate::core::Protocol::Amqp => "AMQP 0-9-1",
        crate::core::Protocol::Mqtt => "MQTT",
        crate::core::Protocol::Stomp => "STOMP",
    };
    let mut client = Map::new();
    if let Some(n) = &c.info.client_name {
        client.insert("connection_name".into(), json!(n));
    }
    if let Some(p) = &c.info.client_product {
        client.insert("product".into(), json!(p));
    }
    json!({
        "name": connection_name(c),
        "id": c.info.id.0,
        "node": node,
        "type": "network",
        "protocol": protocol,
        "peer_host": c.info.peer.ip().to_string(),
        "peer_port": c.info.peer.port(),
        "user": c.info.user,
        "vhost": c.info.vhost.as_str(),
        "channels": c.lanes.len(),
        "connected_at": c.info.connected_at_ms,
        "state": "running",
        "recv_oct": c.received_bytes,
        "send_oct": c.sent_bytes,
        "client_properties": client,
    })
}

/// Just the fields that identify a connection, for nested details.
pub fn connection_details(c: &ConnectionSnapshot) -> Json {
    json!({
        "name": connection_name(c),
        "peer_host": c.info.peer.ip().to_string(),
        "peer_port": c.info.peer.port(),
    })
}

//! STOMP headers <-> the core's Properties and Headers: the only place the
//! two meet. The names follow RabbitMQ's STOMP plugin, so a message keeps
//! its properties whichever protocol publishes or consumes it:
//!
//! | STOMP header | core |
//! |---|---|
//! | `content-type`, `content-encoding` | `content_type`, `content_encoding` |
//! | `persistent:true` | `persistent` |
//! | `priority` | `priority` (0-255) |
//! | `correlation-id`, `reply-to`, `type`, `user-id`, `app-id` | the same properties |
//! | `expiration` (ms) | `expiration` |
//! | `expires` (ActiveMQ: absolute, epoch ms; 0 is never) | `expiration`, the time left |
//! | `amqp-message-id` | `message_id` (STOMP's `message-id` is the broker's ack id) |
//! | `timestamp` (seconds) | `timestamp` |
//! | any other header | a string header |
//!
//! On the way out, headers that are not text become text (numbers in
//! decimal, booleans as `true` / `false`, UTF-8 bytes as themselves);
//! arrays, tables, void and non-UTF-8 bytes have no STOMP form and are left
//! out, as RabbitMQ leaves them out. So is a header that the connection's
//! version cannot carry (a line break in a STOMP 1.0 value), and a header
//! whose name the frame itself uses (`destination`, `message-id`, ...).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

use super::destination::Destination;
use super::escape::Escaping;
use super::frame::{Command, Version};
use crate::core::{Message, Properties, Value};

/// Headers that belong to the frame, not the message: never carried into
/// the core from a SEND, never copied from the core onto a MESSAGE.
const FRAME_HEADERS: [&str; 9] = [
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "message-id",
    "subscription",
    "ack",
    "redelivered",
    "expires",
];

/// Headers that name core properties.
const PROPERTY_HEADERS: [&str; 13] = [
    "content-type",
    "content-encoding",
    "persistent",
    "priority",
    "correlation-id",
    "reply-to",
    "expiration",
    "amqp-message-id",
    "timestamp",
    "type",
    "user-id",
    "app-id",
    "content-length",
];

/// A SEND header whose value the core cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid '{name}' header: {value:?} {why}")]
pub struct BadHeader {
    /// The header.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What it should have been.
    pub why: &'static str,
}

/// Milliseconds since the Unix epoch, now.
pub fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The core properties of a SEND frame's headers. `now_ms` turns an
/// ActiveMQ `expires` into a time to live. Repeated headers: the first counts.
pub fn from_send(headers: &[(String, String)], now_ms: u64) -> Result<Properties, BadHeader> {
    let mut p = Properties::default();
    let mut persistent = None;
    let mut expires = None;
    let text = |slot: &mut Option<String>, v: &str| {
        if slot.is_none() {
            *slot = Some(v.to_owned());
        }
    };
    for (name, value) in headers {
        match name.as_str() {
            "content-type" => text(&mut p.content_type, value),
            "content-encoding" => text(&mut p.content_encoding, value),
            "correlation-id" => text(&mut p.correlation_id, value),
            "reply-to" => text(&mut p.reply_to, value),
            "amqp-message-id" => text(&mut p.message_id, value),
            "type" => text(&mut p.kind, value),
            "user-id" => text(&mut p.user_id, value),
            "app-id" => text(&mut p.app_id, value),
            "persistent" => {
                persistent.get_or_insert(value.eq_ignore_ascii_case("true"));
            }
            "priority" if p.priority.is_none() => {
                p.priority = Some(value.trim().parse().map_err(|_| BadHeader {
                    name: "priority",
                    value: value.clone(),
                    why: "is not a number from 0 to 255",
                })?);
            }
            "expiration" if p.expiration.is_none() => {
                let ms: u64 = value.trim().parse().map_err(|_| BadHeader {
                    name: "expiration",
                    value: value.clone(),
                    why: "is not a count of milliseconds",
                })?;
                p.expiration = Some(ms.to_string());
            }
            "expires" if expires.is_none() => {
                let at: u64 = value.trim().parse().map_err(|_| BadHeader {
                    name: "expires",
                    value: value.clone(),
                    why: "is not a time in milliseconds since the epoch",
                })?;
                expires = Some(at);
            }
            "timestamp" if p.timestamp.is_none() => {
                p.timestamp = Some(value.trim().parse().map_err(|_| BadHeader {
                    name: "timestamp",
                    value: value.clone(),
                    why: "is not a time in seconds since the epoch",
                })?);
            }
            other if FRAME_HEADERS.contains(&other) || PROPERTY_HEADERS.contains(&other) => {}
            other => {
                p.headers
                    .entry(other.to_owned().into())
                    .or_insert_with(|| Value::Str(value.clone()));
            }
        }
    }
    p.persistent = persistent.unwrap_or(false);
    // [ActiveMQ] `expires:0` means never; a time already past leaves no time.
    if p.expiration.is_none()
        && let Some(at) = expires.filter(|at| *at > 0)
    {
        p.expiration = Some(at.saturating_sub(now_ms).to_string());
    }
    Ok(p)
}

/// The frame-level headers of one MESSAGE.
#[derive(Debug, Clone, Copy)]
pub struct MessageHead<'a> {
    /// The subscription's id, when the client gave one.
    pub subscription: Option<&'a str>,
    /// The id the client acknowledges with.
    pub message_id: &'a str,
    /// Where the message is reported to come from.
    pub destination: &'a str,
    /// STOMP 1.2's `ack` header, for client-acknowledged subscriptions.
    pub ack: Option<&'a str>,
    /// Handed out before.
    pub redelivered: bool,
}

/// Writes a whole MESSAGE frame for `message`: the frame headers, the
/// message's properties and headers as the table above says, and the body
/// with its `content-length`.
pub fn write_message(
    version: Version,
    head: &MessageHead<'_>,
    message: &Message,
    out: &mut BytesMut,
) {
    let esc = Escaping::of(version, Command::Message);
    let p = message.properties();
    let body = message.body();
    out.reserve(body.len() + 256);
    out.put_slice(b"MESSAGE\n");
    if let Some(sub) = head.subscription {
        put(out, esc, "subscription", sub);
    }
    put(out, esc, "destination", head.destination);
    put(out, esc, "message-id", head.message_id);
    put(
        out,
        esc,
        "redelivered",
        if head.redelivered { "true" } else { "false" },
    );
    if let Some(ack) = head.ack {
        put(out, esc, "ack", ack);
    }
    let opt = |out: &mut BytesMut, name: &str, v: &Option<String>| {
        if let Some(v) = v {
            put(out, esc, name, v);
        }
    };
    opt(out, "content-type", &p.content_type);
    opt(out, "content-encoding", &p.content_encoding);
    if p.persistent {
        put(out, esc, "persistent", "true");
    }
    if let Some(priority) = p.priority {
        put(out, esc, "priority", &priority.to_string());
    }
    opt(out, "correlation-id", &p.correlation_id);
    if let Some(reply_to) = &p.reply_to {
        if Destination::looks_like(reply_to) {
            put(out, esc, "reply-to", reply_to);
        } else {
            // A bare queue name, as AMQP clients and rewritten temp queues
            // give it: STOMP clients SEND replies to a destination.
            put(out, esc, "reply-to", &format!("/reply-queue/{reply_to}"));
        }
    }
    if let Some(ttl) = p.ttl_millis() {
        put(out, esc, "expiration", &ttl.to_string());
        // ActiveMQ's clients read the absolute time instead.
        let left = Duration::from_millis(ttl).saturating_sub(message.received().elapsed());
        let at = epoch_millis().saturating_add(u64::try_from(left.as_millis()).unwrap_or(0));
        put(out, esc, "expires", &at.to_string());
    } else {
        opt(out, "expiration", &p.expiration);
    }
    opt(out, "amqp-message-id", &p.message_id);
    if let Some(ts) = p.timestamp {
        put(out, esc, "timestamp", &ts.to_string());
    }
    opt(out, "type", &p.kind);
    opt(out, "user-id", &p.user_id);
    opt(out, "app-id", &p.app_id);
    for (name, value) in &p.headers {
        if FRAME_HEADERS.contains(&&**name) || PROPERTY_HEADERS.contains(&&**name) {
            continue;
        }
        if let Some(text) = value_text(value) {
            put(out, esc, name, &text);
        }
    }
    out.put_slice(b"content-length:");
    out.put_slice(body.len().to_string().as_bytes());
    out.put_slice(b"\n\n");
    out.put_slice(body);
    out.put_u8(0);
}

/// Writes `name:value\n`, or nothing if this escaping cannot carry them.
fn put(out: &mut BytesMut, esc: Escaping, name: &str, value: &str) {
    let start = out.len();
    let written = esc.write(name, true, out).and_then(|()| {
        out.put_u8(b':');
        esc.write(value, false, out)
    });
    match written {
        Ok(()) => out.put_u8(b'\n'),
        Err(_) => out.truncate(start),
    }
}

/// A core header value as STOMP text, when it has one.
fn value_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    Some(match v {
        Value::Str(s) => Cow::Borrowed(s.as_str()),
        Value::Bytes(b) => Cow::Borrowed(std::str::from_utf8(b).ok()?),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::F32(f) => Cow::Owned(f.to_string()),
        Value::F64(f) => Cow::Owned(f.to_string()),
        Value::Decimal { scale, value } => Cow::Owned(decimal(*scale, *value)),
        Value::Void | Value::Array(_) | Value::Table(_) => return None,
        other => Cow::Owned(other.as_i64()?.to_string()),
    })
}

/// An AMQP decimal (value × 10^-scale) in positional notation.
fn decimal(scale: u8, value: u32) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Headers;
    use crate::stomp::codec::{Item, StompCodec};
    use bytes::Bytes;
    use tokio_util::codec::Decoder;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn send_headers_become_properties_and_custom_headers() {
        let p = from_send(
            &headers(&[
                ("destination", "/queue/q"),
                ("receipt", "r1"),
                ("content-type", "text/plain"),
                ("content-length", "3"),
                ("persistent", "true"),
                ("priority", "7"),
                ("correlation-id", "c1"),
                ("reply-to", "/queue/replies"),
                ("expiration", "60000"),
                ("amqp-message-id", "m1"),
                ("timestamp", "1700000000"),
                ("type", "order"),
                ("app-id", "shop"),
                ("x-colour", "red"),
                ("x-colour", "blue"),
                ("message-id", "ignored"),
            ]),
            0,
        )
        .expect("valid headers");
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert!(p.persistent);
        assert_eq!(p.priority, Some(7));
        assert_eq!(p.correlation_id.as_deref(), Some("c1"));
        assert_eq!(p.reply_to.as_deref(), Some("/queue/replies"));
        assert_eq!(p.ttl_millis(), Some(60_000));
        assert_eq!(p.message_id.as_deref(), Some("m1"));
        assert_eq!(p.timestamp, Some(1_700_000_000));
        assert_eq!(p.kind.as_deref(), Some("order"));
        assert_eq!(p.app_id.as_deref(), Some("shop"));
        let mut want = Headers::new();
        want.insert("x-colour".into(), Value::Str("red".into()));
        assert_eq!(p.headers, want, "the first of a repeated header counts");
    }

    #[test]
    fn activemq_expires_becomes_the_time_left() {
        let now = 1_000_000;
        let ttl = |v: &str| {
            from_send(&headers(&[("expires", v)]), now)
                .expect("valid")
                .expiration
        };
        assert_eq!(ttl("1005000").as_deref(), Some("5000"));
        assert_eq!(ttl("999000").as_deref(), Some("0"), "already past");
        assert_eq!(ttl("0"), None, "zero means never");
        let both = from_send(
            &headers(&[("expires", "1005000"), ("expiration", "9")]),
            now,
        )
        .expect("valid");
        assert_eq!(both.expiration.as_deref(), Some("9"));
    }

    #[test]
    fn bad_numeric_headers_are_refused() {
        for (name, value) in [
            ("priority", "high"),
            ("priority", "256"),
            ("expiration", "-1"),
            ("expiration", "soon"),
            ("expires", "tomorrow"),
            ("timestamp", "now"),
        ] {
            let err = from_send(&headers(&[(name, value)]), 0).expect_err(name);
            assert_eq!(err.name, name);
        }
    }

    fn decoded(
        version: Version,
        message: &Message,
        head: MessageHead<'_>,
    ) -> Vec<(String, String)> {
        let mut out = BytesMut::new();
        write_message(version, &head, message, &mut out);
        let mut codec = StompCodec::default();
        codec.set_version(version);
        match codec.decode(&mut out).expect("decodes") {
            Some(Item::Frame(f)) => {
                assert_eq!(&f.body[..], &message.body()[..]);
                assert!(out.is_empty());
                f.headers
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    fn head() -> MessageHead<'static> {
        MessageHead {
            subscription: Some("s"),
            message_id: "T_s@@session@@1",
            destination: "/queue/q",
            ack: None,
            redelivered: false,
        }
    }

    #[test]
    fn message_frames_carry_properties_and_text_headers() {
        let mut h = Headers::new();
        h.insert("x-text".into(), Value::Str("a:b\nc".into()));
        h.insert("x-int".into(), Value::I32(-5));
        h.insert("x-bool".into(), Value::Bool(true));
        h.insert("x-dec".into(), Value::Decimal { scale: 2, value: 5 });
        h.insert("x-table".into(), Value::Table(Headers::new()));
        h.insert("destination".into(), Value::Str("/queue/spoofed".into()));
        let props = Properties {
            content_type: Some("application/json".into()),
            persistent: true,
            priority: Some(3),
            reply_to: Some("amq.gen-abc".into()),
            headers: h,
            ..Default::default()
        };
        let m = Message::new("".into(), "q".into(), props, Bytes::from_static(b"a\0b"));
        let got = decoded(Version::V1_2, &m, head());
        let get = |n: &str| got.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("destination"), Some("/queue/q"));
        assert_eq!(got.iter().filter(|(k, _)| k == "destination").count(), 1);
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("persistent"), Some("true"));
        assert_eq!(get("priority"), Some("3"));
        assert_eq!(get("reply-to"), Some("/reply-queue/amq.gen-abc"));
        assert_eq!(get("x-text"), Some("a:b\nc"));
        assert_eq!(get("x-int"), Some("-5"));
        assert_eq!(get("x-bool"), Some("true"));
        assert_eq!(get("x-dec"), Some("0.05"));
        assert_eq!(get("x-table"), None);
        assert_eq!(get("content-length"), Some("3"));
        assert_eq!(get("redelivered"), Some("false"));
    }

    #[test]
    fn stomp_1_0_leaves_out_what_it_cannot_carry() {
        let mut h = Headers::new();
        h.insert("x-multi".into(), Value::Str("two\nlines".into()));
        h.insert("x-fine".into(), Value::Str("ok".into()));
        let props = Properties {
            headers: h,
            ..Default::default()
        };
        let m = Message::new("".into(), "q".into(), props, Bytes::from_static(b"hi"));
        let got = decoded(Version::V1_0, &m, head());
        assert!(got.iter().any(|(k, v)| k == "x-fine" && v == "ok"));
        assert!(!got.iter().any(|(k, _)| k == "x-multi"));
    }

    #[test]
    fn expiration_goes_out_with_an_activemq_expires() {
        let props = Properties {
            expiration: Some("60000".into()),
            ..Default::default()
        };
        let m = Message::new("".into(), "q".into(), props, Bytes::new());
        let before = epoch_millis();
        let got = decoded(Version::V1_1, &m, head());
        let get = |n: &str| got.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("expiration").as_deref(), Some("60000"));
        let at: u64 = get("expires").expect("expires").parse().expect("number");
        assert!(
            at >= before + 59_000 && at <= epoch_millis() + 60_000,
            "{at}"
        );
    }

    #[test]
    fn decimals_print_positionally() {
        assert_eq!(decimal(0, 12), "12");
        assert_eq!(decimal(2, 1234), "12.34");
        assert_eq!(decimal(3, 5), "0.005");
    }
}

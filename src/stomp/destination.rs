//! STOMP destinations, as RabbitMQ's and ActiveMQ's clients write them, and
//! what each means for a SEND and a SUBSCRIBE.
//!
//! | destination | SEND publishes to | SUBSCRIBE consumes from |
//! |---|---|---|
//! | `/queue/q` | default exchange, key `q` (declares `q`) | `q` (declared durable) |
//! | `/amq/queue/q` | default exchange, key `q` | `q`, which must exist |
//! | `/topic/k` | `amq.topic`, key `k` | a queue bound to `amq.topic` with `k` |
//! | `/exchange/x/k` | `x`, key `k` | a queue bound to `x` with `k` |
//! | `/temp-queue/t` | this connection's queue `t` | this connection's queue `t` |
//! | `/reply-queue/q` | default exchange, key `q` | (not a subscription) |
//!
//! A `/` inside a name is written `%2F` (and `%` as `%25`), as RabbitMQ does.
//! In a topic subscription ActiveMQ's `>` is accepted for `#`; `.` separates
//! words in every dialect, so `/topic/a.b` is MQTT's `a/b`.

use std::fmt;

/// The exchange topic destinations use.
pub const TOPIC_EXCHANGE: &str = "amq.topic";

/// Longest exchange or queue name or routing key: an AMQP short string,
/// so that AMQP clients can name what STOMP clients created.
pub const MAX_NAME_BYTES: usize = 255;

/// A parsed destination header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `/queue/name`: a queue declared on first use.
    Queue(String),
    /// `/amq/queue/name`: a queue that must already exist.
    AmqQueue(String),
    /// `/topic/key`: `amq.topic` with a routing key or binding pattern.
    Topic(String),
    /// `/exchange/name[/key]`: any existing exchange.
    Exchange {
        /// The exchange.
        name: String,
        /// The routing key or binding pattern; empty when absent.
        key: String,
    },
    /// `/temp-queue/name`: a queue private to the connection.
    TempQueue(String),
    /// `/reply-queue/name`: the queue a temp-queue reply-to was rewritten to.
    ReplyQueue(String),
}

/// Why a destination header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The prefix names no destination type.
    #[error(
        "'{0}' is not a valid destination; valid types are /queue, /amq/queue, /topic, /exchange, /temp-queue and /reply-queue"
    )]
    Unknown(String),
    /// The prefix is known but the rest is not a name.
    #[error("'{0}' is not a valid {1} destination")]
    Invalid(String, &'static str),
}

const PREFIXES: [&str; 6] = [
    "/queue/",
    "/amq/queue/",
    "/topic/",
    "/exchange/",
    "/temp-queue/",
    "/reply-queue/",
];

impl Destination {
    /// Parses a `destination` (or `reply-to`) header.
    pub fn parse(text: &str) -> Result<Destination, DestinationError> {
        let invalid = |kind| DestinationError::Invalid(text.to_owned(), kind);
        if let Some(rest) = text.strip_prefix("/queue/") {
            return Ok(Destination::Queue(
                single(rest).ok_or_else(|| invalid("queue"))?,
            ));
        }
        if let Some(rest) = text.strip_prefix("/amq/queue/") {
            return Ok(Destination::AmqQueue(
                single(rest).ok_or_else(|| invalid("amq/queue"))?,
            ));
        }
        if let Some(rest) = text.strip_prefix("/topic/") {
            return Ok(Destination::Topic(
                single(rest).ok_or_else(|| invalid("topic"))?,
            ));
        }
        if let Some(rest) = text.strip_prefix("/temp-queue/") {
            return Ok(Destination::TempQueue(
                single(rest).ok_or_else(|| invalid("temp-queue"))?,
            ));
        }
        if let Some(rest) = text.strip_prefix("/reply-queue/") {
            // Queue names chosen by the broker never hold a `/`, but a
            // reply-to written by an AMQP client may: take it whole.
            let name = unescape(rest)
                .filter(|n| !n.is_empty() && n.len() <= MAX_NAME_BYTES)
                .ok_or_else(|| invalid("reply-queue"))?;
            return Ok(Destination::ReplyQueue(name));
        }
        if let Some(rest) = text.strip_prefix("/exchange/") {
            let (name, key) = match rest.split_once('/') {
                Some((name, key)) => (name, key),
                None => (rest, ""),
            };
            // The default exchange cannot be named this way: SEND and
            // SUBSCRIBE would mean different things.
            let name = single(name).ok_or_else(|| invalid("exchange"))?;
            let key = if key.is_empty() {
                String::new()
            } else {
                single(key).ok_or_else(|| invalid("exchange"))?
            };
            return Ok(Destination::Exchange { name, key });
        }
        Err(DestinationError::Unknown(text.to_owned()))
    }

    /// The exchange and routing key a SEND to this destination publishes with.
    /// A temp queue's is the connection's business (session.rs).
    pub fn publish_target(&self) -> (&str, &str) {
        match self {
            Destination::Queue(q)
            | Destination::AmqQueue(q)
            | Destination::ReplyQueue(q)
            | Destination::TempQueue(q) => ("", q),
            Destination::Topic(key) => (TOPIC_EXCHANGE, key),
            Destination::Exchange { name, key } => (name, key),
        }
    }

    /// For a subscription that binds its own queue: the exchange and the
    /// binding pattern, with ActiveMQ's `>` read as `#`.
    pub fn binding(&self) -> Option<(&str, String)> {
        match self {
            Destination::Topic(key) => Some((TOPIC_EXCHANGE, activemq_wildcards(key))),
            Destination::Exchange { name, key } => Some((name, key.clone())),
            _ => None,
        }
    }

    /// The destination a message published to `exchange` with `key` is
    /// reported under in MESSAGE frames (RabbitMQ's rule).
    pub fn of_message(exchange: &str, key: &str) -> String {
        let mut out = String::with_capacity(exchange.len() + key.len() + 12);
        match exchange {
            "" => {
                out.push_str("/queue/");
                escape_into(key, &mut out);
            }
            TOPIC_EXCHANGE => {
                out.push_str("/topic/");
                escape_into(key, &mut out);
            }
            _ => {
                out.push_str("/exchange/");
                escape_into(exchange, &mut out);
                if !key.is_empty() {
                    out.push('/');
                    escape_into(key, &mut out);
                }
            }
        }
        out
    }

    /// Whether a header value starts like a destination (the test applied
    /// to a `reply-to` before presenting a bare queue name as `/reply-queue/`).
    pub fn looks_like(text: &str) -> bool {
        PREFIXES.iter().any(|p| text.starts_with(p))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let (prefix, name) = match self {
            Destination::Queue(q) => ("/queue/", q),
            Destination::AmqQueue(q) => ("/amq/queue/", q),
            Destination::Topic(k) => ("/topic/", k),
            Destination::TempQueue(q) => ("/temp-queue/", q),
            Destination::ReplyQueue(q) => ("/reply-queue/", q),
            Destination::Exchange { name, key } => {
                out.push_str("/exchange/");
                escape_into(name, &mut out);
                if !key.is_empty() {
                    out.push('/');
                    escape_into(key, &mut out);
                }
                return f.write_str(&out);
            }
        };
        out.push_str(prefix);
        escape_into(name, &mut out);
        f.write_str(&out)
    }
}

/// ActiveMQ writes "zero or more words" as `>`; the core's patterns say `#`.
pub fn activemq_wildcards(key: &str) -> String {
    if !key.split('.').any(|w| w == ">") {
        return key.to_owned();
    }
    key.split('.')
        .map(|w| if w == ">" { "#" } else { w })
        .collect::<Vec<_>>()
        .join(".")
}

/// One non-empty path segment, percent-decoded, within the name limit.
fn single(segment: &str) -> Option<String> {
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    unescape(segment).filter(|s| s.len() <= MAX_NAME_BYTES)
}

/// Decodes `%XX` sequences; fails on a malformed one or non-UTF-8 result.
fn unescape(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Writes a name with `/`, `%` and control characters percent-encoded.
fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '/' => out.push_str("%2F"),
            '%' => out.push_str("%25"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("%{:02X}", c as u32));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_destination_type_parses() {
        let cases: &[(&str, Destination)] = &[
            ("/queue/q", Destination::Queue("q".into())),
            ("/queue/a%2Fb", Destination::Queue("a/b".into())),
            ("/amq/queue/q", Destination::AmqQueue("q".into())),
            ("/topic/a.*.#", Destination::Topic("a.*.#".into())),
            ("/temp-queue/t", Destination::TempQueue("t".into())),
            (
                "/reply-queue/amq.gen-x",
                Destination::ReplyQueue("amq.gen-x".into()),
            ),
            (
                "/exchange/x",
                Destination::Exchange {
                    name: "x".into(),
                    key: String::new(),
                },
            ),
            (
                "/exchange/x/a.b",
                Destination::Exchange {
                    name: "x".into(),
                    key: "a.b".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&Destination::parse(text).expect(text), want, "{text}");
        }
    }

    #[test]
    fn malformed_destinations_are_refused() {
        for text in [
            "/queue/",
            "/queue/a/b",
            "/topic/",
            "/exchange/",
            "/exchange//k",
            "/exchange/x/k/more",
            "/queue/bad%zz",
            "/queue/%FF",
            "/reply-queue/",
        ] {
            assert!(
                matches!(Destination::parse(text), Err(DestinationError::Invalid(..))),
                "{text}"
            );
        }
        for text in ["queue/q", "/queues/q", "", "/foo"] {
            assert!(
                matches!(Destination::parse(text), Err(DestinationError::Unknown(_))),
                "{text}"
            );
        }
        let long = format!("/queue/{}", "q".repeat(256));
        assert!(Destination::parse(&long).is_err());
    }

    #[test]
    fn activemq_greater_than_becomes_hash_in_bindings_only() {
        let d = Destination::parse("/topic/orders.>").unwrap();
        assert_eq!(d.binding(), Some(("amq.topic", "orders.#".to_owned())));
        assert_eq!(d.publish_target(), ("amq.topic", "orders.>"));
        assert_eq!(activemq_wildcards("a.b>.>"), "a.b>.#");
        assert_eq!(activemq_wildcards(">"), "#");
    }

    #[test]
    fn messages_are_reported_under_rabbitmq_destinations() {
        assert_eq!(Destination::of_message("", "q"), "/queue/q");
        assert_eq!(Destination::of_message("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(Destination::of_message("x", ""), "/exchange/x");
        assert_eq!(Destination::of_message("x", "a/b"), "/exchange/x/a%2Fb");
        for text in [
            "/queue/a%2Fb",
            "/exchange/x/k",
            "/topic/a.b",
            "/exchange/e%25",
        ] {
            assert_eq!(Destination::parse(text).unwrap().to_string(), text);
        }
    }
}

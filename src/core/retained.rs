//! Retained messages: per vhost, the last message published to each routing
//! key of `amq.topic` with the retain header, handed to each new subscriber
//! whose pattern matches. A retained publish with an empty body clears its key.
//!
//! The header is part of the cross-protocol contract (docs: DESIGN's mapping
//! table), so AMQP and STOMP publishers retain exactly as MQTT ones do.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::binding_options::TopicBinding;
use super::change::{Change, Logged};
use super::message::{Message, Value};
use super::names::RoutingKey;

/// The header that asks for a message to be retained.
pub const RETAIN_HEADER: &str = "x-mqtt-retain";
/// The exchange whose publishes can be retained.
pub const RETAINING_EXCHANGE: &str = "amq.topic";

/// Whether a message asks to be retained (the header is `true` or "true").
pub fn wants_retain(message: &Message) -> bool {
    message
        .properties()
        .headers
        .get(RETAIN_HEADER)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// One vhost's retained messages, by routing key.
#[derive(Debug, Default)]
pub struct RetainedStore {
    // Held only to insert, remove or copy out handles; never across `.await`.
    by_key: Mutex<BTreeMap<RoutingKey, Message>>,
}

impl RetainedStore {
    /// Looks at a message published to `exchange` and stores or clears its
    /// key if it asks to be retained. Returns whether the store changed.
    pub fn offer(&self, exchange: &str, message: &Message) -> bool {
        self.offer_recorded(exchange, message, |_| None).is_some()
    }

    /// As `offer`, handing the change to `record` (the journal) under the
    /// store's lock, so the journal's order per key is the store's.
    /// Returns `None` when the message is not retained, else where its
    /// record went.
    pub fn offer_recorded(
        &self,
        exchange: &str,
        message: &Message,
        record: impl FnOnce(Change) -> Option<Logged>,
    ) -> Option<Option<Logged>> {
        if exchange != RETAINING_EXCHANGE || !wants_retain(message) {
            return None;
        }
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let change = if message.body().is_empty() {
            map.remove(message.routing_key())?;
            Change::RetainedCleared(message.routing_key().clone())
        } else {
            let kept = message.with_own_body();
            map.insert(message.routing_key().clone(), kept.clone());
            Change::RetainedSet(kept)
        };
        Some(record(change))
    }

    /// Stores a message under its routing key; an empty body clears the key.
    pub fn retain(&self, message: Message) {
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if message.body().is_empty() {
            map.remove(message.routing_key());
        } else {
            map.insert(message.routing_key().clone(), message.with_own_body());
        }
    }

    /// The retained message of one key, if it has not expired.
    pub fn get(&self, key: &str) -> Option<Message> {
        let map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|m| !expired(m)).cloned()
    }

    /// Every live retained message whose key the binding matches, in key order.
    /// Expired ones are dropped on the way.
    pub fn matching(&self, binding: &TopicBinding) -> Vec<Message> {
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, m| !expired(m));
        map.iter()
            .filter(|(k, _)| binding.matches(k.as_str()))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// How many keys hold a message.
    pub fn len(&self) -> usize {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expired(message: &Message) -> bool {
    message
        .properties()
        .ttl_millis()
        .is_some_and(|ttl| message.age() >= Duration::from_millis(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::{Headers, Properties};
    use bytes::Bytes;

    fn msg(key: &str, body: &'static [u8], retain: bool) -> Message {
        let mut headers = Headers::new();
        if retain {
            headers.insert(RETAIN_HEADER.into(), Value::Bool(true));
        }
        Message::new(
            RETAINING_EXCHANGE.into(),
            key.into(),
            Properties {
                headers,
                ..Default::default()
            },
            Bytes::from_static(body),
        )
    }

    #[test]
    fn retained_keys_are_stored_matched_and_cleared_by_an_empty_body() {
        let store = RetainedStore::default();
        assert!(!store.offer(RETAINING_EXCHANGE, &msg("a.b", b"x", false)));
        assert!(!store.offer("amq.direct", &msg("a.b", b"x", true)));
        assert!(store.offer(RETAINING_EXCHANGE, &msg("a.b", b"1", true)));
        assert!(store.offer(RETAINING_EXCHANGE, &msg("a.c", b"2", true)));
        assert!(store.offer(RETAINING_EXCHANGE, &msg("$SYS.x", b"3", true)));
        let all = TopicBinding::new("#", false);
        assert_eq!(store.matching(&all).len(), 3);
        let guarded = TopicBinding::new("#", true);
        assert_eq!(store.matching(&guarded).len(), 2);
        let one = TopicBinding::new("a.b", true);
        assert_eq!(store.matching(&one)[0].body().as_ref(), b"1");
        assert!(store.offer(RETAINING_EXCHANGE, &msg("a.b", b"", true)));
        assert!(store.get("a.b").is_none());
        assert_eq!(store.len(), 2);
    }
}

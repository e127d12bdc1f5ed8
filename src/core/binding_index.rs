//! A vhost's bindings, indexed both ways.
//!
//! MQTT makes a binding per subscription, so a vhost may hold hundreds of
//! thousands of them, and clients come and go all day: adding, finding and
//! removing one binding, listing one exchange's bindings and dropping one
//! queue's bindings must each cost what they touch, not the whole table.

use std::collections::HashMap;

use super::exchange::{BindingSpec, Destination};
use super::message::Headers;
use super::names::{ExchangeName, RoutingKey};

/// Bindings that differ only in their arguments share one slot.
type Slot = (Destination, RoutingKey);

/// Every binding of a vhost.
#[derive(Debug, Default)]
pub struct BindingIndex {
    by_source: HashMap<ExchangeName, HashMap<Slot, Vec<Headers>>>,
    /// Destination -> (source, key) of the slots that point at it, one
    /// entry per slot.
    by_destination: HashMap<Destination, Vec<(ExchangeName, RoutingKey)>>,
    len: usize,
}

impl BindingIndex {
    /// Whether this exact binding exists.
    pub fn contains(&self, b: &BindingSpec) -> bool {
        self.by_source
            .get(&b.source)
            .and_then(|slots| slots.get(&(b.destination.clone(), b.key.clone())))
            .is_some_and(|args| args.contains(&b.arguments))
    }

    /// Adds a binding; false if it was there already.
    pub fn insert(&mut self, b: BindingSpec) -> bool {
        let slots = self.by_source.entry(b.source.clone()).or_default();
        let slot = (b.destination.clone(), b.key.clone());
        let args = slots.entry(slot).or_default();
        if args.contains(&b.arguments) {
            return false;
        }
        if args.is_empty() {
            self.by_destination
                .entry(b.destination)
                .or_default()
                .push((b.source, b.key));
        }
        args.push(b.arguments);
        self.len += 1;
        true
    }

    /// Removes a binding; false if there was none.
    pub fn remove(&mut self, b: &BindingSpec) -> bool {
        let Some(slots) = self.by_source.get_mut(&b.source) else {
            return false;
        };
        let slot = (b.destination.clone(), b.key.clone());
        let Some(args) = slots.get_mut(&slot) else {
            return false;
        };
        let Some(i) = args.iter().position(|a| *a == b.arguments) else {
            return false;
        };
        args.swap_remove(i);
        self.len -= 1;
        if args.is_empty() {
            slots.remove(&slot);
            if slots.is_empty() {
                self.by_source.remove(&b.source);
            }
            if let Some(back) = self.by_destination.get_mut(&b.destination) {
                back.retain(|(s, k)| !(s == &b.source && k == &b.key));
                if back.is_empty() {
                    self.by_destination.remove(&b.destination);
                }
            }
        }
        true
    }

    /// Whether any binding has this source.
    pub fn has_source(&self, source: &ExchangeName) -> bool {
        self.by_source.contains_key(source)
    }

    /// The bindings from one exchange.
    pub fn from_source(&self, source: &ExchangeName) -> Vec<BindingSpec> {
        let Some(slots) = self.by_source.get(source) else {
            return Vec::new();
        };
        slots
            .iter()
            .flat_map(|((destination, key), args)| {
                args.iter().map(move |a| BindingSpec {
                    source: source.clone(),
                    destination: destination.clone(),
                    key: key.clone(),
                    arguments: a.clone(),
                })
            })
            .collect()
    }

    /// The bindings to one queue or exchange.
    pub fn to_destination(&self, destination: &Destination) -> Vec<BindingSpec> {
        let Some(back) = self.by_destination.get(destination) else {
            return Vec::new();
        };
        back.iter()
            .flat_map(|(source, key)| {
                let args = self
                    .by_source
                    .get(source)
                    .and_then(|slots| slots.get(&(destination.clone(), key.clone())))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                args.iter().map(move |a| BindingSpec {
                    source: source.clone(),
                    destination: destination.clone(),
                    key: key.clone(),
                    arguments: a.clone(),
                })
            })
            .collect()
    }

    /// Every binding, in a stable order (source, destination, key).
    pub fn all(&self) -> Vec<BindingSpec> {
        let mut sources: Vec<&ExchangeName> = self.by_source.keys().collect();
        sources.sort();
        let mut out = Vec::with_capacity(self.len);
        for source in sources {
            let mut bound = self.from_source(source);
            bound.sort_by(|a, b| {
                order(&a.destination)
                    .cmp(&order(&b.destination))
                    .then_with(|| a.key.cmp(&b.key))
            });
            out.extend(bound);
        }
        out
    }

    /// How many bindings there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No bindings at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn order(d: &Destination) -> (u8, &str) {
    match d {
        Destination::Queue(q) => (0, q.as_str()),
        Destination::Exchange(e) => (1, e.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Value;

    fn binding(source: &str, queue: &str, key: &str) -> BindingSpec {
        BindingSpec {
            source: source.into(),
            destination: Destination::Queue(queue.into()),
            key: key.into(),
            arguments: Headers::new(),
        }
    }

    #[test]
    fn bindings_are_found_both_ways_and_removed_exactly() {
        let mut ix = BindingIndex::default();
        assert!(ix.insert(binding("x", "q1", "a")));
        assert!(
            !ix.insert(binding("x", "q1", "a")),
            "a duplicate is refused"
        );
        assert!(ix.insert(binding("x", "q2", "a")));
        assert!(ix.insert(binding("y", "q1", "b")));
        let mut with_args = binding("x", "q1", "a");
        with_args
            .arguments
            .insert("x-match".into(), Value::Str("any".into()));
        assert!(
            ix.insert(with_args.clone()),
            "other arguments: another binding"
        );
        assert_eq!(ix.len(), 4);
        assert_eq!(ix.from_source(&"x".into()).len(), 3);
        let to_q1 = ix.to_destination(&Destination::Queue("q1".into()));
        assert_eq!(to_q1.len(), 3, "{to_q1:?}");

        assert!(ix.remove(&binding("x", "q1", "a")));
        assert!(!ix.remove(&binding("x", "q1", "a")));
        assert!(ix.contains(&with_args));
        assert_eq!(ix.to_destination(&Destination::Queue("q1".into())).len(), 2);
        assert!(ix.remove(&with_args));
        assert_eq!(
            ix.to_destination(&Destination::Queue("q1".into())),
            vec![binding("y", "q1", "b")]
        );
        assert!(ix.remove(&binding("y", "q1", "b")));
        assert!(!ix.has_source(&"y".into()));
        assert!(
            ix.to_destination(&Destination::Queue("q1".into()))
                .is_empty()
        );
        assert_eq!(ix.all(), vec![binding("x", "q2", "a")]);
    }

    #[test]
    fn listing_is_ordered_by_source_destination_and_key() {
        let mut ix = BindingIndex::default();
        for (s, q, k) in [
            ("b", "q", "2"),
            ("a", "r", "1"),
            ("a", "q", "9"),
            ("b", "q", "1"),
        ] {
            ix.insert(binding(s, q, k));
        }
        let listed: Vec<(String, String)> = ix
            .all()
            .iter()
            .map(|b| (b.source.to_string(), b.key.to_string()))
            .collect();
        let expected = [("a", "9"), ("a", "1"), ("b", "1"), ("b", "2")];
        assert_eq!(
            listed,
            expected.map(|(s, k)| (s.to_owned(), k.to_owned())).to_vec()
        );
    }
}

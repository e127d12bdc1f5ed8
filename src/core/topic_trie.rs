//! A topic exchange's bindings as a trie of pattern words, so a publish
//! walks only the branches its routing key can match: with one binding
//! per MQTT subscription, a scan of every pattern per message would make
//! each publish cost as much as the number of subscribers.
//!
//! Words are separated by `.`; `*` matches exactly one word, `#` zero or
//! more (RabbitMQ's topic exchange). A binding may skip reserved keys
//! (binding_options.rs) when its pattern starts with a wildcard.

use std::collections::HashMap;
use std::sync::Arc;

use super::binding_options::is_reserved;

#[derive(Debug)]
struct Leaf<T> {
    skip_reserved: bool,
    value: T,
}

/// Children by word. The words are clients' own, so the hasher is seeded;
/// foldhash rather than SipHash, which hashing each word of every
/// publish's key put at about 1 % of the broker's CPU samples in the MQTT
/// 1 → 1 QoS 1 bench.
type Words<T> = HashMap<Arc<str>, Node<T>, foldhash::quality::RandomState>;

#[derive(Debug)]
struct Node<T> {
    words: Words<T>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    here: Vec<Leaf<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            words: Words::default(),
            star: None,
            hash: None,
            here: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.here.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }
}

enum Word<'a> {
    Literal(&'a str),
    Star,
    Hash,
}

/// A pattern's words, with runs of `#` collapsed (`#.#` matches what `#`
/// does, and one `#` node keeps matching linear in the key).
fn words(pattern: &str) -> Vec<Word<'_>> {
    let mut out: Vec<Word<'_>> = Vec::new();
    for w in pattern.split('.') {
        match w {
            "*" => out.push(Word::Star),
            "#" if matches!(out.last(), Some(Word::Hash)) => {}
            "#" => out.push(Word::Hash),
            other => out.push(Word::Literal(other)),
        }
    }
    out
}

/// Topic patterns mapped to values.
#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> TopicTrie<T> {
    /// Adds a value under a pattern. With `skip_reserved`, a key starting
    /// with `$` does not reach it through a leading wildcard.
    pub fn insert(&mut self, pattern: &str, skip_reserved: bool, value: T) {
        let mut node = &mut self.root;
        for w in words(pattern) {
            node = match w {
                Word::Literal(s) => node.words.entry(Arc::from(s)).or_default(),
                Word::Star => node.star.get_or_insert_with(Box::default),
                Word::Hash => node.hash.get_or_insert_with(Box::default),
            };
        }
        node.here.push(Leaf {
            skip_reserved,
            value,
        });
        self.len += 1;
    }

    /// Removes one value under `pattern` that `is_it` picks; false if none.
    pub fn remove(&mut self, pattern: &str, is_it: impl Fn(&T) -> bool) -> bool {
        let removed = remove_in(&mut self.root, &words(pattern), &is_it);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` for each value whose pattern matches `key`. A value may
    /// be reached more than once when its pattern has several `#` that can
    /// split the key differently; callers deduplicate their targets.
    pub fn for_each_match<'a>(&'a self, key: &str, mut f: impl FnMut(&'a T)) {
        let key: Vec<&str> = key.split('.').collect();
        let reserved = key.first().is_some_and(|w| is_reserved(w));
        walk(&self.root, &key, 0, reserved, &mut f);
    }

    /// Every value, in no particular order.
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(&'a T)) {
        fn all<'a, T>(node: &'a Node<T>, f: &mut impl FnMut(&'a T)) {
            node.here.iter().for_each(|l| f(&l.value));
            node.words.values().for_each(|n| all(n, f));
            if let Some(n) = &node.star {
                all(n, f);
            }
            if let Some(n) = &node.hash {
                all(n, f);
            }
        }
        all(&self.root, &mut f);
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// It holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn walk<'a, T>(
    node: &'a Node<T>,
    key: &[&str],
    i: usize,
    reserved: bool,
    f: &mut impl FnMut(&'a T),
) {
    if i == key.len() {
        for leaf in &node.here {
            // A skipping leaf's pattern starts with a wildcard, so every
            // path to it went through one.
            if !(leaf.skip_reserved && reserved) {
                f(&leaf.value);
            }
        }
    } else {
        if let Some(child) = node.words.get(key[i]) {
            walk(child, key, i + 1, reserved, f);
        }
        if let Some(star) = &node.star {
            walk(star, key, i + 1, reserved, f);
        }
    }
    if let Some(hash) = &node.hash {
        for j in i..=key.len() {
            walk(hash, key, j, reserved, f);
        }
    }
}

fn remove_in<T>(node: &mut Node<T>, words: &[Word<'_>], is_it: &impl Fn(&T) -> bool) -> bool {
    let Some((first, rest)) = words.split_first() else {
        let Some(i) = node.here.iter().position(|l| is_it(&l.value)) else {
            return false;
        };
        node.here.swap_remove(i);
        return true;
    };
    match first {
        Word::Literal(s) => {
            let Some(child) = node.words.get_mut(*s) else {
                return false;
            };
            let removed = remove_in(child, rest, is_it);
            if child.is_empty() {
                node.words.remove(*s);
            }
            removed
        }
        Word::Star | Word::Hash => {
            let slot = if matches!(first, Word::Star) {
                &mut node.star
            } else {
                &mut node.hash
            };
            let Some(child) = slot.as_mut() else {
                return false;
            };
            let removed = remove_in(child, rest, is_it);
            if child.is_empty() {
                *slot = None;
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::binding_options::TopicBinding;
    use proptest::prelude::*;

    fn matched(trie: &TopicTrie<usize>, key: &str) -> Vec<usize> {
        let mut out = Vec::new();
        trie.for_each_match(key, |v| out.push(*v));
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn matching_follows_the_topic_exchange_table() {
        let patterns = [
            "a.b.c", "a.*.c", "a.#", "#", "*.b.*", "a.#.c", "#.c", "*", "", "a.b",
        ];
        let mut trie = TopicTrie::default();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p, false, i);
        }
        for key in ["a.b.c", "a", "a.x.y.c", "b", "", "x.b.y", "a.b", "c", "a.c"] {
            let expected: Vec<usize> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| TopicBinding::new(p, false).matches(key))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(matched(&trie, key), expected, "key {key:?}");
        }
    }

    #[test]
    fn reserved_keys_skip_leading_wildcards_only_for_skipping_leaves() {
        let mut trie = TopicTrie::default();
        trie.insert("#", true, 0);
        trie.insert("#", false, 1);
        trie.insert("$SYS.#", false, 2);
        trie.insert("*.up", true, 3);
        assert_eq!(matched(&trie, "$SYS.up"), vec![1, 2]);
        assert_eq!(matched(&trie, "dev.up"), vec![0, 1, 3]);
    }

    #[test]
    fn removal_takes_one_value_and_prunes_empty_branches() {
        let mut trie = TopicTrie::default();
        trie.insert("a.*.#", false, 1);
        trie.insert("a.*.#", false, 2);
        assert!(trie.remove("a.*.#", |v| *v == 1));
        assert!(!trie.remove("a.*.#", |v| *v == 1));
        assert!(!trie.remove("a.#", |v| *v == 2));
        assert_eq!(matched(&trie, "a.b"), vec![2]);
        assert!(trie.remove("a.*.#.#", |v| *v == 2), "runs of # collapse");
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "no empty branch is left behind");
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("*".to_owned()),
            Just("#".to_owned()),
            Just("$s".to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn the_trie_agrees_with_the_pattern_matcher(
            patterns in prop::collection::vec((prop::collection::vec(word(), 1..5), any::<bool>()), 1..12),
            keys in prop::collection::vec(prop::collection::vec(word().prop_filter("literal", |w| w != "*" && w != "#"), 1..6), 1..12),
        ) {
            let mut trie = TopicTrie::default();
            let patterns: Vec<(String, bool)> =
                patterns.into_iter().map(|(w, skip)| (w.join("."), skip)).collect();
            for (i, (p, skip)) in patterns.iter().enumerate() {
                let b = TopicBinding::new(p, *skip);
                trie.insert(p, b.skips_reserved(), i);
            }
            for key in keys.iter().map(|k| k.join(".")) {
                let expected: Vec<usize> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(_, (p, skip))| TopicBinding::new(p, *skip).matches(&key))
                    .map(|(i, _)| i)
                    .collect();
                prop_assert_eq!(matched(&trie, &key), expected, "key {}", key);
            }
        }
    }
}

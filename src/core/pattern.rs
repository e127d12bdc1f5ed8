//! Topic binding patterns: words separated by `.`, where `*` matches exactly
//! one word and `#` matches zero or more. Patterns are split once, when the
//! binding is made, so a publish only compares words.

use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Word {
    Literal(Arc<str>),
    Star,
    Hash,
}

/// A compiled topic pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    words: Vec<Word>,
}

impl TopicPattern {
    /// Compiles a binding key such as `a.*.#`.
    pub fn new(pattern: &str) -> Self {
        let mut words: Vec<Word> = Vec::new();
        for w in pattern.split('.') {
            let word = match w {
                "*" => Word::Star,
                "#" => Word::Hash,
                other => Word::Literal(other.into()),
            };
            // `#.#` matches what `#` matches; collapsing keeps matching linear.
            if word == Word::Hash && words.last() == Some(&Word::Hash) {
                continue;
            }
            words.push(word);
        }
        Self { words }
    }

    /// Whether a routing key matches.
    pub fn matches(&self, key: &str) -> bool {
        let key: Vec<&str> = key.split('.').collect();
        matches_words(&self.words, &key)
    }
}

/// Iterative matcher with one backtrack point per `#` (the classic wildcard
/// algorithm): O(pattern × key) in the worst case, linear for typical keys.
fn matches_words(pattern: &[Word], key: &[&str]) -> bool {
    let (mut p, mut k) = (0usize, 0usize);
    // Position after the last `#` seen, and the key position it absorbed up to.
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            match &pattern[p] {
                Word::Hash => {
                    backtrack = Some((p + 1, k));
                    p += 1;
                    continue;
                }
                Word::Star if k < key.len() => {
                    p += 1;
                    k += 1;
                    continue;
                }
                Word::Literal(w) if k < key.len() && **w == *key[k] => {
                    p += 1;
                    k += 1;
                    continue;
                }
                _ => {}
            }
        } else if k == key.len() {
            return true;
        }
        // Mismatch: let the last `#` swallow one more word and retry.
        match backtrack {
            Some((bp, bk)) if bk < key.len() => {
                backtrack = Some((bp, bk + 1));
                p = bp;
                k = bk + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TopicPattern;

    #[test]
    fn topic_patterns_match_as_rabbitmq_documents() {
        let table: &[(&str, &str, bool)] = &[
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("#.c", "a.b.c", true),
            ("#.c", "c", true),
            ("#.c", "a.b", false),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y.d", false),
            ("*", "a", true),
            ("*", "", true),
            ("*", "a.b", false),
            ("*.*", "a", false),
            ("#.#", "a.b", true),
            ("a.#.#.b", "a.b", true),
            ("*.#", "a", true),
            ("*.#", "", true),
            ("#.*", "", true),
            ("#.*.x.#", "a.b.x.c", true),
            ("#.*.x.#", "x", false),
            ("", "", true),
            ("", "a", false),
            ("a..b", "a..b", true),
            ("stock.usd.*", "stock.usd.nyse", true),
            ("stock.#", "stock.eur.lse.x", true),
        ];
        for &(pattern, key, expected) in table {
            assert_eq!(
                TopicPattern::new(pattern).matches(key),
                expected,
                "pattern {pattern:?} key {key:?}"
            );
        }
    }
}

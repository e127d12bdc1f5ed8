//! MQTT topics and filters <-> the core's routing keys and binding keys.
//!
//! MQTT separates levels with `/`, the core's topic exchange separates words
//! with `.`. The two characters are swapped both ways (RabbitMQ's rule), so
//! the mapping is its own inverse and loses nothing: topic `v1.2/x` is key
//! `v1/2.x`, and that key comes back as `v1.2/x`. In filters `+` becomes
//! `*` and `#` stays `#`.

use crate::core::binding_options::TopicBinding;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty, or contains a NUL character.
    #[error("empty topic or NUL character")]
    Empty,
    /// A topic name (publish) contains a wildcard.
    #[error("wildcard in a topic name")]
    WildcardInName,
    /// `+` or `#` shares a level with other characters, or `#` is not last.
    #[error("misplaced wildcard in a topic filter")]
    MisplacedWildcard,
    /// `$share/` without a valid group name or filter.
    #[error("malformed shared subscription")]
    BadShare,
}

/// Swaps `/` and `.`: an MQTT topic as a routing key, or a routing key as a topic.
pub fn swap_separators(s: &str) -> String {
    // Byte-wise into one allocation of the right size (collecting chars
    // grew the string as it went): both separators are ASCII, and no byte
    // of a multi-byte UTF-8 sequence is ASCII.
    let mut out = s.to_owned().into_bytes();
    for b in &mut out {
        *b = match *b {
            b'/' => b'.',
            b'.' => b'/',
            other => other,
        };
    }
    String::from_utf8(out).unwrap_or_else(|_| unreachable!("ASCII swapped for ASCII"))
}

/// The routing key for a topic name a client publishes to.
pub fn topic_to_key(topic: &str) -> Result<String, TopicError> {
    check_name(topic)?;
    Ok(swap_separators(topic))
}

/// The MQTT topic for a routing key (any key: AMQP publishers choose freely).
pub fn key_to_topic(key: &str) -> String {
    swap_separators(key)
}

/// Checks a topic name: not empty, no NUL, no wildcard.
pub fn check_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() || topic.contains('\0') {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// The binding key for a topic filter: `a/+/#` is `a.*.#`.
pub fn filter_to_binding_key(filter: &str) -> Result<String, TopicError> {
    if filter.is_empty() || filter.contains('\0') {
        return Err(TopicError::Empty);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    let mut words = Vec::with_capacity(levels.len());
    for (i, level) in levels.iter().enumerate() {
        let word = match *level {
            "+" => "*".to_owned(),
            "#" if i == last => "#".to_owned(),
            l if l.contains(['+', '#']) || *level == "#" => {
                return Err(TopicError::MisplacedWildcard);
            }
            l => l.replace('.', "/"),
        };
        words.push(word);
    }
    Ok(words.join("."))
}

/// A subscription's filter, split into its share group (if any) and the
/// filter proper: `$share/g/a/b` is group `g`, filter `a/b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter {
    /// The share group of a shared subscription.
    pub group: Option<String>,
    /// The filter without the `$share/group/` prefix.
    pub filter: String,
    /// Its binding key.
    pub key: String,
}

/// Parses a filter, shared or not.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::BadShare);
        }
        return Ok(ParsedFilter {
            group: Some(group.to_owned()),
            filter: filter.to_owned(),
            key: filter_to_binding_key(filter)?,
        });
    }
    if raw == "$share" {
        return Err(TopicError::BadShare);
    }
    Ok(ParsedFilter {
        group: None,
        filter: raw.to_owned(),
        key: filter_to_binding_key(raw)?,
    })
}

/// How a filter matches routing keys, with MQTT's rule that a leading
/// wildcard does not match topics beginning with `$`.
pub fn matcher(binding_key: &str) -> TopicBinding {
    TopicBinding::new(binding_key, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_swap_both_ways_and_round_trip() {
        assert_eq!(topic_to_key("a/b/c").unwrap(), "a.b.c");
        assert_eq!(topic_to_key("v1.2/x").unwrap(), "v1/2.x");
        assert_eq!(key_to_topic("v1/2.x"), "v1.2/x");
        assert_eq!(key_to_topic("plant.3.temp"), "plant/3/temp");
        assert_eq!(
            topic_to_key("/lead/and/trail/").unwrap(),
            ".lead.and.trail."
        );
        for t in ["a", "a/b", "a.b/c", "//", "$SYS/x", "ü/ß.x"] {
            assert_eq!(key_to_topic(&topic_to_key(t).unwrap()), t);
        }
    }

    #[test]
    fn topic_names_refuse_wildcards_and_emptiness() {
        assert_eq!(topic_to_key(""), Err(TopicError::Empty));
        assert_eq!(topic_to_key("a\0b"), Err(TopicError::Empty));
        assert_eq!(topic_to_key("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(topic_to_key("a/#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn filters_become_binding_keys() {
        let table: &[(&str, Result<&str, TopicError>)] = &[
            ("a/+/#", Ok("a.*.#")),
            ("#", Ok("#")),
            ("+", Ok("*")),
            ("+/+", Ok("*.*")),
            ("a.b/+", Ok("a/b.*")),
            ("/+", Ok(".*")),
            ("a/#/b", Err(TopicError::MisplacedWildcard)),
            ("a/b#", Err(TopicError::MisplacedWildcard)),
            ("a+/b", Err(TopicError::MisplacedWildcard)),
            ("", Err(TopicError::Empty)),
        ];
        for (filter, want) in table {
            assert_eq!(
                filter_to_binding_key(filter).as_deref().map_err(|e| *e),
                *want,
                "{filter}"
            );
        }
    }

    #[test]
    fn shared_filters_split_into_group_and_filter() {
        assert_eq!(
            parse_filter("$share/g1/a/+").unwrap(),
            ParsedFilter {
                group: Some("g1".into()),
                filter: "a/+".into(),
                key: "a.*".into()
            }
        );
        assert_eq!(parse_filter("$share/g1"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share//a"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("$share/g+/a"), Err(TopicError::BadShare));
        assert_eq!(parse_filter("a/b").unwrap().group, None);
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        let key = |t: &str| topic_to_key(t).unwrap();
        let m = |f: &str| matcher(&filter_to_binding_key(f).unwrap());
        assert!(!m("#").matches(&key("$SYS/uptime")));
        assert!(!m("+/uptime").matches(&key("$SYS/uptime")));
        assert!(m("$SYS/#").matches(&key("$SYS/uptime")));
        assert!(m("#").matches(&key("a/b")));
        assert!(m("a/#").matches(&key("a")), "# matches the parent level");
        assert!(m("a/+/c").matches(&key("a//c")), "+ matches an empty level");
        assert!(!m("a/+").matches(&key("a/b/c")));
    }
}

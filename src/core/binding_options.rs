//! Binding arguments the core acts on when it routes through a topic
//! exchange, beside the pattern itself.
//!
//! Reserved keys: a routing key beginning with `$` (`$SYS.broker.uptime`)
//! belongs to the broker's own topics. A binding made with
//! `EXCLUDE_RESERVED` set does not match such keys through a leading
//! wildcard (`#`, `*.uptime`), only through a pattern that names the `$`
//! word itself. Bindings without it route as RabbitMQ's topic exchange does.

use super::message::{Headers, Value};
use super::pattern::TopicPattern;

/// Binding argument: leading wildcards do not match reserved keys.
pub const EXCLUDE_RESERVED: &str = "x-exclude-reserved-keys";

/// Whether a routing key is reserved for the broker's own topics.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with('$')
}

/// A topic binding's pattern with the options routing applies to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicBinding {
    pattern: TopicPattern,
    /// The pattern starts with a wildcard word and must skip reserved keys.
    skip_reserved: bool,
}

impl TopicBinding {
    /// Compiles a binding key; `exclude_reserved` as `EXCLUDE_RESERVED` says.
    pub fn new(key: &str, exclude_reserved: bool) -> Self {
        let first = key.split('.').next().unwrap_or("");
        Self {
            pattern: TopicPattern::new(key),
            skip_reserved: exclude_reserved && (first == "*" || first == "#"),
        }
    }

    /// Compiles a binding key with its binding arguments.
    pub fn from_arguments(key: &str, arguments: &Headers) -> Self {
        let exclude = arguments
            .get(EXCLUDE_RESERVED)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Self::new(key, exclude)
    }

    /// Whether reserved keys skip this binding.
    pub fn skips_reserved(&self) -> bool {
        self.skip_reserved
    }

    /// Whether a routing key matches.
    pub fn matches(&self, key: &str) -> bool {
        !(self.skip_reserved && is_reserved(key)) && self.pattern.matches(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_keys_escape_leading_wildcards_only_when_asked() {
        let cases: &[(&str, bool, &str, bool)] = &[
            ("#", false, "$SYS.x", true),
            ("#", true, "$SYS.x", false),
            ("*.x", true, "$SYS.x", false),
            ("$SYS.#", true, "$SYS.x", true),
            ("$SYS.*", true, "$SYS.x", true),
            ("a.#", true, "a.$b", true),
            ("#", true, "a.b", true),
        ];
        for &(key, exclude, routing_key, expected) in cases {
            assert_eq!(
                TopicBinding::new(key, exclude).matches(routing_key),
                expected,
                "{key} exclude={exclude} vs {routing_key}"
            );
        }
    }
}

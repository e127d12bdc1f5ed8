//! Exchanges and their routing: direct, fanout, topic and headers. An
//! `Exchange` here is an immutable snapshot of one exchange and its
//! bindings; the vhost builds a new one whenever they change, so a publish
//! reads it without taking any lock of the exchange's.

use std::collections::HashMap;
use std::sync::Arc;

use super::binding_options::TopicBinding;
use super::error::{CoreError, CoreResult};
use super::message::{Headers, Value};
use super::names::{ExchangeName, QueueName, RoutingKey};
use super::queue::Queue;

/// How an exchange routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExchangeKind {
    /// Binding key equals routing key.
    Direct,
    /// Every binding.
    Fanout,
    /// Binding key is a pattern over the routing key's words.
    Topic,
    /// Binding arguments match the message headers.
    Headers,
}

impl ExchangeKind {
    /// Parses a declared type name.
    pub fn parse(s: &str) -> CoreResult<Self> {
        match s {
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "topic" => Ok(Self::Topic),
            "headers" => Ok(Self::Headers),
            other => Err(CoreError::CommandInvalid(format!(
                "unknown exchange type '{other}'"
            ))),
        }
    }
    /// The declared type name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// An exchange's declared shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: ExchangeName,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// Declared arguments (`alternate-exchange` among them).
    pub arguments: Headers,
}

impl ExchangeSpec {
    /// Where unroutable messages go instead.
    pub fn alternate(&self) -> Option<ExchangeName> {
        self.arguments
            .get("alternate-exchange")
            .and_then(Value::as_str)
            .map(ExchangeName::from)
    }
}

/// What a binding delivers to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Destination {
    /// A queue.
    Queue(QueueName),
    /// Another exchange (exchange-to-exchange binding).
    Exchange(ExchangeName),
}

/// A binding as declared.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BindingSpec {
    /// The exchange messages come from.
    pub source: ExchangeName,
    /// Where they go.
    pub destination: Destination,
    /// The binding key.
    pub key: RoutingKey,
    /// Binding arguments (headers exchanges match on them).
    pub arguments: Headers,
}

/// A resolved destination in a routing snapshot.
#[derive(Clone, Debug)]
pub enum Target {
    /// Deliver into this queue.
    Queue(Arc<Queue>),
    /// Route again through this exchange.
    Exchange(ExchangeName),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatchMode {
    All,
    Any,
}

#[derive(Clone, Debug)]
struct HeadersMatch {
    mode: MatchMode,
    args: Vec<(String, Value)>,
}

impl HeadersMatch {
    fn new(arguments: &Headers) -> CoreResult<Self> {
        let (mode, include_x) = match arguments.get("x-match").and_then(Value::as_str) {
            None | Some("all") => (MatchMode::All, false),
            Some("any") => (MatchMode::Any, false),
            Some("all-with-x") => (MatchMode::All, true),
            Some("any-with-x") => (MatchMode::Any, true),
            Some(other) => {
                return Err(CoreError::InvalidArgument(format!(
                    "invalid x-match field value '{other}'"
                )));
            }
        };
        let args = arguments
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (include_x || !k.starts_with("x-")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self { mode, args })
    }

    fn matches(&self, headers: &Headers) -> bool {
        let check = |(k, want): &(String, Value)| match headers.get(k) {
            None => false,
            // A void binding argument asks only that the header be present.
            Some(_) if *want == Value::Void => true,
            Some(have) => values_equal(want, have),
        };
        match self.mode {
            MatchMode::All => self.args.iter().all(check),
            MatchMode::Any => self.args.iter().any(check),
        }
    }
}

/// Header equality that lets integers of different widths match (clients
/// disagree on which width to send for small numbers).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

#[derive(Clone, Debug, Default)]
enum Table {
    #[default]
    Empty,
    Direct(HashMap<RoutingKey, Vec<Target>>),
    Fanout(Vec<Target>),
    Topic(Vec<(TopicBinding, Target)>),
    Headers(Vec<(HeadersMatch, Target)>),
}

/// One exchange and its bindings, compiled for routing.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Its declared shape.
    pub spec: ExchangeSpec,
    /// Its alternate exchange, parsed once.
    pub alternate: Option<ExchangeName>,
    table: Table,
}

impl Exchange {
    /// Compiles an exchange with its bindings resolved to targets.
    pub fn compile(spec: ExchangeSpec, bindings: &[(BindingSpec, Target)]) -> CoreResult<Self> {
        let table = match spec.kind {
            ExchangeKind::Direct => {
                let mut map: HashMap<RoutingKey, Vec<Target>> = HashMap::new();
                for (b, t) in bindings {
                    map.entry(b.key.clone()).or_default().push(t.clone());
                }
                Table::Direct(map)
            }
            ExchangeKind::Fanout => {
                Table::Fanout(bindings.iter().map(|(_, t)| t.clone()).collect())
            }
            ExchangeKind::Topic => Table::Topic(
                bindings
                    .iter()
                    .map(|(b, t)| {
                        (
                            TopicBinding::from_arguments(b.key.as_str(), &b.arguments),
                            t.clone(),
                        )
                    })
                    .collect(),
            ),
            ExchangeKind::Headers => Table::Headers(
                bindings
                    .iter()
                    .map(|(b, t)| Ok((HeadersMatch::new(&b.arguments)?, t.clone())))
                    .collect::<CoreResult<_>>()?,
            ),
        };
        Ok(Self {
            alternate: spec.alternate(),
            spec,
            table,
        })
    }

    /// Checks binding arguments before a binding is stored.
    pub fn check_binding(kind: ExchangeKind, arguments: &Headers) -> CoreResult<()> {
        if kind == ExchangeKind::Headers {
            HeadersMatch::new(arguments)?;
        }
        Ok(())
    }

    /// Calls `f` for every target the message's key and headers select.
    pub fn route(&self, key: &str, headers: &Headers, mut f: impl FnMut(&Target)) {
        match &self.table {
            Table::Empty => {}
            Table::Direct(map) => map.get(key).into_iter().flatten().for_each(f),
            Table::Fanout(all) => all.iter().for_each(f),
            Table::Topic(list) => {
                for (pattern, t) in list {
                    if pattern.matches(key) {
                        f(t);
                    }
                }
            }
            Table::Headers(list) => {
                for (m, t) in list {
                    if m.matches(headers) {
                        f(t);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, Value)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn headers_matching_follows_x_match_modes() {
        let s = |v: &str| Value::Str(v.into());
        let msg = headers(&[
            ("format", s("pdf")),
            ("type", s("report")),
            ("x-tag", s("a")),
        ]);
        let table: &[(&[(&str, Value)], bool)] = &[
            (&[("format", s("pdf")), ("type", s("report"))], true),
            (
                &[
                    ("x-match", s("all")),
                    ("format", s("pdf")),
                    ("type", s("log")),
                ],
                false,
            ),
            (
                &[
                    ("x-match", s("any")),
                    ("format", s("pdf")),
                    ("type", s("log")),
                ],
                true,
            ),
            (
                &[
                    ("x-match", s("any")),
                    ("format", s("zip")),
                    ("type", s("log")),
                ],
                false,
            ),
            // x- keys are ignored unless the mode says with-x
            (
                &[
                    ("x-match", s("all")),
                    ("format", s("pdf")),
                    ("x-tag", s("b")),
                ],
                true,
            ),
            (
                &[
                    ("x-match", s("all-with-x")),
                    ("format", s("pdf")),
                    ("x-tag", s("b")),
                ],
                false,
            ),
            (
                &[
                    ("x-match", s("all-with-x")),
                    ("format", s("pdf")),
                    ("x-tag", s("a")),
                ],
                true,
            ),
            (&[("x-match", s("any-with-x")), ("x-tag", s("a"))], true),
            (&[("x-match", s("any")), ("x-tag", s("a"))], false),
            // presence only
            (&[("format", Value::Void)], true),
            (&[("missing", Value::Void)], false),
            // integer widths compare by value
            (&[("n", Value::I32(5))], false),
            // an empty all-binding matches everything
            (&[], true),
        ];
        for (args, expected) in table {
            let m = HeadersMatch::new(&headers(args)).expect("valid arguments");
            assert_eq!(m.matches(&msg), *expected, "binding {args:?}");
        }
        let with_n = headers(&[("n", Value::I64(5))]);
        assert!(
            HeadersMatch::new(&headers(&[("n", Value::I8(5))]))
                .expect("valid")
                .matches(&with_n)
        );
        assert!(HeadersMatch::new(&headers(&[("x-match", s("some"))])).is_err());
    }
}

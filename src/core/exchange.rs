//! Exchanges and their routing: direct, fanout, topic and headers. An
//! `Exchange` holds one exchange's bindings resolved to their targets;
//! the vhost adds and removes bindings one at a time as they are made.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::binding_options::TopicBinding;
use super::error::{CoreError, CoreResult};
use super::message::{HeaderName, Headers, Value};
use super::names::{ExchangeName, QueueName, RoutingKey};
use super::queue::Queue;
use super::topic_trie::TopicTrie;

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
    args: Vec<(HeaderName, Value)>,
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
            .filter(|(k, _)| **k != "x-match" && (include_x || !k.starts_with("x-")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self { mode, args })
    }

    fn matches(&self, headers: &Headers) -> bool {
        let check = |(k, want): &(HeaderName, Value)| match headers.get(&**k) {
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

/// A binding as an exchange's table holds it: what it was declared as
/// (to find it again on unbind) and where it delivers.
#[derive(Debug)]
struct Entry {
    binding: BindingSpec,
    target: Target,
}

#[derive(Debug)]
enum Table {
    Direct(HashMap<RoutingKey, Vec<Entry>>),
    Fanout(Vec<Entry>),
    Topic(TopicTrie<Entry>),
    Headers(Vec<(HeadersMatch, Entry)>),
}

/// One exchange and its bindings, kept ready for routing.
///
/// Bindings change in place under the table's lock, so binding and
/// unbinding cost what one binding costs, however many the exchange
/// holds; a publish holds the lock (shared) only while it routes.
#[derive(Debug)]
pub struct Exchange {
    /// Its declared shape.
    pub spec: ExchangeSpec,
    /// Its alternate exchange, parsed once.
    pub alternate: Option<ExchangeName>,
    table: RwLock<Table>,
}

impl Exchange {
    /// An exchange with no bindings yet.
    pub fn new(spec: ExchangeSpec) -> Self {
        let table = match spec.kind {
            ExchangeKind::Direct => Table::Direct(HashMap::new()),
            ExchangeKind::Fanout => Table::Fanout(Vec::new()),
            ExchangeKind::Topic => Table::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Table::Headers(Vec::new()),
        };
        Self {
            alternate: spec.alternate(),
            spec,
            table: RwLock::new(table),
        }
    }

    /// An exchange with its bindings resolved to targets.
    pub fn compile(
        spec: ExchangeSpec,
        bindings: impl IntoIterator<Item = (BindingSpec, Target)>,
    ) -> CoreResult<Self> {
        let exchange = Self::new(spec);
        for (b, t) in bindings {
            exchange.add(b, t)?;
        }
        Ok(exchange)
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a binding delivering to `target`.
    pub fn add(&self, binding: BindingSpec, target: Target) -> CoreResult<()> {
        let mut table = self.write();
        match &mut *table {
            Table::Direct(map) => map
                .entry(binding.key.clone())
                .or_default()
                .push(Entry { binding, target }),
            Table::Fanout(all) => all.push(Entry { binding, target }),
            Table::Topic(trie) => {
                let options =
                    TopicBinding::from_arguments(binding.key.as_str(), &binding.arguments);
                let key = binding.key.clone();
                trie.insert(
                    key.as_str(),
                    options.skips_reserved(),
                    Entry { binding, target },
                );
            }
            Table::Headers(list) => {
                let m = HeadersMatch::new(&binding.arguments)?;
                list.push((m, Entry { binding, target }));
            }
        }
        Ok(())
    }

    /// Removes a binding; false if the table did not hold it.
    pub fn remove(&self, binding: &BindingSpec) -> bool {
        let mut table = self.write();
        let is_it = |e: &Entry| e.binding == *binding;
        match &mut *table {
            Table::Direct(map) => {
                let Some(list) = map.get_mut(&binding.key) else {
                    return false;
                };
                let Some(i) = list.iter().position(is_it) else {
                    return false;
                };
                list.swap_remove(i);
                if list.is_empty() {
                    map.remove(&binding.key);
                }
                true
            }
            Table::Fanout(all) => match all.iter().position(is_it) {
                Some(i) => {
                    all.swap_remove(i);
                    true
                }
                None => false,
            },
            Table::Topic(trie) => trie.remove(binding.key.as_str(), is_it),
            Table::Headers(list) => match list.iter().position(|(_, e)| is_it(e)) {
                Some(i) => {
                    list.swap_remove(i);
                    true
                }
                None => false,
            },
        }
    }

    /// How many bindings it holds.
    pub fn len(&self) -> usize {
        match &*self.read() {
            Table::Direct(map) => map.values().map(Vec::len).sum(),
            Table::Fanout(all) => all.len(),
            Table::Topic(trie) => trie.len(),
            Table::Headers(list) => list.len(),
        }
    }

    /// It holds no bindings.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks binding arguments before a binding is stored.
    pub fn check_binding(kind: ExchangeKind, arguments: &Headers) -> CoreResult<()> {
        if kind == ExchangeKind::Headers {
            HeadersMatch::new(arguments)?;
        }
        Ok(())
    }

    /// Calls `f` for every target the message's key and headers select
    /// (a target bound more than once may come more than once).
    pub fn route(&self, key: &str, headers: &Headers, mut f: impl FnMut(&Target)) {
        match &*self.read() {
            Table::Direct(map) => map
                .get(key)
                .into_iter()
                .flatten()
                .for_each(|e| f(&e.target)),
            Table::Fanout(all) => all.iter().for_each(|e| f(&e.target)),
            Table::Topic(trie) => trie.for_each_match(key, |e| f(&e.target)),
            Table::Headers(list) => {
                for (m, e) in list {
                    if m.matches(headers) {
                        f(&e.target);
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
            .map(|(k, v)| (k.to_string().into(), v.clone()))
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

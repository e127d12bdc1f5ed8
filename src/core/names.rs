//! Newtypes for names and ids, so a queue name cannot be passed as a routing key.

use std::fmt;
use std::sync::Arc;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a name.
            pub fn new(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::new(s)
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A queue's name within its vhost.
    QueueName
);
name_type!(
    /// An exchange's name within its vhost; the default exchange is "".
    ExchangeName
);
name_type!(
    /// The key a message is published with and bindings match against.
    RoutingKey
);
name_type!(
    /// A consumer's tag, unique within whatever the adapter scopes it to.
    ConsumerTag
);
name_type!(
    /// A vhost's name.
    VHostName
);

/// Identifies one client connection for the broker's lifetime (exclusive
/// queues belong to one).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ConnectionId(pub u64);

/// Identifies a consumer across the whole broker: adapters use it to find
/// the subscription a delivery belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ConsumerId(pub u64);

/// A queue's id for one handed-out message, used to settle it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct DeliveryId(pub u64);

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A process-wide unique number for connection and consumer ids.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A map keyed by ids the broker assigns (delivery, consumer, packet ids),
/// used on the per-message path: foldhash instead of SipHash, whose
/// resistance to chosen keys buys nothing for keys clients do not choose.
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A set of ids the broker assigns, hashed as `IdMap` is.
pub type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

//! Every change of durable state, as one discrete record. The vhost emits
//! these through a `ChangeLog`; the journal writes them to disk and the
//! replication stream ships the same records to a standby, which replays
//! them through the same vhost methods.

use std::fmt::Debug;

use super::exchange::{BindingSpec, ExchangeSpec};
use super::names::{ExchangeName, QueueName, VHostName};
use super::queue::QueueSpec;

/// One change of durable state.
#[derive(Clone, Debug)]
pub enum Change {
    /// A durable exchange was declared.
    ExchangeDeclared(ExchangeSpec),
    /// A durable exchange was deleted.
    ExchangeDeleted(ExchangeName),
    /// A durable queue was declared.
    QueueDeclared(QueueSpec),
    /// A durable queue was deleted.
    QueueDeleted(QueueName),
    /// A durable queue's ready messages were dropped.
    QueuePurged(QueueName),
    /// A binding between durable ends was made.
    Bound(BindingSpec),
    /// A binding between durable ends was removed.
    Unbound(BindingSpec),
}

/// Where changes go. The broker without storage uses `NoLog`.
pub trait ChangeLog: Send + Sync + Debug {
    /// Records one change of a vhost.
    fn record(&self, vhost: &VHostName, change: Change);
}

/// Keeps nothing: the broker runs in memory.
#[derive(Debug, Default)]
pub struct NoLog;

impl ChangeLog for NoLog {
    fn record(&self, _vhost: &VHostName, _change: Change) {}
}

//! Every change of durable state, as one discrete record. The vhost and
//! its queues emit these through a `ChangeLog`; the journal writes them to
//! disk and a replication stream can ship the same records to a standby,
//! which replays them through the same vhost methods.

use std::fmt::Debug;

use tokio::sync::watch;

use super::auth::{PermissionSpec, User};
use super::exchange::{BindingSpec, ExchangeSpec};
use super::message::Message;
use super::names::{ExchangeName, QueueName, RoutingKey, VHostName};
use super::queue::QueueSpec;

/// The vhost name broker-wide changes (users) are recorded under; no vhost
/// can have it.
pub const BROKER_WIDE: &str = "";

/// A record's place in the log; positions only grow.
pub type LogPosition = u64;

/// Where a record went: its position (for durability) and its place on
/// disk (to read a paged-out message back, and to account segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Logged {
    /// The record's position.
    pub seq: LogPosition,
    /// The segment it is in (the segment's first position).
    pub segment: LogPosition,
    /// Its byte offset in that segment.
    pub offset: u64,
}

/// One change of durable state. Only durable exchanges, durable
/// non-exclusive queues, and persistent messages in such queues are
/// recorded; queues are named in message records by their `uid`, so a
/// queue deleted and declared again never inherits the old one's messages.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// A durable exchange was declared.
    ExchangeDeclared(ExchangeSpec),
    /// A durable exchange was deleted.
    ExchangeDeleted(ExchangeName),
    /// A durable queue was declared.
    QueueDeclared {
        /// This incarnation's id.
        uid: u64,
        /// Its shape.
        spec: QueueSpec,
    },
    /// A durable queue was deleted, with its messages.
    QueueDeleted {
        /// Its name.
        name: QueueName,
        /// The incarnation deleted.
        uid: u64,
    },
    /// A binding between durable ends was made.
    Bound(BindingSpec),
    /// A binding between durable ends was removed.
    Unbound(BindingSpec),
    /// A persistent message entered a durable queue.
    Enqueued {
        /// The queue.
        queue: u64,
        /// The message's id in the queue (its arrival order).
        id: u64,
        /// The message.
        message: Message,
    },
    /// A persistent message was handed to a consumer (it comes back
    /// marked redelivered after a restart).
    Delivered {
        /// The queue.
        queue: u64,
        /// The message's id.
        id: u64,
    },
    /// A persistent message left its queue (acked, dead-lettered, expired,
    /// dropped).
    Removed {
        /// The queue.
        queue: u64,
        /// The message's id.
        id: u64,
        /// The segment of its `Enqueued` record, which now holds one live
        /// message fewer.
        segment: LogPosition,
    },
    /// A message was retained under its routing key (retained.rs).
    RetainedSet(Message),
    /// A routing key's retained message was cleared.
    RetainedCleared(RoutingKey),
    /// A named client session (sessions.rs) outlives its connections.
    SessionOpened {
        /// The session's name (MQTT's client id).
        name: String,
        /// Seconds it outlives its connection; `u32::MAX` is forever.
        expiry_secs: u32,
        /// A new session: ids held by an earlier one are forgotten.
        fresh: bool,
    },
    /// A stored session lost its connection; it expires `expiry_secs`
    /// after `at_ms` unless resumed.
    SessionParked {
        /// The session's name.
        name: String,
        /// Seconds until it expires; `u32::MAX` is never.
        expiry_secs: u32,
        /// When it was parked, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// A stored session ended (expired, or replaced by one that does not
    /// outlive its connection).
    SessionEnded {
        /// The session's name.
        name: String,
    },
    /// An id of a stored session's exactly-once handshake was taken or let
    /// go, so the handshake completes across a restart (MQTT's QoS 2: an
    /// inbound id from PUBREC to PUBREL, an outbound one from PUBREL to
    /// PUBCOMP).
    SessionId {
        /// The session's name.
        name: String,
        /// The id numbers messages going to the client.
        outbound: bool,
        /// The id.
        id: u16,
        /// Taken (true) or let go (false).
        held: bool,
    },
    /// The vhost was created at runtime.
    VHostCreated,
    /// The vhost was deleted with everything in it.
    VHostDeleted,
    /// A user was added or changed (recorded under `BROKER_WIDE`).
    UserPut(User),
    /// A user was deleted, with its permissions (under `BROKER_WIDE`).
    UserDeleted(String),
    /// A user's permission in this vhost was set.
    PermissionSet {
        /// The user.
        user: String,
        /// The patterns.
        permission: PermissionSpec,
    },
    /// A user's permission in this vhost was removed.
    PermissionCleared {
        /// The user.
        user: String,
    },
    /// A stored session's will waits out its delay (`Some`), or no longer
    /// does (`None`: published, or its client came back). Last among the
    /// variants: records are numbered by variant, so older journals still
    /// read.
    SessionWill {
        /// The session's name.
        name: String,
        /// The will and when it is due.
        will: Option<PendingWill>,
    },
}

/// A will to publish at a time, unless its session is resumed first.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PendingWill {
    /// When, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The message, for amq.topic.
    pub message: Message,
}

/// How much of a queue's backlog keeps its bodies in memory. Beyond the
/// window, journalled messages live on disk once durable and are read back
/// when their turn comes, so a deep backlog costs an index entry each, not
/// a body. The default is wide enough that a consumer that falls a few
/// hundred milliseconds behind its publisher still reads from memory: a
/// body read back from disk costs its consumer a `pread`, which slows it
/// further just when it is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryWindow {
    /// Ready messages per queue.
    pub messages: usize,
    /// Ready body bytes per queue.
    pub bytes: u64,
}

impl Default for MemoryWindow {
    fn default() -> Self {
        Self {
            messages: 65_536,
            bytes: 64 * 1024 * 1024,
        }
    }
}

impl MemoryWindow {
    /// Whether a message that arrives behind `ready` messages of
    /// `ready_bytes` keeps its body in memory.
    pub fn keeps_body(&self, ready: usize, ready_bytes: u64) -> bool {
        ready < self.messages && ready_bytes < self.bytes
    }
}

/// Where changes go. The broker without storage uses `NoLog`.
pub trait ChangeLog: Send + Sync + Debug {
    /// Records one change of a vhost; returns its position when the change
    /// will become durable later (a confirm must wait for it).
    fn record(&self, vhost: &VHostName, change: Change) -> Option<Logged>;

    /// Records changes in order, as `record` would one by one; a log may
    /// take them in one go (a multiple ack removes many messages at once).
    fn record_all(&self, vhost: &VHostName, changes: &mut Vec<Change>) {
        for change in changes.drain(..) {
            self.record(vhost, change);
        }
    }

    /// Reads back a record written earlier (a paged-out message).
    fn read(&self, _segment: LogPosition, _offset: u64) -> Option<Change> {
        None
    }

    /// Whether writes are succeeding (false raises the disk alarm).
    fn healthy(&self) -> bool {
        true
    }

    /// The highest position known durable now.
    fn durable_position(&self) -> LogPosition {
        0
    }

    /// Flushes what is pending and stops; later records are dropped.
    fn close(&self) {}

    /// Follows the highest durable position, for holding confirms.
    fn durable(&self) -> Option<watch::Receiver<LogPosition>> {
        None
    }

    /// How much of each queue's backlog keeps its bodies in memory.
    fn memory_window(&self) -> MemoryWindow {
        MemoryWindow::default()
    }
}

/// Keeps nothing: the broker runs in memory.
#[derive(Debug, Default)]
pub struct NoLog;

impl ChangeLog for NoLog {
    fn record(&self, _vhost: &VHostName, _change: Change) -> Option<Logged> {
        None
    }
}

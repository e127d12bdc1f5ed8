//! The broker core: vhosts with exchanges, queues, bindings and consumers.
//! It knows no wire format; adapters turn frames into calls on `VHost` and
//! turn `Event`s back into frames.

pub mod alarm;
pub mod auth;
pub mod binding_index;
pub mod binding_options;
pub mod change;
pub mod connections;
pub mod delivery;
pub mod error;
pub mod event_channel;
pub mod exchange;
pub mod id_ring;
pub mod message;
pub mod names;
pub mod pattern;
pub mod publisher_flow;
pub mod queue;
pub mod ready_index;
pub mod retained;
pub mod sessions;
pub mod stats;
pub mod topic_trie;
pub mod vhost;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use auth::{Access, AuthError, Permission, User, Users, WriteCache};
pub use change::{Change, ChangeLog, NoLog};
pub use connections::{ConnectionInfo, Connections, LaneInfo, Protocol, Registration};
pub use delivery::{Delivery, Event, EventSink, Settle};
pub use error::{CoreError, CoreResult};
pub use message::{HeaderName, Headers, Message, Properties, Value, detach_body};
pub use names::*;
pub use stats::Stats;
pub use vhost::{PublishOutcome, VHost};

/// Limits every adapter enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message body accepted, in bytes.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The whole broker: vhosts, users, who is connected, and counters.
#[derive(Debug)]
pub struct Broker {
    vhosts: RwLock<HashMap<VHostName, Arc<VHost>>>,
    /// Who may log in, and what each user may do.
    pub users: Users,
    /// Limits for adapters.
    pub limits: Limits,
    /// Open client connections, of every protocol.
    pub connections: Connections,
    /// Message counters, bumped by adapters and queues.
    pub stats: Arc<Stats>,
    journal: Arc<dyn ChangeLog>,
    /// Memory and disk alarms.
    pub alarms: alarm::AlarmState,
}

impl Broker {
    /// A broker with the given vhosts and users; each user gets full
    /// permissions on the vhosts its `vhosts` list allows.
    pub fn new(
        vhosts: &[&str],
        users: Users,
        limits: Limits,
        journal: Arc<dyn ChangeLog>,
    ) -> Arc<Self> {
        Self::with_stats(vhosts, users, limits, journal, Stats::default())
    }

    /// As `new`, counting into `stats` (whose histograms feed the metrics
    /// exporter).
    pub fn with_stats(
        vhosts: &[&str],
        users: Users,
        limits: Limits,
        journal: Arc<dyn ChangeLog>,
        stats: Stats,
    ) -> Arc<Self> {
        let broker = Self {
            vhosts: RwLock::new(HashMap::new()),
            users,
            limits,
            connections: Connections::default(),
            stats: Arc::new(stats),
            journal: journal.clone(),
            alarms: alarm::AlarmState::default(),
        };
        for v in vhosts {
            broker.restore_vhost(v);
        }
        broker.users.grant_configured(vhosts);
        // Configured users and their grants come from the config on every
        // start; only what changes from here on is journalled.
        broker.users.record_to(journal);
        Arc::new(broker)
    }

    /// Adds a vhost (no-op if it exists); a new one is journalled.
    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        let (vhost, new) = self.insert_vhost(name);
        if new {
            self.journal
                .record(&VHostName::from(name), Change::VHostCreated);
        }
        vhost
    }

    /// Adds a vhost from the config or the journal, without recording it.
    pub fn restore_vhost(&self, name: &str) -> Arc<VHost> {
        self.insert_vhost(name).0
    }

    fn insert_vhost(&self, name: &str) -> (Arc<VHost>, bool) {
        let mut vhosts = self.vhosts.write().unwrap_or_else(|p| p.into_inner());
        let mut new = false;
        let vhost = vhosts
            .entry(VHostName::from(name))
            .or_insert_with(|| {
                new = true;
                VHost::with_stats(name.into(), self.journal.clone(), self.stats.clone())
            })
            .clone();
        (vhost, new)
    }

    /// Removes a vhost: closes its connections, deletes its queues (their
    /// consumers are cancelled) and drops the permissions that named it.
    /// False if there was no such vhost.
    pub fn remove_vhost(&self, name: &str) -> bool {
        let removed = self
            .vhosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let Some(vhost) = removed else {
            return false;
        };
        self.connections
            .close_where(|c| c.vhost.as_str() == name, "vhost deleted");
        for q in vhost.queues() {
            let _ = vhost.delete_queue(q.name().as_str(), false, false, q.spec().exclusive);
        }
        self.users.clear_vhost(name);
        // Last, after the deletions of its queues, so replay ends with the
        // vhost gone.
        self.journal
            .record(&VHostName::from(name), Change::VHostDeleted);
        true
    }

    /// Removes a vhost the journal says was deleted, without recording it.
    pub fn forget_vhost(&self, name: &str) {
        self.vhosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.users.clear_vhost(name);
    }

    /// Looks up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Follows the journal's durable position (None without a journal).
    pub fn durable(&self) -> Option<tokio::sync::watch::Receiver<change::LogPosition>> {
        self.journal.durable()
    }

    /// Whether the journal's writes are succeeding.
    pub fn journal_healthy(&self) -> bool {
        self.journal.healthy()
    }

    /// Flushes and stops the journal (at shutdown).
    pub fn close_journal(&self) {
        self.journal.close();
    }

    /// Tidies what busy moments leave behind: the room queues kept for
    /// their bursts of unsettled deliveries, once idle. Run periodically
    /// (server.rs), so that an idle broker gives that memory back while a
    /// busy one keeps it between bursts.
    pub fn upkeep(&self) {
        for vhost in self.vhosts() {
            for queue in vhost.queues_unsorted() {
                queue.release_spare();
            }
        }
    }

    /// All vhosts.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

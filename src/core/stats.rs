//! Counters that hot paths bump and operators read: messages per protocol,
//! and what queues drop or dead-letter. Each is one relaxed atomic add on
//! a handle the caller already holds (no lookup by name or label per
//! message); admin/metrics.rs reads them at scrape time and names them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::connections::Protocol;
use super::queue::DeadReason;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one protocol's clients did, counted by its adapter.
#[derive(Debug, Default)]
pub struct ProtocolStats {
    /// Messages accepted from publishers (routed or not).
    pub published: Count,
    /// Publishes that reached no queue.
    pub unroutable: Count,
    /// Publishes confirmed to the publisher.
    pub confirmed: Count,
    /// Messages handed to consumers (and to polling gets).
    pub delivered: Count,
    /// Of those, messages that had been handed out before.
    pub redelivered: Count,
    /// Deliveries the consumer acknowledged.
    pub acknowledged: Count,
    /// Deliveries the consumer rejected (requeued or not).
    pub rejected: Count,
    /// Unroutable mandatory messages returned to their publisher.
    pub returned: Count,
}

/// The broker's counters.
#[derive(Debug)]
pub struct Stats {
    protocols: [ProtocolStats; 3],
    /// Messages whose TTL ran out, dead-lettered or not.
    pub expired: Count,
    dead_lettered: [Count; 3],
    /// Seconds from routing the first publish of a confirm batch to
    /// writing the batch's confirm.
    pub confirm_latency: metrics::Histogram,
    /// Seconds to write and fdatasync one group commit of the journal.
    pub journal_commit: metrics::Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new(metrics::Histogram::noop(), metrics::Histogram::noop())
    }
}

impl Stats {
    /// Counters starting at zero, with latencies going to the histograms.
    pub fn new(confirm_latency: metrics::Histogram, journal_commit: metrics::Histogram) -> Self {
        Self {
            protocols: Default::default(),
            expired: Count::default(),
            dead_lettered: Default::default(),
            confirm_latency,
            journal_commit,
        }
    }

    /// One protocol's counters.
    pub fn protocol(&self, p: Protocol) -> &ProtocolStats {
        &self.protocols[p as usize]
    }

    /// Messages republished to a dead-letter exchange, by why they died.
    pub fn dead_lettered(&self, reason: DeadReason) -> &Count {
        &self.dead_lettered[reason as usize]
    }
}

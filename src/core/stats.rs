//! Counters that hot paths bump and operators read: messages per protocol,
//! and what queues drop or dead-letter. Each is one relaxed atomic add on
//! a handle the caller already holds (no lookup by name or label per
//! message); admin/metrics.rs reads them at scrape time and names them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

/// A count that many threads bump at once: each thread adds to its own
/// cache line, and reading sums them. One shared atomic bounced its line
/// between the cores on every publish, delivery and ack, and the
/// protocol's counters shared a single line among them.
#[derive(Debug, Default)]
pub struct HotCount(Box<[Shard; SHARDS]>);

/// Cache lines a `HotCount` spreads over; threads beyond it share.
const SHARDS: usize = 8;

/// 128 bytes: x86 fetches cache lines in adjacent pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicU64);

impl HotCount {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// This thread's shard, handed out round-robin at its first count.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// What one protocol's clients did, counted by its adapter.
#[derive(Debug, Default)]
pub struct ProtocolStats {
    /// Messages accepted from publishers (routed or not).
    pub published: HotCount,
    /// Publishes that reached no queue.
    pub unroutable: HotCount,
    /// Publishes confirmed to the publisher.
    pub confirmed: HotCount,
    /// Messages handed to consumers (and to polling gets).
    pub delivered: HotCount,
    /// Of those, messages that had been handed out before.
    pub redelivered: HotCount,
    /// Deliveries the consumer acknowledged.
    pub acknowledged: HotCount,
    /// Deliveries the consumer rejected (requeued or not).
    pub rejected: HotCount,
    /// Unroutable mandatory messages returned to their publisher.
    pub returned: HotCount,
    /// Times a publisher stopped reading to let a queue's consumers catch
    /// up (`Queue::is_behind`).
    pub publisher_waits: HotCount,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_count_sums_what_every_thread_added() {
        let count = std::sync::Arc::new(HotCount::default());
        // More threads than shards, so some share one.
        let threads: Vec<_> = (0..SHARDS * 2 + 1)
            .map(|i| {
                let count = count.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        count.inc();
                    }
                    count.add(i as u64);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("counting thread");
        }
        let n = (SHARDS * 2 + 1) as u64;
        assert_eq!(count.get(), n * 1000 + n * (n - 1) / 2);
    }
}

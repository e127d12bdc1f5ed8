//! One clock for the deadlines of every MQTT connection: the CONNECT
//! timeout, the keepalive (MQTT-3.1.2-24) and the grace a closing
//! connection has to flush.
//!
//! A timer of its own cost each connection 112 bytes of its task, which
//! with thousands of idle devices was the largest part of the task left.
//! Here a connection files its deadline under a whole-second tick with a
//! copy of its event sink; once a second one task wakes the connections
//! whose tick has come, and each looks at its own deadline again (a
//! keepalive moved later by the packets read since is filed anew). A
//! deadline is therefore met up to a second late, never early.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use crate::core::{ConnectionId, EventSink};

const TICK: Duration = Duration::from_secs(1);

type Due = BTreeMap<u32, Vec<(ConnectionId, EventSink)>>;

/// The filed deadlines, by tick.
#[derive(Debug)]
pub struct Deadlines {
    epoch: Instant,
    // Held to file, unfile or take a tick's entries; never across `.await`,
    // and never while a sink is woken or dropped.
    due: Mutex<Due>,
    /// Cancelled once nothing can file a deadline any more: ends the ticker.
    gone: CancellationToken,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            due: Mutex::default(),
            gone: CancellationToken::new(),
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

impl Deadlines {
    fn lock(&self) -> MutexGuard<'_, Due> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first tick at or after `at`; never 0, which callers keep for
    /// "nothing filed".
    fn tick_at(&self, at: Instant) -> u32 {
        let since = at.saturating_duration_since(self.epoch);
        let ticks = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        u32::try_from(ticks).unwrap_or(u32::MAX).max(1)
    }

    /// When `tick` comes.
    pub fn at(&self, tick: u32) -> Instant {
        self.epoch + TICK * tick
    }

    /// Files a wake-up for `sink` at `at` or up to a second later; returns
    /// the tick to unfile it by.
    pub fn file(&self, at: Instant, id: ConnectionId, sink: EventSink) -> u32 {
        let tick = self.tick_at(at);
        self.lock().entry(tick).or_default().push((id, sink));
        tick
    }

    /// Unfiles a connection's wake-up at `tick`, if it is still there.
    pub fn unfile(&self, tick: u32, id: ConnectionId) {
        let removed = {
            let mut due = self.lock();
            let Some(entries) = due.get_mut(&tick) else {
                return;
            };
            let removed = entries
                .iter()
                .position(|(c, _)| *c == id)
                .map(|i| entries.swap_remove(i));
            if entries.is_empty() {
                due.remove(&tick);
            }
            removed
        };
        // Dropped outside the lock: the sink takes its channel's lock.
        drop(removed);
    }

    /// Takes the entries whose tick has come by `now`.
    fn take_due(&self, now: Instant) -> Vec<EventSink> {
        let now_tick =
            u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX);
        let mut taken = Vec::new();
        let mut due = self.lock();
        while let Some(first) = due.first_entry()
            && *first.key() <= now_tick
        {
            taken.extend(first.remove().into_iter().map(|(_, sink)| sink));
        }
        taken
    }

    /// The task that wakes connections as their ticks come. It runs while
    /// anything can still file a deadline: a connection closing after the
    /// broker's shutdown still has its grace timed.
    pub fn ticker(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let deadlines = Arc::downgrade(self);
        let gone = self.gone.clone();
        let start = self.epoch + TICK;
        async move {
            let mut ticks = interval_at(start, TICK);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = gone.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let Some(deadlines) = deadlines.upgrade() else {
                    return;
                };
                let due = deadlines.take_due(Instant::now());
                drop(deadlines);
                for sink in due {
                    sink.wake();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_filed_connection_is_woken_at_its_tick_and_not_before() {
        let deadlines = Arc::new(Deadlines::default());
        let (tx, _rx) = crate::core::event_channel::channel();
        let at = Instant::now() + Duration::from_millis(2500);
        let tick = deadlines.file(at, ConnectionId(1), tx);
        assert!(deadlines.at(tick) >= at && deadlines.at(tick) < at + TICK);
        assert!(deadlines.take_due(at - Duration::from_millis(1)).is_empty());
        assert_eq!(deadlines.take_due(deadlines.at(tick)).len(), 1);
        assert!(deadlines.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfiled_connection_is_not_woken() {
        let deadlines = Arc::new(Deadlines::default());
        let (tx, _rx) = crate::core::event_channel::channel();
        let at = Instant::now() + Duration::from_secs(3);
        let a = deadlines.file(at, ConnectionId(1), tx.clone());
        let b = deadlines.file(at, ConnectionId(2), tx);
        assert_eq!(a, b);
        deadlines.unfile(a, ConnectionId(1));
        deadlines.unfile(a, ConnectionId(1));
        assert_eq!(deadlines.take_due(at + TICK).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_ends_with_the_last_holder() {
        let deadlines = Arc::new(Deadlines::default());
        let ticker = tokio::spawn(deadlines.ticker());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!ticker.is_finished());
        drop(deadlines);
        tokio::time::timeout(Duration::from_secs(1), ticker)
            .await
            .expect("the ticker ends")
            .expect("no panic");
    }
}

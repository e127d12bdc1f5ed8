//! A publisher waits, briefly, for a queue's consumers that fell behind.
//!
//! A publisher held back only by its confirms (or by nothing) can outrun a
//! consumer bound by its acks' round trip; the backlog it leaves is then
//! the latency of every message behind it. So when a publish finds a queue
//! whose consumers are behind (`Queue::is_behind`: a backlog while
//! consumers are attached), the publisher's connection stops reading until
//! they catch up, for at most `BEHIND_WAIT`. Consumers that do not catch up
//! in that time are slow, not briefly behind: the publisher goes on without
//! waiting for that queue again until it has caught up, so a stopped
//! consumer never stops a publisher. A consumer on the publisher's own
//! connection is never waited for, since its acks come in through the input
//! the wait would stop reading.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::names::ConnectionId;
use super::queue::Queue;
use super::stats::HotCount;

/// The longest a publisher waits for a queue's consumers to catch up.
pub const BEHIND_WAIT: Duration = Duration::from_millis(50);

/// One connection's publishes and the queues they found behind.
#[derive(Debug, Default)]
pub struct PublisherFlow {
    behind: Option<Arc<Queue>>,
    gave_up_on: Option<Arc<Queue>>,
}

impl PublisherFlow {
    /// A publish from connection `owner` went to `queue`, whose consumers
    /// are behind; counts into `waits` when the connection is to wait.
    pub fn note(&mut self, queue: Arc<Queue>, owner: ConnectionId, waits: &HotCount) {
        if let Some(g) = &self.gave_up_on {
            if !g.is_behind() {
                self.gave_up_on = None;
            } else if Arc::ptr_eq(g, &queue) {
                return;
            }
        }
        if queue.has_consumer_of(owner) {
            self.gave_up_on = Some(queue);
            return;
        }
        waits.inc();
        self.behind = Some(queue);
    }

    /// The connection should read nothing more for now.
    pub fn is_behind(&self) -> bool {
        self.behind.is_some()
    }

    /// The queue to wait for, and until when.
    pub fn take(&mut self) -> Wait {
        self.behind
            .take()
            .map(|q| (q, Instant::now() + BEHIND_WAIT))
    }

    /// The wait is over; if the queue's consumers are still behind, they
    /// are slow and are not waited for again until they catch up.
    pub fn waited(&mut self, wait: &mut Wait) {
        if let Some((queue, _)) = wait.take()
            && queue.is_behind()
        {
            self.gave_up_on = Some(queue);
        }
    }
}

/// A queue a connection waits for, and until when.
pub type Wait = Option<(Arc<Queue>, Instant)>;

/// Returns when the queue's consumers have caught up or the time has come
/// (at once when there is no wait).
pub async fn wait_for(wait: &Wait) {
    if let Some((queue, until)) = wait {
        let _ = tokio::time::timeout_at(*until, queue.caught_up()).await;
    }
}

//! The channel carrying core events to one connection.
//!
//! Hand-written because every connection owns one, and most connections
//! of an MQTT broker are idle devices: tokio's unbounded channel allocates
//! a 32-slot block up front (about 1.3 KiB with `Event`, plus ~0.5 KiB of
//! cache-padded state), which was a third of an idle MQTT connection's
//! memory. This one keeps a `VecDeque` that allocates only once events
//! arrive and shrinks back to a few dozen slots once a burst has been
//! drained.
//!
//! Semantics follow tokio's unbounded channel where the broker relies on
//! them: `send` never waits and fails only once the receiver is closed or
//! gone; the receiver can `close` and then drain what was sent before, so
//! a delivery is never silently dropped in between.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::delivery::Event;

/// A buffer drained of a burst larger than this shrinks back to it.
/// Shrinking to nothing made the next burst grow it again by doubling
/// from four slots: a fan-out subscriber reallocated it five or six times
/// per burst (2 % of a profile).
const KEEP_CAPACITY: usize = 64;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Event>,
    waker: Option<Waker>,
    closed: bool,
    // u32 keeps `Shared` in a smaller allocation class; four billion
    // clones of one connection's sink are not a concern.
    senders: u32,
}

#[derive(Debug, Default)]
struct Shared {
    // Held only to push, or to swap the queue out; never across `.await`.
    state: Mutex<State>,
    /// `state.closed`, readable without the lock: queues ask it of every
    /// consumer they consider for a delivery.
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half: queues and registries hold clones of it.
#[derive(Debug)]
pub struct EventSink {
    shared: Arc<Shared>,
}

/// The receiving half, owned by the connection's task.
#[derive(Debug)]
pub struct EventStream {
    shared: Arc<Shared>,
}

/// A new channel.
pub fn channel() -> (EventSink, EventStream) {
    let shared = Arc::new(Shared::default());
    shared.lock().senders = 1;
    (
        EventSink {
            shared: shared.clone(),
        },
        EventStream { shared },
    )
}

/// Publishes a connection handles between two yields to the consumers
/// they reached.
pub const PUBLISHES_PER_YIELD: u32 = 64;

/// Counts the publishes of one round of `in_rounds`.
#[derive(Debug, Default)]
pub struct Quota {
    published: u32,
}

impl Quota {
    /// One publish handled; true when the round is full and should end.
    pub fn published(&mut self) -> bool {
        self.published += 1;
        self.published >= PUBLISHES_PER_YIELD
    }
}

/// How a round of `in_rounds` ended.
#[derive(Debug)]
pub enum Round<T> {
    /// Its quota of publishes is used up; more input may wait.
    Full,
    /// The input is handled, with this result.
    Done(T),
}

/// Handles a connection's input in rounds of at most `PUBLISHES_PER_YIELD`
/// publishes, yielding after each round that had any, so that the
/// consumers its publishes reached run soon.
///
/// Tokio keeps the task woken last in the sending worker's LIFO slot, which
/// no idle worker may steal: it runs only once the sender's task yields. A
/// connection task that handles a socket buffer of publishes and then reads
/// again would hold its consumers back until its socket ran dry (up to 128
/// reads per poll); a publisher then outruns its consumers and the
/// backlog's age becomes their latency. Input with no publish (a
/// consumer's acks) never yields: it woke only its own connection, which
/// then writes the deliveries they freed before anything else runs.
///
/// Each round runs in a `WakeBatch`: the consumers it reaches are woken
/// once, as it ends.
pub async fn in_rounds<T>(mut round: impl FnMut(&mut Quota) -> Round<T>) -> T {
    loop {
        let mut quota = Quota::default();
        let ended = {
            let _wakes = WakeBatch::begin();
            round(&mut quota)
        };
        if quota.published > 0 {
            tokio::task::yield_now().await;
        }
        if let Round::Done(result) = ended {
            return result;
        }
    }
}

thread_local! {
    /// A `WakeBatch` is live on this thread.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    /// The wakers it holds back. The vector is kept between batches: a
    /// busy connection starts one every poll.
    static HELD_WAKES: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// Holds back the wakes that sends on this thread make until it is
/// dropped, then wakes each receiver once.
///
/// A connection handling a read full of publishes would otherwise wake
/// each consumer at its first delivery; an idle worker then runs the
/// consumer at once, which takes the deliveries queued so far, writes
/// them and waits again, to be woken by the next. In a 1-to-10 fan-out
/// that was a write for about every 40 deliveries (half as many writes
/// now), and the two threads took turns on every queue's lock and
/// channel. Held until the connection's poll ends, each consumer is woken
/// once per batch of publishes (at most `PUBLISHES_PER_YIELD` of them).
///
/// Not `Send`: it must not be held across an `.await`, where the task
/// could move to another thread and the wakes would wait for this one.
#[must_use = "wakes are held only while the batch is alive"]
pub struct WakeBatch {
    outer: bool,
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl WakeBatch {
    /// Starts holding wakes back; a batch started inside another one
    /// leaves them to the outer one.
    pub fn begin() -> Self {
        let outer = !HOLDING.replace(true);
        Self {
            outer,
            _this_thread: std::marker::PhantomData,
        }
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        HOLDING.set(false);
        // Taken out first: a wake may run code that sends again.
        let mut held = HELD_WAKES.take();
        for w in held.drain(..) {
            w.wake();
        }
        HELD_WAKES.with_borrow_mut(|spare| {
            if spare.capacity() < held.capacity() {
                *spare = held;
            }
        });
    }
}

/// Wakes `w` now, or when this thread's `WakeBatch` ends.
fn wake_or_hold(w: Waker) {
    if HOLDING.get() {
        HELD_WAKES.with_borrow_mut(|held| held.push(w));
    } else {
        w.wake();
    }
}

impl EventSink {
    /// Queues an event; gives it back if the receiver is closed or gone.
    pub fn send(&self, event: Event) -> Result<(), Event> {
        let waker = {
            let mut s = self.shared.lock();
            if s.closed {
                return Err(event);
            }
            s.queue.push_back(event);
            s.waker.take()
        };
        // Woken outside the lock: the receiver's task may run at once on
        // another thread and would only wait for it.
        if let Some(w) = waker {
            wake_or_hold(w);
        }
        Ok(())
    }

    /// Wakes the receiver's task without an event, for it to look at
    /// state of its own (a deadline that may have come).
    pub fn wake(&self) {
        let waker = self.shared.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The receiver is closed or gone: events sent now are refused.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl Clone for EventSink {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.shared.lock();
            s.senders -= 1;
            if s.senders == 0 { s.waker.take() } else { None }
        };
        // The last sender gone ends the stream once it is drained.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// `try_recv` found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued, but more may come.
    Empty,
    /// Nothing queued, and nothing more can come.
    Disconnected,
}

impl EventStream {
    /// Waits for events and moves up to `limit` of them into `buf`;
    /// returns how many, 0 only when every sender is gone (or the stream
    /// is closed) and nothing is left.
    pub async fn recv_many(&mut self, buf: &mut Vec<Event>, limit: usize) -> usize {
        poll_fn(|cx| self.poll_recv_many(cx, buf, limit)).await
    }

    /// `recv_many` for a hand-written poll loop: a waiting task is woken
    /// when an event is sent.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<Event>,
        limit: usize,
    ) -> Poll<usize> {
        let mut s = self.shared.lock();
        if s.queue.is_empty() {
            if s.senders == 0 || s.closed {
                return Poll::Ready(0);
            }
            match &mut s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        let n = s.queue.len().min(limit.max(1));
        buf.extend(s.queue.drain(..n));
        if s.queue.is_empty() && s.queue.capacity() > KEEP_CAPACITY {
            s.queue.shrink_to(KEEP_CAPACITY);
        }
        Poll::Ready(n)
    }

    /// Waits for one event; `None` once every sender is gone (or the
    /// stream is closed) and nothing is left.
    pub async fn recv(&mut self) -> Option<Event> {
        let mut one = Vec::with_capacity(1);
        self.recv_many(&mut one, 1).await;
        one.pop()
    }

    /// Takes one event if there is one.
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        let mut s = self.shared.lock();
        match s.queue.pop_front() {
            Some(e) => Ok(e),
            None if s.senders == 0 || s.closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Hands `f` every event already queued, without waiting.
    pub fn take_queued(&mut self, mut f: impl FnMut(Event)) {
        while let Ok(event) = self.try_recv() {
            f(event);
        }
    }

    /// Refuses further sends; what was sent before can still be taken.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.closed.store(true, Ordering::Release);
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let left = {
            let mut s = self.shared.lock();
            s.closed = true;
            self.shared.closed.store(true, Ordering::Release);
            std::mem::take(&mut s.queue)
        };
        // Dropped outside the lock: an event's drop may touch its queue.
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ConsumerId;

    fn cancelled(n: u64) -> Event {
        Event::ConsumerCancelled(ConsumerId(n))
    }

    fn id(e: &Event) -> u64 {
        match e {
            Event::ConsumerCancelled(c) => c.0,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_in_batches_up_to_the_limit() {
        let (tx, mut rx) = channel();
        for n in 0..5 {
            tx.send(cancelled(n)).expect("open");
        }
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 3).await, 3);
        assert_eq!(rx.recv_many(&mut buf, 3).await, 2);
        assert_eq!(buf.iter().map(id).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = channel();
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(cancelled(7)).expect("open");
            tx
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("the event within 10 s");
        assert_eq!(got.as_ref().map(id), Some(7));
        drop(sender.await.expect("sender task"));
    }

    #[tokio::test]
    async fn wake_wakes_a_waiting_receiver_without_an_event() {
        let (tx, mut rx) = channel();
        let (woken, waker) = flag_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = Vec::new();
        assert!(rx.poll_recv_many(&mut cx, &mut buf, 1).is_pending());
        tx.wake();
        assert!(woken.load(Ordering::Acquire));
        assert!(rx.poll_recv_many(&mut cx, &mut buf, 1).is_pending());
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn a_wake_batch_wakes_each_receiver_once_when_it_ends() {
        let (tx, mut rx) = channel();
        let (woken, waker) = flag_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = Vec::new();
        assert!(rx.poll_recv_many(&mut cx, &mut buf, 10).is_pending());
        {
            let _outer = WakeBatch::begin();
            {
                // An inner batch leaves the wake to the outer one.
                let _inner = WakeBatch::begin();
                tx.send(cancelled(1)).expect("open");
            }
            tx.send(cancelled(2)).expect("open");
            assert!(!woken.load(Ordering::Acquire), "woken inside the batch");
        }
        assert!(
            woken.load(Ordering::Acquire),
            "not woken when the batch ended"
        );
        assert_eq!(rx.poll_recv_many(&mut cx, &mut buf, 10), Poll::Ready(2));
        // With no batch, a send wakes at once.
        woken.store(false, Ordering::Release);
        assert!(rx.poll_recv_many(&mut cx, &mut buf, 10).is_pending());
        tx.send(cancelled(3)).expect("open");
        assert!(woken.load(Ordering::Acquire));
    }

    /// A waker that sets the returned flag.
    fn flag_waker() -> (std::sync::Arc<AtomicBool>, Waker) {
        let woken = std::sync::Arc::new(AtomicBool::new(false));
        let waker = Waker::from(std::sync::Arc::new(Flag(woken.clone())));
        (woken, waker)
    }

    struct Flag(std::sync::Arc<AtomicBool>);

    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_last_sender_goes() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        tx.send(cancelled(1)).expect("open");
        drop(tx);
        assert!(!tx2.is_closed());
        drop(tx2);
        assert_eq!(rx.recv().await.as_ref().map(id), Some(1));
        assert!(rx.recv().await.is_none());
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn close_refuses_new_sends_and_keeps_what_was_sent() {
        let (tx, mut rx) = channel();
        tx.send(cancelled(1)).expect("open");
        rx.close();
        assert!(tx.is_closed());
        assert!(tx.send(cancelled(2)).is_err());
        assert_eq!(rx.try_recv().as_ref().map(id), Ok(1));
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Disconnected));
        drop(rx);
        assert!(tx.send(cancelled(3)).is_err());
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_buffer_back() {
        let (tx, mut rx) = channel();
        for n in 0..1000 {
            tx.send(cancelled(n)).expect("open");
        }
        let mut buf = Vec::new();
        while rx.try_recv().is_ok() {}
        tx.send(cancelled(0)).expect("open");
        rx.recv_many(&mut buf, 10).await;
        assert!(rx.shared.lock().queue.capacity() <= KEEP_CAPACITY);
    }
}

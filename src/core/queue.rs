//! A queue: ready messages in order, deliveries awaiting settlement, and
//! consumers with credit.
//!
//! Each queue's state sits behind its own `std::sync::Mutex`, held only for
//! short sections and never across `.await`. A lock rather than a task per
//! queue: a publish delivers straight to a waiting consumer's channel in the
//! publisher's own task, with no hop through a mailbox and no wake-up of a
//! queue task (benches/queue.rs measures both paths). No code holds two
//! queue locks at once: dead letters are collected under the lock and routed
//! by the vhost after it is released (see docs/architecture.md).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use tokio::sync::Notify;

use super::change::{Change, ChangeLog, LogPosition, Logged};
use super::delivery::{Delivery, Event, EventSink, Settle};
use super::error::{CoreError, CoreResult};
use super::id_ring::DeliveryMap;
use super::message::{Headers, Message, Value};
use super::names::{
    ConnectionId, ConsumerId, ConsumerTag, DeliveryId, ExchangeName, QueueName, RoutingKey,
    VHostName,
};
use super::ready_index::{ReadyIndex, ReadyKey};
use super::stats::Stats;

/// How many deliveries a consumer may have sent to its connection but not
/// yet written to the socket. This, not the prefetch, bounds memory for a
/// consumer that stops reading: TCP back-pressure stops the writes, the
/// window fills, the queue keeps the rest.
pub const SEND_WINDOW: u32 = 1024;

/// `Delivered` records a queue keeps room for between dispatches.
const MAX_KEPT_DELIVERED_LOG: usize = 128;

/// Ready messages, with consumers attached, at which a queue's consumers
/// count as behind and its publishers wait for them; and the count at
/// which they have caught up again. Without this a publisher held back
/// only by its confirms outran a consumer bound by its acks' round trip,
/// and every message then waited behind the backlog it left.
pub const BEHIND_AT: usize = 2000;
pub const CAUGHT_UP_AT: usize = 500;

/// What to do when a queue is full (`x-overflow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (dead-letter) the oldest message to make room.
    DropHead,
    /// Refuse the new message; publishers with confirms get a nack.
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// A queue's arguments, parsed and checked once at declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, milliseconds of disuse before the queue deletes itself.
    pub expires: Option<u64>,
    /// `x-max-length`, messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`, body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<ExchangeName>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<RoutingKey>,
    /// `x-max-priority`.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
}

impl Default for QueueArgs {
    fn default() -> Self {
        Self {
            message_ttl: None,
            expires: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            single_active_consumer: false,
        }
    }
}

fn non_negative(args: &Headers, key: &str) -> CoreResult<Option<u64>> {
    match args.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n as u64)),
            _ => Err(CoreError::InvalidArgument(format!(
                "invalid arg '{key}' for queue: {v:?}"
            ))),
        },
    }
}

impl QueueArgs {
    /// Parses `x-` arguments as RabbitMQ does: unknown keys are kept but
    /// ignored, known keys with a bad value are refused.
    pub fn parse(args: &Headers) -> CoreResult<Self> {
        let text = |key: &str| -> CoreResult<Option<String>> {
            match args.get(key) {
                None => Ok(None),
                Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| {
                    CoreError::InvalidArgument(format!("invalid arg '{key}' for queue: {v:?}"))
                }),
            }
        };
        let expires = non_negative(args, "x-expires")?;
        if expires == Some(0) {
            return Err(CoreError::InvalidArgument(
                "invalid arg 'x-expires' for queue: must be positive".into(),
            ));
        }
        let overflow = match text("x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(other) => {
                return Err(CoreError::InvalidArgument(format!(
                    "invalid arg 'x-overflow' for queue: {other}"
                )));
            }
        };
        let max_priority = match non_negative(args, "x-max-priority")? {
            None => None,
            Some(p) if p <= 255 => Some(p as u8),
            Some(p) => {
                return Err(CoreError::InvalidArgument(format!(
                    "invalid arg 'x-max-priority' for queue: {p} is above 255"
                )));
            }
        };
        let single_active_consumer = match args.get("x-single-active-consumer") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                CoreError::InvalidArgument(format!(
                    "invalid arg 'x-single-active-consumer' for queue: {v:?}"
                ))
            })?,
        };
        Ok(Self {
            message_ttl: non_negative(args, "x-message-ttl")?,
            expires,
            max_length: non_negative(args, "x-max-length")?,
            max_length_bytes: non_negative(args, "x-max-length-bytes")?,
            overflow,
            dead_letter_exchange: text("x-dead-letter-exchange")?.map(ExchangeName::from),
            dead_letter_routing_key: text("x-dead-letter-routing-key")?.map(RoutingKey::from),
            max_priority,
            single_active_consumer,
        })
    }
}

/// A queue's declared shape.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct QueueSpec {
    /// Its name.
    pub name: QueueName,
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection, deleted with it.
    pub exclusive: Option<ConnectionId>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The arguments as declared, for comparison on redeclare.
    pub arguments: Headers,
}

/// Where a durable queue records its persistent messages.
#[derive(Clone, Debug)]
pub struct QueueLog {
    /// The queue's vhost.
    pub vhost: VHostName,
    /// The log.
    pub log: Arc<dyn ChangeLog>,
}

/// Why a message left a queue for its dead-letter exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// A consumer rejected it without requeue.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// The queue was over its length limit.
    MaxLen,
}

impl DeadReason {
    /// Every reason.
    pub const ALL: [DeadReason; 3] = [
        DeadReason::Rejected,
        DeadReason::Expired,
        DeadReason::MaxLen,
    ];

    /// The name used in `x-death` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Rejected => "rejected",
            DeadReason::Expired => "expired",
            DeadReason::MaxLen => "maxlen",
        }
    }
}

/// A message to republish to a dead-letter exchange once the queue's lock
/// is released.
#[derive(Debug)]
pub struct DeadLetter {
    /// Where it goes.
    pub exchange: ExchangeName,
    /// The message, with its `x-death` history updated.
    pub message: Message,
}

/// What enqueueing one message did.
#[derive(Debug, Default)]
pub struct Enqueued {
    /// The queue refused it (x-overflow reject-publish).
    pub rejected: bool,
    /// Messages pushed out to dead-letter.
    pub dead: Vec<DeadLetter>,
    /// The journal position a publisher's confirm must wait for.
    pub durable_at: Option<LogPosition>,
    /// The queue's consumers are behind (`Queue::is_behind`).
    pub behind: bool,
}

/// One handed-out message returned by `get`.
#[derive(Debug)]
pub struct Got {
    /// Settle with this.
    pub id: DeliveryId,
    /// The message.
    pub message: Message,
    /// Handed out before.
    pub redelivered: bool,
    /// Messages left ready.
    pub remaining: usize,
}

/// Shared prefetch across one group of consumers (AMQP's `global` qos).
#[derive(Debug, Default)]
pub struct SharedCredit {
    /// Maximum unacknowledged deliveries; 0 is unlimited.
    pub limit: AtomicU32,
    used: AtomicU32,
}

impl SharedCredit {
    fn available(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit == 0 || self.used.load(Ordering::Relaxed) < limit
    }
}

/// What a consumer asks for.
#[derive(Debug)]
pub struct ConsumerSpec {
    /// Broker-wide id, chosen by the adapter with `names::next_id`.
    pub id: ConsumerId,
    /// The tag its client knows it by.
    pub tag: ConsumerTag,
    /// Deliveries must be settled (else they count as done when sent).
    pub manual_ack: bool,
    /// For an auto-ack consumer: the queue keeps each delivery until the
    /// adapter reports it written (`written`), so one still in flight when
    /// the consumer goes is requeued instead of lost.
    pub settle_on_write: bool,
    /// Maximum unsettled deliveries; 0 is unlimited.
    pub prefetch: u32,
    /// Higher priorities get messages first.
    pub priority: i32,
    /// No other consumer may share the queue.
    pub exclusive: bool,
    /// The owning connection.
    pub owner: ConnectionId,
    /// Credit shared with sibling consumers, if any.
    pub shared_credit: Option<Arc<SharedCredit>>,
    /// Where deliveries go.
    pub sink: EventSink,
}

#[derive(Debug)]
struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
    unsent: u32,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        let own = self.spec.prefetch == 0 || self.unacked < self.spec.prefetch;
        own && self.unsent < SEND_WINDOW
            && self
                .spec
                .shared_credit
                .as_ref()
                .is_none_or(|c| c.available())
            && !self.spec.sink.is_closed()
    }
}

#[derive(Debug)]
struct Entry {
    /// The message; `None` while paged out to the journal.
    message: Option<Message>,
    /// Body bytes, for length limits while paged out.
    size: u32,
    expires_at: Option<Instant>,
    deliveries: u32,
    /// Where its `Enqueued` record is, when the message is journalled.
    logged: Option<Logged>,
}

impl Entry {
    fn new(message: Message, expires_at: Option<Instant>, logged: Option<Logged>) -> Self {
        let size = message.size() as u32;
        Self {
            message: Some(message),
            size,
            expires_at,
            deliveries: 0,
            logged,
        }
    }
}

/// A message read back from the journal at start-up.
#[derive(Debug)]
pub struct Restored {
    /// Its id in the queue.
    pub id: u64,
    /// The message, or `None` to leave it on disk until needed.
    pub message: Option<Message>,
    /// Its priority (for the queue's order while paged out).
    pub priority: Option<u8>,
    /// Its per-message TTL in milliseconds.
    pub ttl: Option<u64>,
    /// How long ago it was published (TTLs count from then).
    pub age: Duration,
    /// Body bytes.
    pub size: u32,
    /// Times it was handed out before.
    pub deliveries: u32,
    /// Its `Enqueued` record.
    pub logged: Logged,
}

#[derive(Debug)]
struct Unacked {
    key: ReadyKey,
    entry: Entry,
    consumer: Option<ConsumerId>,
    /// Returned on settlement even if the consumer has gone since.
    credit: Option<Arc<SharedCredit>>,
    /// Counts against the consumer's prefetch (false: auto-ack awaiting
    /// its write).
    manual: bool,
}

#[derive(Debug)]
struct State {
    ready: ReadyIndex<Entry>,
    ready_bytes: u64,
    next_seq: u64,
    unacked: DeliveryMap<Unacked>,
    next_delivery: u64,
    consumers: Vec<Consumer>,
    rr: usize,
    deleted: bool,
    had_consumers: bool,
    last_used: Instant,
    /// Journalled messages beyond the in-memory window whose bodies go to
    /// disk once durable, oldest first.
    to_page: std::collections::VecDeque<ReadyKey>,
    /// `Delivered` records of one dispatch, journalled together when it
    /// ends (before the lock is let go, so ahead of any removal).
    delivered_log: Vec<Change>,
}

/// One queue. Shared as `Arc<Queue>` by the vhost, the routes snapshot and
/// the deliveries in flight.
#[derive(Debug)]
pub struct Queue {
    me: Weak<Queue>,
    uid: u64,
    log: Option<QueueLog>,
    spec: QueueSpec,
    args: QueueArgs,
    state: Mutex<State>,
    stats: Arc<Stats>,
    /// Woken when the next deadline (TTL, x-expires) may have moved earlier.
    pub(crate) timer: Notify,
    /// Its consumers are behind: publishers to it wait (see `is_behind`).
    behind: AtomicBool,
    /// Woken when `behind` clears.
    caught_up: Notify,
}

/// A queue's counts at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready messages.
    pub ready: usize,
    /// Handed-out messages awaiting settlement.
    pub unacked: usize,
    /// Body bytes of the ready messages.
    pub ready_bytes: u64,
    /// Consumers attached.
    pub consumers: usize,
}

/// One consumer, as listings show it.
#[derive(Clone, Debug)]
pub struct ConsumerInfo {
    /// Broker-wide id.
    pub id: ConsumerId,
    /// The tag its client knows it by.
    pub tag: ConsumerTag,
    /// The connection it belongs to.
    pub owner: ConnectionId,
    /// Deliveries must be settled.
    pub manual_ack: bool,
    /// Maximum unsettled deliveries; 0 is unlimited.
    pub prefetch: u32,
    /// Its priority.
    pub priority: i32,
    /// No other consumer may share the queue.
    pub exclusive: bool,
    /// Deliveries it holds unsettled.
    pub unacked: u32,
}

/// What a settle, cancel or expiry left for the vhost to finish outside the lock.
#[derive(Debug, Default)]
pub struct Aftermath {
    /// Dead letters to route.
    pub dead: Vec<DeadLetter>,
    /// The queue should now be deleted (auto-delete after its last consumer).
    pub delete_queue: bool,
}

impl Queue {
    /// Creates an empty queue that journals nothing.
    pub fn new(spec: QueueSpec, args: QueueArgs) -> Arc<Self> {
        Self::create(spec, args, super::names::next_id(), None)
    }

    /// Creates an empty queue; with a log, persistent messages are recorded.
    pub fn create(spec: QueueSpec, args: QueueArgs, uid: u64, log: Option<QueueLog>) -> Arc<Self> {
        Self::create_with_stats(spec, args, uid, log, Arc::new(Stats::default()))
    }

    /// As `create`, counting expiries and dead letters into `stats`.
    pub fn create_with_stats(
        spec: QueueSpec,
        args: QueueArgs,
        uid: u64,
        log: Option<QueueLog>,
        stats: Arc<Stats>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            uid,
            log,
            spec,
            args,
            state: Mutex::new(State {
                ready: ReadyIndex::default(),
                ready_bytes: 0,
                next_seq: 0,
                unacked: DeliveryMap::default(),
                next_delivery: 1,
                consumers: Vec::new(),
                rr: 0,
                deleted: false,
                had_consumers: false,
                last_used: Instant::now(),
                to_page: std::collections::VecDeque::new(),
                delivered_log: Vec::new(),
            }),
            stats,
            timer: Notify::new(),
            behind: AtomicBool::new(false),
            caught_up: Notify::new(),
        })
    }

    /// This incarnation's id, used by journal records.
    pub fn uid(&self) -> u64 {
        self.uid
    }

    fn record(&self, change: Change) -> Option<Logged> {
        let log = self.log.as_ref()?;
        log.log.record(&log.vhost, change)
    }

    /// Journals a persistent message entering the queue.
    fn log_enqueued(&self, id: u64, message: &Message) -> Option<Logged> {
        if self.log.is_none() || !message.properties().persistent {
            return None;
        }
        self.record(Change::Enqueued {
            queue: self.uid,
            id,
            message: message.clone(),
        })
    }

    /// Journals a message leaving the queue for good.
    fn log_removed(&self, id: u64, entry: &Entry) {
        if let Some(change) = self.removal(id, entry) {
            self.record(change);
        }
    }

    /// The record of a journalled message leaving the queue for good.
    fn removal(&self, id: u64, entry: &Entry) -> Option<Change> {
        let logged = entry.logged?;
        Some(Change::Removed {
            queue: self.uid,
            id,
            segment: logged.segment,
        })
    }

    /// Journals a hand-out, so a restart marks the message redelivered.
    fn log_delivered(&self, id: u64, entry: &Entry) {
        if let Some(change) = self.delivered(id, entry) {
            self.record(change);
        }
    }

    /// The record of a journalled message handed out.
    fn delivered(&self, id: u64, entry: &Entry) -> Option<Change> {
        entry.logged?;
        Some(Change::Delivered {
            queue: self.uid,
            id,
        })
    }

    /// Journals the hand-outs `deliver_to` collected, in one pass through
    /// the journal's lock: a consumer's ack frees a prefetch's worth of
    /// deliveries at once, which took the lock and checked the writer once
    /// per message.
    fn log_delivered_batch(&self, st: &mut State) {
        if let Some(log) = &self.log
            && !st.delivered_log.is_empty()
        {
            log.log.record_all(&log.vhost, &mut st.delivered_log);
            // Kept for the next batch, unless a large one would stay
            // allocated on an idle queue.
            if st.delivered_log.capacity() > MAX_KEPT_DELIVERED_LOG {
                st.delivered_log = Vec::new();
            }
        }
    }

    fn self_arc(&self) -> Arc<Queue> {
        self.me.upgrade().expect("a queue in use is held by an Arc")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock is a broker bug; the state it guards is
        // still structurally valid, so keep serving rather than poisoning
        // every later publish.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its name.
    pub fn name(&self) -> &QueueName {
        &self.spec.name
    }
    /// Its declared shape.
    pub fn spec(&self) -> &QueueSpec {
        &self.spec
    }
    /// Its parsed arguments.
    pub fn args(&self) -> &QueueArgs {
        &self.args
    }

    /// Ready messages.
    pub fn message_count(&self) -> usize {
        self.lock().ready.len()
    }
    /// Lets go of the room its table of unsettled deliveries kept from
    /// its last burst, if none is unsettled now (see `Broker::upkeep`).
    pub fn release_spare(&self) {
        self.lock().unacked.release_spare();
    }
    /// Handed-out messages awaiting settlement.
    pub fn unacked_count(&self) -> usize {
        self.lock().unacked.len()
    }
    /// Body bytes of the ready messages.
    pub fn ready_bytes(&self) -> u64 {
        self.lock().ready_bytes
    }
    /// Ready messages whose bodies are on disk only (walks the queue:
    /// for tests and diagnostics, not for scrapes).
    pub fn paged_count(&self) -> usize {
        self.lock()
            .ready
            .values()
            .filter(|e| e.message.is_none())
            .count()
    }
    /// Consumers attached.
    pub fn consumer_count(&self) -> usize {
        self.lock().consumers.len()
    }
    /// Its depth, unacked, bytes and consumers under one short lock, for
    /// listings and scrapes.
    pub fn depth(&self) -> QueueDepth {
        let st = self.lock();
        QueueDepth {
            ready: st.ready.len(),
            unacked: st.unacked.len(),
            ready_bytes: st.ready_bytes,
            consumers: st.consumers.len(),
        }
    }
    /// Its consumers, for listings.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        self.lock()
            .consumers
            .iter()
            .map(|c| ConsumerInfo {
                id: c.spec.id,
                tag: c.spec.tag.clone(),
                owner: c.spec.owner,
                manual_ack: c.spec.manual_ack,
                prefetch: c.spec.prefetch,
                priority: c.spec.priority,
                exclusive: c.spec.exclusive,
                unacked: c.unacked,
            })
            .collect()
    }
    /// Whether the queue has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    fn rank(&self, priority: Option<u8>) -> u8 {
        match self.args.max_priority {
            None => 0,
            Some(max) => max - priority.unwrap_or(0).min(max),
        }
    }

    fn expiry(&self, message: &Message) -> Option<Instant> {
        let message_ttl = message.properties().ttl_millis();
        // Most messages have no TTL: no clock is read for them (two
        // reads per message per queue otherwise).
        if message_ttl.is_none() && self.args.message_ttl.is_none() {
            return None;
        }
        self.expiry_from(Instant::now(), message.age(), message_ttl)
    }

    /// When a message `age` old at `now` expires. Counted forward from now
    /// rather than back from its arrival, which may precede this process.
    fn expiry_from(
        &self,
        now: Instant,
        age: Duration,
        message_ttl: Option<u64>,
    ) -> Option<Instant> {
        let ttl = match (self.args.message_ttl, message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(now + Duration::from_millis(ttl).saturating_sub(age))
    }

    /// Appends a message, enforces the length limits, and hands it to a
    /// consumer if one has credit.
    pub fn enqueue(&self, message: Message) -> Enqueued {
        let mut out = Enqueued::default();
        let expires_at = self.expiry(&message);
        if expires_at.is_some_and(|t| t <= Instant::now()) {
            // A zero TTL: deliverable only to a consumer that can take it now.
            let mut st = self.lock();
            if st.deleted {
                return out;
            }
            let key = (self.rank(message.properties().priority), st.next_seq);
            let entry = Entry::new(message, None, None);
            st.next_seq += 1;
            self.hand_to_consumer(&mut st, key, entry, &mut out.dead);
            return out;
        }
        let mut st = self.lock();
        if st.deleted {
            return out;
        }
        let size = message.size() as u64;
        if self.args.overflow != Overflow::DropHead && self.would_overflow(&st, size) {
            out.rejected = true;
            if self.args.overflow == Overflow::RejectPublishDlx {
                self.dead_letter(message, DeadReason::MaxLen, &mut out.dead);
            }
            return out;
        }
        let key = (self.rank(message.properties().priority), st.next_seq);
        st.next_seq += 1;
        let logged = self.log_enqueued(key.1, &message);
        out.durable_at = logged.map(|l| l.seq);
        if expires_at.is_none()
            && st.ready.is_empty()
            && self.args.max_length.is_none()
            && self.args.max_length_bytes.is_none()
            && let Some(idx) = self.pick_consumer(&mut st)
        {
            // Nothing waits ahead of it and a consumer has credit: straight
            // to the consumer, as dispatch would, without a trip through
            // the ready index. Queues whose consumers keep up take every
            // message this way.
            self.deliver_to(&mut st, idx, key, Entry::new(message, None, logged));
            self.log_delivered_batch(&mut st);
            return out;
        }
        st.ready_bytes += size;
        if let (Some(_), Some(log)) = (logged, &self.log)
            && !log
                .log
                .memory_window()
                .keeps_body(st.ready.len(), st.ready_bytes)
        {
            st.to_page.push_back(key);
        }
        st.ready
            .insert(key, Entry::new(message, expires_at, logged));
        if self.args.overflow == Overflow::DropHead {
            while self.over_limit(&st) {
                let Some((hk, head)) = st.ready.pop_first() else {
                    break;
                };
                st.ready_bytes -= u64::from(head.size);
                self.discard(hk.1, head, DeadReason::MaxLen, &mut out.dead);
            }
        }
        self.dispatch(&mut st, &mut out.dead);
        self.page_out(&mut st);
        if expires_at.is_some() && st.ready.len() == 1 {
            self.timer.notify_one();
        }
        if st.ready.len() >= BEHIND_AT && !st.consumers.is_empty() {
            // Stored only on the change: every publisher of the queue
            // reads this line.
            if !self.behind.load(Ordering::Relaxed) {
                self.behind.store(true, Ordering::Release);
            }
            out.behind = true;
        }
        out
    }

    /// Its consumers have fallen behind its publishers: `BEHIND_AT`
    /// messages or more wait while consumers are attached, and have not
    /// yet come down to `CAUGHT_UP_AT`.
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire)
    }

    /// One of its consumers belongs to `owner`.
    pub fn has_consumer_of(&self, owner: ConnectionId) -> bool {
        self.lock().consumers.iter().any(|c| c.spec.owner == owner)
    }

    /// Returns once the consumers have caught up (or left).
    pub async fn caught_up(&self) {
        loop {
            let woken = self.caught_up.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.is_behind() {
                return;
            }
            woken.await;
        }
    }

    /// Called wherever ready messages leave or consumers go.
    fn check_caught_up(&self, st: &State) {
        if self.behind.load(Ordering::Relaxed)
            && (st.ready.len() <= CAUGHT_UP_AT || st.consumers.is_empty() || st.deleted)
        {
            self.behind.store(false, Ordering::Release);
            self.caught_up.notify_waiters();
        }
    }

    fn would_overflow(&self, st: &State, incoming: u64) -> bool {
        self.args
            .max_length
            .is_some_and(|m| st.ready.len() as u64 >= m)
            || self
                .args
                .max_length_bytes
                .is_some_and(|m| st.ready_bytes + incoming > m)
    }

    fn over_limit(&self, st: &State) -> bool {
        self.args
            .max_length
            .is_some_and(|m| st.ready.len() as u64 > m)
            || self
                .args
                .max_length_bytes
                .is_some_and(|m| st.ready_bytes > m)
    }

    /// Removes an entry for good: journals it and dead-letters it.
    fn discard(&self, id: u64, entry: Entry, reason: DeadReason, dead: &mut Vec<DeadLetter>) {
        self.log_removed(id, &entry);
        if self.args.dead_letter_exchange.is_some()
            && let Some(message) = self.message_of(&entry)
        {
            self.dead_letter(message, reason, dead);
        }
    }

    /// The entry's message, read back from the journal if paged out.
    fn message_of(&self, entry: &Entry) -> Option<Message> {
        if let Some(m) = &entry.message {
            return Some(m.clone());
        }
        let (logged, log) = (entry.logged?, self.log.as_ref()?);
        match log.log.read(logged.segment, logged.offset) {
            Some(Change::Enqueued { message, .. }) => Some(message),
            _ => {
                tracing::error!(queue = %self.spec.name, segment = logged.segment, offset = logged.offset,
                    "a paged-out message could not be read back from the journal");
                None
            }
        }
    }

    /// Drops the bodies of durable messages beyond the in-memory window.
    fn page_out(&self, st: &mut State) {
        let Some(log) = &self.log else { return };
        if st.to_page.is_empty() {
            return;
        }
        let durable = log.log.durable_position();
        while let Some(key) = st.to_page.front().copied() {
            match st.ready.get_mut(&key) {
                Some(e) if e.logged.is_some_and(|l| l.seq > durable) => break,
                Some(e) => e.message = None,
                None => {}
            }
            st.to_page.pop_front();
        }
    }

    /// Places a zero-TTL message directly, or dead-letters it as expired.
    fn hand_to_consumer(
        &self,
        st: &mut State,
        key: ReadyKey,
        entry: Entry,
        dead: &mut Vec<DeadLetter>,
    ) {
        if st.ready.is_empty()
            && let Some(idx) = self.pick_consumer(st)
        {
            self.deliver_to(st, idx, key, entry);
            self.log_delivered_batch(st);
            return;
        }
        if let Some(message) = entry.message {
            self.dead_letter(message, DeadReason::Expired, dead);
        }
    }

    /// Index of the consumer that gets the next message: the highest
    /// priority level with credit, round-robin within it; with single
    /// active consumer only the first consumer counts.
    fn pick_consumer(&self, st: &mut State) -> Option<usize> {
        if st.consumers.is_empty() {
            return None;
        }
        if self.args.single_active_consumer {
            return st.consumers[0].has_credit().then_some(0);
        }
        let n = st.consumers.len();
        let mut best: Option<(i32, usize)> = None;
        for step in 0..n {
            let i = (st.rr + step) % n;
            let c = &st.consumers[i];
            if c.has_credit() && best.is_none_or(|(p, _)| c.spec.priority > p) {
                best = Some((c.spec.priority, i));
            }
        }
        let (_, i) = best?;
        st.rr = (i + 1) % n;
        Some(i)
    }

    /// Hands one message out. Its `Delivered` record waits in
    /// `st.delivered_log`: the caller journals it (`log_delivered_batch`)
    /// before letting go of the lock.
    fn deliver_to(&self, st: &mut State, idx: usize, key: ReadyKey, mut entry: Entry) {
        let redelivered = entry.deliveries > 0;
        let delivery_count = entry.deliveries;
        entry.deliveries += 1;
        let id = DeliveryId(st.next_delivery);
        st.next_delivery += 1;
        let consumer = &mut st.consumers[idx];
        consumer.unsent += 1;
        let consumer_id = consumer.spec.id;
        let manual_ack = consumer.spec.manual_ack;
        let settle_on_write = consumer.spec.settle_on_write;
        let kept = manual_ack || settle_on_write;
        // An entry that is not kept gives its message up rather than
        // sharing it: in a fan-out, the clone and the entry's drop were two
        // more atomic operations per copy on a count the consumers' threads
        // are decrementing too (over half of `deliver_to`'s samples).
        let message = match entry.message.take_if(|_| !kept) {
            Some(m) => Some(m),
            None => self.message_of(&entry),
        };
        let Some(message) = message else {
            // Unreadable: already logged as an error; it cannot be delivered.
            self.log_removed(key.1, &entry);
            return;
        };
        let consumer = &mut st.consumers[idx];
        let credit = consumer.spec.shared_credit.clone().filter(|_| manual_ack);
        if manual_ack {
            consumer.unacked += 1;
            if let Some(shared) = &credit {
                shared.used.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = consumer.spec.sink.send(Event::Deliver(Delivery {
            consumer: consumer_id,
            queue: self.self_arc(),
            id,
            message,
            redelivered,
            delivery_count,
        }));
        if kept {
            if let Some(change) = self.delivered(key.1, &entry) {
                st.delivered_log.push(change);
            }
            st.unacked.insert(
                id,
                Unacked {
                    key,
                    entry,
                    consumer: Some(consumer_id),
                    credit,
                    manual: manual_ack,
                },
            );
        } else {
            self.log_removed(key.1, &entry);
        }
    }

    /// Hands ready messages to consumers while any has credit.
    fn dispatch(&self, st: &mut State, dead: &mut Vec<DeadLetter>) {
        self.dispatch_ready(st, dead);
        self.log_delivered_batch(st);
        self.check_caught_up(st);
    }

    fn dispatch_ready(&self, st: &mut State, dead: &mut Vec<DeadLetter>) {
        if st.consumers.is_empty() {
            return;
        }
        // Read once, and only when a message has a TTL.
        let mut now = None;
        while !st.ready.is_empty() {
            let Some(idx) = self.pick_consumer(st) else {
                return;
            };
            let Some((key, entry)) = st.ready.pop_first() else {
                return;
            };
            st.ready_bytes -= u64::from(entry.size);
            if entry
                .expires_at
                .is_some_and(|t| t <= *now.get_or_insert_with(Instant::now))
            {
                self.discard(key.1, entry, DeadReason::Expired, dead);
                continue;
            }
            self.deliver_to(st, idx, key, entry);
        }
    }

    /// Attaches a consumer and starts delivering to it.
    pub fn consume(&self, spec: ConsumerSpec) -> CoreResult<Aftermath> {
        let mut st = self.lock();
        if st.deleted {
            return Err(CoreError::NotFound(format!(
                "no queue '{}'",
                self.spec.name
            )));
        }
        if spec.exclusive && !st.consumers.is_empty()
            || st.consumers.iter().any(|c| c.spec.exclusive)
        {
            return Err(CoreError::AccessRefused(format!(
                "queue '{}' in exclusive use",
                self.spec.name
            )));
        }
        st.consumers.push(Consumer {
            spec,
            unacked: 0,
            unsent: 0,
        });
        st.had_consumers = true;
        st.last_used = Instant::now();
        let mut after = Aftermath::default();
        self.dispatch(&mut st, &mut after.dead);
        Ok(after)
    }

    /// Detaches a consumer. Its unsettled deliveries stay with its owner
    /// until settled or the owner goes.
    pub fn cancel(&self, id: ConsumerId) -> Aftermath {
        self.detach(id, false)
    }

    /// Detaches a consumer whose owner is going away and puts back every
    /// delivery still outstanding to it, including those not yet written
    /// to its socket, so they are ready again before the owner is told
    /// the channel or connection is closed.
    pub fn cancel_and_requeue(&self, id: ConsumerId) -> Aftermath {
        self.detach(id, true)
    }

    fn detach(&self, id: ConsumerId, requeue: bool) -> Aftermath {
        let mut st = self.lock();
        let mut after = Aftermath::default();
        let before = st.consumers.len();
        st.consumers.retain(|c| c.spec.id != id);
        if requeue && !st.deleted {
            let ids: Vec<DeliveryId> = st
                .unacked
                .iter()
                .filter(|(_, u)| u.consumer == Some(id))
                .map(|(k, _)| k)
                .collect();
            for i in ids {
                if let Some(u) = st.unacked.remove(&i) {
                    if let Some(shared) = &u.credit {
                        let _ =
                            shared
                                .used
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                                    Some(v.saturating_sub(1))
                                });
                    }
                    st.ready_bytes += u64::from(u.entry.size);
                    st.ready.insert(u.key, u.entry);
                }
            }
        }
        if st.consumers.len() != before {
            st.last_used = Instant::now();
            if st.consumers.is_empty() && self.spec.auto_delete && st.had_consumers {
                after.delete_queue = true;
            } else {
                // With single active consumer the next in line takes over.
                self.dispatch(&mut st, &mut after.dead);
            }
            if self.args.expires.is_some() {
                self.timer.notify_one();
            }
        }
        self.check_caught_up(&st);
        after
    }

    /// Reports that `n` deliveries to a consumer reached its socket, which
    /// reopens its send window.
    pub fn sent(&self, consumer: ConsumerId, n: u32) -> Aftermath {
        let mut st = self.lock();
        let mut after = Aftermath::default();
        if let Some(c) = st.consumers.iter_mut().find(|c| c.spec.id == consumer) {
            let was_full = c.unsent >= SEND_WINDOW;
            c.unsent = c.unsent.saturating_sub(n);
            if was_full {
                self.dispatch(&mut st, &mut after.dead);
            }
        }
        after
    }

    /// Settles auto-ack deliveries that reached the socket.
    pub fn written(&self, ids: &[DeliveryId]) -> Aftermath {
        self.settle(ids, Settle::Ack)
    }

    /// Changes a consumer's prefetch (AMQP basic.qos after consume).
    pub fn set_prefetch(&self, consumer: ConsumerId, prefetch: u32) -> Aftermath {
        let mut st = self.lock();
        if let Some(c) = st.consumers.iter_mut().find(|c| c.spec.id == consumer) {
            c.spec.prefetch = prefetch;
        }
        let mut after = Aftermath::default();
        self.dispatch(&mut st, &mut after.dead);
        after
    }

    /// Tries delivering again: credit shared with consumers of other
    /// queues may have been returned.
    pub fn kick(&self) -> Aftermath {
        let mut st = self.lock();
        let mut after = Aftermath::default();
        self.dispatch(&mut st, &mut after.dead);
        after
    }

    /// Settles handed-out messages. Unknown ids are ignored here; adapters
    /// check their own delivery tags before calling.
    pub fn settle(&self, ids: &[DeliveryId], how: Settle) -> Aftermath {
        let mut st = self.lock();
        let mut after = Aftermath::default();
        // Journalled together: one pass through the journal's lock for a
        // multiple ack rather than one per message.
        let mut acked = Vec::new();
        for id in ids {
            let Some(u) = st.unacked.remove(id) else {
                continue;
            };
            if let Some(cid) = u.consumer.filter(|_| u.manual)
                && let Some(c) = st.consumers.iter_mut().find(|c| c.spec.id == cid)
            {
                c.unacked = c.unacked.saturating_sub(1);
            }
            if let Some(shared) = &u.credit {
                let _ = shared
                    .used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        Some(v.saturating_sub(1))
                    });
            }
            if st.deleted {
                continue;
            }
            match how {
                Settle::Ack => acked.extend(self.removal(u.key.1, &u.entry)),
                Settle::Requeue => {
                    st.ready_bytes += u64::from(u.entry.size);
                    st.ready.insert(u.key, u.entry);
                }
                Settle::Discard => {
                    self.discard(u.key.1, u.entry, DeadReason::Rejected, &mut after.dead)
                }
            }
        }
        if let Some(log) = self.log.as_ref().filter(|_| !acked.is_empty()) {
            log.log.record_all(&log.vhost, &mut acked);
        }
        if !st.deleted {
            self.dispatch(&mut st, &mut after.dead);
        }
        after
    }

    /// Takes one message for a client that polls (AMQP basic.get).
    pub fn get(&self, manual_ack: bool) -> (Option<Got>, Aftermath) {
        let mut st = self.lock();
        let mut after = Aftermath::default();
        st.last_used = Instant::now();
        let now = Instant::now();
        while let Some((key, mut entry)) = st.ready.pop_first() {
            st.ready_bytes -= u64::from(entry.size);
            if entry.expires_at.is_some_and(|t| t <= now) {
                self.discard(key.1, entry, DeadReason::Expired, &mut after.dead);
                continue;
            }
            let Some(message) = self.message_of(&entry) else {
                self.log_removed(key.1, &entry);
                continue;
            };
            let redelivered = entry.deliveries > 0;
            entry.deliveries += 1;
            let id = DeliveryId(st.next_delivery);
            st.next_delivery += 1;
            if manual_ack {
                self.log_delivered(key.1, &entry);
                st.unacked.insert(
                    id,
                    Unacked {
                        key,
                        entry,
                        consumer: None,
                        credit: None,
                        manual: true,
                    },
                );
            } else {
                self.log_removed(key.1, &entry);
            }
            let remaining = st.ready.len();
            self.check_caught_up(&st);
            return (
                Some(Got {
                    id,
                    message,
                    redelivered,
                    remaining,
                }),
                after,
            );
        }
        (None, after)
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> usize {
        let mut st = self.lock();
        // One record per journalled message rather than a purge marker:
        // delivered-but-unsettled messages survive a purge.
        for (key, entry) in st.ready.iter() {
            self.log_removed(key.1, entry);
        }
        let n = st.ready.len();
        st.ready.clear();
        st.ready_bytes = 0;
        self.check_caught_up(&st);
        n
    }

    /// Checks the delete conditions; the vhost then calls `mark_deleted`.
    pub fn check_delete(&self, if_unused: bool, if_empty: bool) -> CoreResult<()> {
        let st = self.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{}' in use",
                self.spec.name
            )));
        }
        if if_empty && !st.ready.is_empty() {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{}' not empty",
                self.spec.name
            )));
        }
        Ok(())
    }

    /// Marks the queue deleted, tells its consumers, and returns how many
    /// ready messages it held.
    pub fn mark_deleted(&self) -> usize {
        let mut st = self.lock();
        if st.deleted {
            return 0;
        }
        st.deleted = true;
        // Journalled messages leave with the queue, so their segments can
        // be reclaimed.
        for (key, entry) in st.ready.iter() {
            self.log_removed(key.1, entry);
        }
        for u in st.unacked.values() {
            self.log_removed(u.key.1, &u.entry);
        }
        let n = st.ready.len();
        st.ready.clear();
        st.ready_bytes = 0;
        st.unacked.clear();
        for c in st.consumers.drain(..) {
            let _ = c.spec.sink.send(Event::ConsumerCancelled(c.spec.id));
        }
        self.check_caught_up(&st);
        drop(st);
        self.timer.notify_one();
        n
    }

    /// Puts back messages recovered from the journal, in their order.
    pub fn restore(&self, messages: impl IntoIterator<Item = Restored>) {
        let mut st = self.lock();
        let now = Instant::now();
        for m in messages {
            let key = (self.rank(m.priority), m.id);
            st.next_seq = st.next_seq.max(m.id + 1);
            st.ready_bytes += u64::from(m.size);
            let expires_at = self.expiry_from(now, m.age, m.ttl);
            let entry = Entry {
                message: m.message,
                size: m.size,
                expires_at,
                deliveries: m.deliveries,
                logged: Some(m.logged),
            };
            st.ready.insert(key, entry);
        }
        drop(st);
        self.timer.notify_one();
    }

    /// Marks the queue as used now (a redeclare counts, for x-expires).
    pub fn touch(&self) {
        self.lock().last_used = Instant::now();
        self.timer.notify_one();
    }

    /// Dead-letters expired messages at the head and reports the next
    /// deadline, and whether x-expires says the queue should go.
    pub fn expire(&self, now: Instant) -> (Aftermath, Option<Instant>) {
        let mut st = self.lock();
        let mut after = Aftermath::default();
        if st.deleted {
            return (after, None);
        }
        // RabbitMQ expires only from the head: a long-TTL message at the
        // head keeps shorter-lived ones behind it until it goes.
        while let Some(entry) = st.ready.first().map(|(_, e)| e) {
            if entry.expires_at.is_some_and(|t| t <= now) {
                let (key, entry) = st.ready.pop_first().expect("head exists: just peeked");
                st.ready_bytes -= u64::from(entry.size);
                self.discard(key.1, entry, DeadReason::Expired, &mut after.dead);
            } else {
                break;
            }
        }
        self.check_caught_up(&st);
        let mut next = st.ready.first().and_then(|(_, e)| e.expires_at);
        if let Some(ms) = self.args.expires
            && st.consumers.is_empty()
        {
            let at = st.last_used + Duration::from_millis(ms);
            if at <= now {
                after.delete_queue = true;
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (after, next)
    }

    /// Requeues every delivery handed to the given consumers' owner that is
    /// still unsettled (used when a channel or connection goes away).
    pub fn requeue_all(&self, ids: &[DeliveryId]) -> Aftermath {
        self.settle(ids, Settle::Requeue)
    }

    fn dead_letter(&self, message: Message, reason: DeadReason, dead: &mut Vec<DeadLetter>) {
        if reason == DeadReason::Expired {
            self.stats.expired.inc();
        }
        let Some(dlx) = &self.args.dead_letter_exchange else {
            return;
        };
        self.stats.dead_lettered(reason).inc();
        let mut props = message.properties().clone();
        let original_expiration = props.expiration.take();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let queue = self.spec.name.as_str();
        let mut deaths = match props.headers.remove("x-death") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let same = |v: &Value| {
            matches!(v, Value::Table(t)
                if t.get("queue").and_then(Value::as_str) == Some(queue)
                && t.get("reason").and_then(Value::as_str) == Some(reason.as_str()))
        };
        let record = match deaths.iter().position(same) {
            Some(i) => {
                let Value::Table(mut t) = deaths.remove(i) else {
                    unreachable!("matched a table")
                };
                let count = t.get("count").and_then(Value::as_i64).unwrap_or(0) + 1;
                t.insert("count".into(), Value::I64(count));
                t.insert("time".into(), Value::Timestamp(now));
                t
            }
            None => {
                let mut t = Headers::new();
                t.insert("count".into(), Value::I64(1));
                t.insert("reason".into(), Value::Str(reason.as_str().into()));
                t.insert("queue".into(), Value::Str(queue.into()));
                t.insert("time".into(), Value::Timestamp(now));
                t.insert(
                    "exchange".into(),
                    Value::Str(message.exchange().as_str().into()),
                );
                t.insert(
                    "routing-keys".into(),
                    Value::Array(vec![Value::Str(message.routing_key().as_str().into())]),
                );
                if let Some(exp) = original_expiration {
                    t.insert("original-expiration".into(), Value::Str(exp));
                }
                t
            }
        };
        deaths.insert(0, Value::Table(record));
        props.headers.insert("x-death".into(), Value::Array(deaths));
        for (key, value) in [
            ("x-first-death-reason", reason.as_str()),
            ("x-first-death-queue", queue),
            ("x-first-death-exchange", message.exchange().as_str()),
        ] {
            props
                .headers
                .entry(key.into())
                .or_insert_with(|| Value::Str(value.into()));
        }
        props.headers.insert(
            "x-last-death-reason".into(),
            Value::Str(reason.as_str().into()),
        );
        props
            .headers
            .insert("x-last-death-queue".into(), Value::Str(queue.into()));
        props.headers.insert(
            "x-last-death-exchange".into(),
            Value::Str(message.exchange().as_str().into()),
        );
        let key = self
            .args
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| message.routing_key().clone());
        dead.push(DeadLetter {
            exchange: dlx.clone(),
            message: message.rerouted(dlx.clone(), key, props),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Properties;
    use crate::core::names::next_id;
    use bytes::Bytes;

    fn queue(args: &[(&str, Value)]) -> Arc<Queue> {
        let arguments: Headers = args
            .iter()
            .map(|(k, v)| (k.to_string().into(), v.clone()))
            .collect();
        let parsed = QueueArgs::parse(&arguments).expect("valid arguments");
        Queue::new(
            QueueSpec {
                name: "q".into(),
                durable: false,
                exclusive: None,
                auto_delete: false,
                arguments,
            },
            parsed,
        )
    }

    fn msg(body: &str) -> Message {
        msg_with(body, Properties::default())
    }

    fn msg_with(body: &str, properties: Properties) -> Message {
        Message::new(
            "x".into(),
            "k".into(),
            properties,
            Bytes::from(body.to_owned()),
        )
    }

    fn consumer(
        prefetch: u32,
        priority: i32,
    ) -> (ConsumerSpec, crate::core::event_channel::EventStream) {
        let (sink, rx) = crate::core::event_channel::channel();
        let spec = ConsumerSpec {
            id: ConsumerId(next_id()),
            tag: "c".into(),
            manual_ack: true,
            settle_on_write: false,
            prefetch,
            priority,
            exclusive: false,
            owner: ConnectionId(1),
            shared_credit: None,
            sink,
        };
        (spec, rx)
    }

    fn drain(rx: &mut crate::core::event_channel::EventStream) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Ok(Event::Deliver(d)) = rx.try_recv() {
            out.push(d);
        }
        out
    }

    fn body(d: &Delivery) -> &str {
        std::str::from_utf8(d.message.body()).expect("utf8")
    }

    fn bodies_via_get(q: &Queue) -> Vec<String> {
        let mut out = Vec::new();
        while let (Some(got), _) = q.get(false) {
            out.push(String::from_utf8(got.message.body().to_vec()).expect("utf8"));
        }
        out
    }

    #[test]
    fn requeued_messages_return_to_their_original_position() {
        let q = queue(&[]);
        for b in ["a", "b", "c", "d"] {
            q.enqueue(msg(b));
        }
        let (spec, mut rx) = consumer(2, 0);
        let cid = spec.id;
        q.consume(spec).expect("consume");
        let first = drain(&mut rx);
        assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["a", "b"]);
        q.cancel(cid);
        // requeue b then a: both go back ahead of c and d, in original order
        q.settle(&[first[1].id], Settle::Requeue);
        q.settle(&[first[0].id], Settle::Requeue);
        let (got, _) = q.get(true);
        let got = got.expect("a message");
        assert_eq!(got.message.body(), "a");
        assert!(got.redelivered);
        assert_eq!(bodies_via_get(&q), ["b", "c", "d"]);
    }

    #[test]
    fn an_idle_queue_gives_back_the_room_its_last_burst_of_deliveries_took() {
        let q = queue(&[]);
        let (spec, mut rx) = consumer(5000, 0);
        let me = spec.id;
        q.consume(spec).expect("consume");
        for i in 0..1000 {
            q.enqueue(msg(&i.to_string()));
        }
        let ids: Vec<_> = drain(&mut rx).iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), 1000);
        let room = || q.lock().unacked.capacity();
        q.release_spare();
        assert!(room() >= 1000, "in use: kept");
        q.sent(me, 1000);
        q.settle(&ids, Settle::Ack);
        assert_eq!(q.unacked_count(), 0);
        assert!(room() >= 1000, "settled: kept for the next burst");
        q.release_spare();
        assert_eq!(room(), 0);
    }

    #[test]
    fn prefetch_limits_unacked_and_acks_release_more() {
        let q = queue(&[]);
        for i in 0..5 {
            q.enqueue(msg(&i.to_string()));
        }
        let (spec, mut rx) = consumer(2, 0);
        q.consume(spec).expect("consume");
        let got = drain(&mut rx);
        assert_eq!(got.len(), 2);
        q.settle(&[got[0].id], Settle::Ack);
        let more = drain(&mut rx);
        assert_eq!(more.iter().map(body).collect::<Vec<_>>(), ["2"]);
        assert_eq!(q.message_count(), 2);
        assert_eq!(q.unacked_count(), 2);
    }

    #[test]
    fn consumers_fall_behind_at_a_backlog_and_catch_up_when_it_drains() {
        let q = queue(&[]);
        // No consumer: a backlog is storage, not consumers falling behind.
        for i in 0..BEHIND_AT {
            assert!(!q.enqueue(msg(&i.to_string())).behind);
        }
        assert!(!q.is_behind());
        let (spec, mut rx) = consumer(100, 0);
        let me = spec.id;
        q.consume(spec).expect("consume");
        // Reads, writes and acks what the consumer was sent.
        let mut take = |q: &Queue| {
            let ids: Vec<_> = drain(&mut rx).iter().map(|d| d.id).collect();
            q.sent(me, ids.len() as u32);
            q.settle(&ids, Settle::Ack);
            ids.len()
        };
        // It took the first 100 (its prefetch); behind from BEHIND_AT ready.
        for _ in 1..100 {
            assert!(!q.enqueue(msg("more")).behind);
        }
        assert!(q.enqueue(msg("more")).behind, "a consumer is attached now");
        assert_eq!(q.message_count(), BEHIND_AT);
        assert!(q.is_behind());
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut waiting = std::pin::pin!(q.caught_up());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        // Acks that leave more than CAUGHT_UP_AT ready keep it behind.
        let mut acked = 0;
        while q.message_count() > CAUGHT_UP_AT + 100 {
            let n = take(&q);
            assert!(n > 0, "behind with nothing to ack");
            acked += n;
            assert!(q.is_behind(), "{} ready", q.message_count());
        }
        assert!(!woken.0.load(Ordering::SeqCst));
        while q.is_behind() {
            let n = take(&q);
            assert!(n > 0, "behind with nothing to ack");
            acked += n;
        }
        assert!(q.message_count() <= CAUGHT_UP_AT);
        assert!(acked >= BEHIND_AT - CAUGHT_UP_AT);
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
    }

    /// Records that it was woken.
    #[derive(Default)]
    struct Woken(AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_consumer_leaving_or_a_purge_ends_falling_behind() {
        let q = queue(&[]);
        let (spec, _rx) = consumer(1, 0);
        let id = spec.id;
        q.consume(spec).expect("consume");
        for i in 0..=BEHIND_AT {
            q.enqueue(msg(&i.to_string()));
        }
        assert!(q.is_behind());
        q.cancel(id);
        assert!(!q.is_behind(), "no consumer is left to wait for");
        let (spec, _rx) = consumer(1, 0);
        q.consume(spec).expect("consume");
        q.enqueue(msg("again"));
        assert!(q.is_behind());
        q.purge();
        assert!(!q.is_behind());
    }

    #[test]
    fn higher_priority_consumers_are_served_first_and_round_robin_within_a_level() {
        let q = queue(&[]);
        let (lo, mut lo_rx) = consumer(0, 0);
        let (hi1, mut hi1_rx) = consumer(1, 5);
        let (hi2, mut hi2_rx) = consumer(1, 5);
        q.consume(lo).expect("consume");
        q.consume(hi1).expect("consume");
        q.consume(hi2).expect("consume");
        for b in ["a", "b", "c"] {
            q.enqueue(msg(b));
        }
        assert_eq!(drain(&mut hi1_rx).len(), 1);
        assert_eq!(drain(&mut hi2_rx).len(), 1);
        // both high-priority consumers are full: the low one takes the rest
        assert_eq!(
            drain(&mut lo_rx).iter().map(body).collect::<Vec<_>>(),
            ["c"]
        );
    }

    #[test]
    fn priority_queue_orders_by_priority_then_arrival() {
        let q = queue(&[("x-max-priority", Value::U8(5))]);
        let p = |n: u8| Properties {
            priority: Some(n),
            ..Default::default()
        };
        q.enqueue(msg_with("low", p(1)));
        q.enqueue(msg_with("high", p(9))); // above max: treated as 5
        q.enqueue(msg_with("none", Properties::default()));
        q.enqueue(msg_with("mid", p(3)));
        q.enqueue(msg_with("high2", p(5)));
        assert_eq!(bodies_via_get(&q), ["high", "high2", "mid", "low", "none"]);
    }

    #[test]
    fn max_length_drops_the_head_and_dead_letters_it() {
        let q = queue(&[
            ("x-max-length", Value::I32(2)),
            ("x-dead-letter-exchange", Value::Str("dlx".into())),
        ]);
        q.enqueue(msg("a"));
        q.enqueue(msg("b"));
        let out = q.enqueue(msg("c"));
        assert!(!out.rejected);
        assert_eq!(out.dead.len(), 1);
        let dead = &out.dead[0];
        assert_eq!(dead.exchange.as_str(), "dlx");
        assert_eq!(dead.message.body(), "a");
        let headers = &dead.message.properties().headers;
        assert_eq!(
            headers.get("x-first-death-reason"),
            Some(&Value::Str("maxlen".into()))
        );
        assert_eq!(bodies_via_get(&q), ["b", "c"]);
    }

    #[test]
    fn reject_publish_refuses_new_messages_when_full() {
        let q = queue(&[
            ("x-max-length-bytes", Value::I64(3)),
            ("x-overflow", Value::Str("reject-publish".into())),
        ]);
        assert!(!q.enqueue(msg("ab")).rejected);
        assert!(q.enqueue(msg("cd")).rejected);
        assert!(!q.enqueue(msg("e")).rejected);
        assert_eq!(bodies_via_get(&q), ["ab", "e"]);
    }

    #[test]
    fn rejection_dead_letters_with_x_death_counted_per_queue_and_reason() {
        let q = queue(&[
            ("x-dead-letter-exchange", Value::Str("dlx".into())),
            ("x-dead-letter-routing-key", Value::Str("dead".into())),
        ]);
        q.enqueue(msg_with(
            "m",
            Properties {
                expiration: Some("60000".into()),
                ..Default::default()
            },
        ));
        let (got, _) = q.get(true);
        let after = q.settle(&[got.expect("message").id], Settle::Discard);
        let dead = &after.dead[0];
        assert_eq!(dead.message.routing_key().as_str(), "dead");
        assert_eq!(
            dead.message.properties().expiration,
            None,
            "expiration is moved into x-death"
        );
        let Some(Value::Array(deaths)) = dead.message.properties().headers.get("x-death") else {
            panic!("x-death is an array")
        };
        let Value::Table(d) = &deaths[0] else {
            panic!("x-death entries are tables")
        };
        assert_eq!(d.get("count"), Some(&Value::I64(1)));
        assert_eq!(d.get("reason"), Some(&Value::Str("rejected".into())));
        assert_eq!(d.get("queue"), Some(&Value::Str("q".into())));
        assert_eq!(d.get("exchange"), Some(&Value::Str("x".into())));
        assert_eq!(
            d.get("routing-keys"),
            Some(&Value::Array(vec![Value::Str("k".into())]))
        );
        assert_eq!(
            d.get("original-expiration"),
            Some(&Value::Str("60000".into()))
        );
        // dying again in the same queue for the same reason bumps the count
        q.enqueue(dead.message.clone());
        let (got, _) = q.get(true);
        let after = q.settle(&[got.expect("message").id], Settle::Discard);
        let Some(Value::Array(deaths)) = after.dead[0].message.properties().headers.get("x-death")
        else {
            panic!("x-death is an array")
        };
        assert_eq!(deaths.len(), 1);
        let Value::Table(d) = &deaths[0] else {
            panic!("table")
        };
        assert_eq!(d.get("count"), Some(&Value::I64(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_messages_at_the_head() {
        let q = queue(&[
            ("x-message-ttl", Value::I32(1000)),
            ("x-dead-letter-exchange", Value::Str("dlx".into())),
        ]);
        q.enqueue(msg("old"));
        tokio::time::advance(Duration::from_millis(600)).await;
        q.enqueue(msg("new"));
        tokio::time::advance(Duration::from_millis(500)).await;
        let (after, next) = q.expire(Instant::now());
        assert_eq!(after.dead.len(), 1);
        assert_eq!(after.dead[0].message.body(), "old");
        assert_eq!(next, Some(Instant::now() + Duration::from_millis(500)));
        assert_eq!(bodies_via_get(&q), ["new"]);
    }

    #[test]
    fn single_active_consumer_gets_everything_until_it_leaves() {
        let q = queue(&[("x-single-active-consumer", Value::Bool(true))]);
        let (a, mut a_rx) = consumer(0, 0);
        let (b, mut b_rx) = consumer(0, 0);
        let a_id = a.id;
        q.consume(a).expect("consume");
        q.consume(b).expect("consume");
        q.enqueue(msg("1"));
        q.enqueue(msg("2"));
        assert_eq!(drain(&mut a_rx).len(), 2);
        assert!(drain(&mut b_rx).is_empty());
        q.cancel(a_id);
        q.enqueue(msg("3"));
        assert_eq!(drain(&mut b_rx).iter().map(body).collect::<Vec<_>>(), ["3"]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (k, v) in [
            ("x-max-length", Value::I32(-1)),
            ("x-overflow", Value::Str("explode".into())),
            ("x-max-priority", Value::I32(300)),
            ("x-expires", Value::I32(0)),
            ("x-message-ttl", Value::Str("soon".into())),
        ] {
            let args: Headers = [(k.to_string().into(), v)].into_iter().collect();
            assert!(QueueArgs::parse(&args).is_err(), "{k} must be refused");
        }
    }
}

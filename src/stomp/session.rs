//! One STOMP connection's protocol state, sans-IO: frames and core events
//! in, encoded frames out. connection.rs owns the socket and the clocks.
//!
//! Subscriptions, acknowledgements and the queues they use are in
//! subscription.rs; this file has the connection's life (CONNECT, heart-beat
//! negotiation, DISCONNECT, ERROR), SEND, transactions and receipts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::codec::{self, Command, Frame, StompCodec, Version};
use super::destination::Destination;
use super::error::{self as stomp_error, StompError};
use super::properties::{self, epoch_millis};
use super::subscription::{Outstanding, Subscription, TempQueue};
use crate::core::change::LogPosition;
use crate::core::names::IdMap;
use crate::core::publisher_flow::PublisherFlow;
use crate::core::queue::Queue;
use crate::core::{
    Access, Broker, ConnectionId, ConnectionInfo, ConsumerId, DeliveryId, Event, EventSink,
    LaneInfo, Message, Protocol, Registration, Settle, User, VHost, WriteCache, detach_body,
};

/// Heart-beat intervals below this are raised to it, so that a client
/// cannot make the broker write or watch the socket every millisecond.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Heart-beat intervals above this are lowered to it (a day is "rarely").
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(24 * 3600);
/// Transactions one connection may have open at once.
pub const MAX_TRANSACTIONS: usize = 64;
/// Frames one transaction may hold before COMMIT.
pub const MAX_TRANSACTION_FRAMES: usize = 10_000;
/// Message bytes one transaction may hold before COMMIT.
pub const MAX_TRANSACTION_BYTES: usize = 64 << 20;

/// What the adapter needs to know beyond the broker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Credentials for a CONNECT without `login` (RabbitMQ's
    /// `stomp.default_user`): guest, who may only log in over loopback.
    /// `None` refuses such clients.
    pub default_login: Option<(String, String)>,
    /// The vhost when `host` names none that exists.
    pub default_vhost: String,
    /// Bounds on frames.
    pub limits: codec::Limits,
    /// Largest SEND body accepted.
    pub max_message_bytes: usize,
}

impl Settings {
    /// The settings for a broker's limits.
    pub fn for_broker(broker: &Broker) -> Settings {
        let max = broker.limits.max_message_bytes;
        Settings {
            default_login: Some(("guest".into(), "guest".into())),
            default_vhost: "/".into(),
            limits: codec::Limits {
                // A whole message plus room for its headers.
                max_frame_bytes: max.saturating_add(256 << 10),
                ..codec::Limits::default()
            },
            max_message_bytes: max,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitConnect,
    Open,
    /// The broker is shutting down: receipts still owed go out, then ERROR.
    Closing,
    /// Nothing more is read; the socket closes once the output is written.
    Done,
}

/// Negotiated heart-beating, from the server's point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Write at least this often (an EOL when there is nothing else).
    pub send: Option<Duration>,
    /// Expect the client to write at least this often.
    pub receive: Option<Duration>,
}

/// A receipt owed to the client, in frame order.
#[derive(Debug)]
struct Receipt {
    /// `None` for a DISCONNECT that asked for none.
    id: Option<String>,
    /// The journal position that must be durable first.
    at: Option<LogPosition>,
    /// The connection closes after it (DISCONNECT).
    close: bool,
}

/// One piece of work an open transaction holds until COMMIT.
#[derive(Debug)]
pub(super) enum TxOp {
    Publish(Message),
    Settle(Vec<u64>, Settle),
}

#[derive(Debug, Default)]
pub(super) struct Transaction {
    pub(super) ops: Vec<TxOp>,
    pub(super) bytes: usize,
}

/// One STOMP connection's protocol state.
#[derive(Debug)]
pub struct Session {
    pub(super) broker: Arc<Broker>,
    settings: Arc<Settings>,
    peer: SocketAddr,
    pub(super) conn_id: ConnectionId,
    pub(super) session_id: String,
    stage: Stage,
    pub(super) version: Version,
    heartbeat: Heartbeat,
    user: Option<User>,
    pub(super) vhost: Option<Arc<VHost>>,
    /// CONNECT's `client-id` (ActiveMQ durable subscriptions are scoped by it).
    pub(super) client_id: String,
    pub(super) events: EventSink,
    encoder: StompCodec,
    pub(super) subs: IdMap<ConsumerId, Subscription>,
    /// Subscription ids (or, for a 1.0 SUBSCRIBE without one, destinations).
    pub(super) sub_keys: HashMap<String, ConsumerId>,
    /// Deliveries awaiting ACK / NACK, by the tag in their message-id.
    pub(super) outstanding: BTreeMap<u64, Outstanding>,
    pub(super) next_tag: u64,
    pub(super) transactions: HashMap<String, Transaction>,
    pub(super) temp_queues: HashMap<String, TempQueue>,
    /// `/queue/` destinations this connection declared with explicit headers.
    pub(super) declared: HashSet<String>,
    receipts: VecDeque<Receipt>,
    durable: LogPosition,
    /// Deliveries written this round, reported to their queues after the
    /// write so their send windows reopen.
    sent: IdMap<ConsumerId, Sent>,
    /// The connection's entry in the broker's registry, once logged in.
    registration: Option<Registration>,
    /// Subscriptions last reported to the registry.
    listed_subs: usize,
    write_allowed: WriteCache,
    /// Queues this connection's SENDs found behind (core/publisher_flow.rs).
    flow: PublisherFlow,
    /// A subscription ended since the connection last looked: deliveries
    /// made to it may wait among the events (connection.rs, `decode_input`).
    pub(super) unsubscribed: bool,
}

/// Deliveries written for one consumer since the last socket write.
#[derive(Debug)]
struct Sent {
    queue: Arc<Queue>,
    n: u32,
    /// Auto-ack deliveries among them, settled by the write.
    settled: Vec<DeliveryId>,
}

/// What a frame handler asks of the receipt, if the frame wants one.
type Handled = Result<Option<LogPosition>, StompError>;

impl Session {
    /// A session for a freshly accepted socket.
    pub fn new(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: SocketAddr,
        events: EventSink,
    ) -> Session {
        let conn_id = ConnectionId(crate::core::next_id());
        Session {
            broker,
            settings,
            peer,
            conn_id,
            session_id: session_id(conn_id),
            stage: Stage::AwaitConnect,
            version: Version::V1_0,
            heartbeat: Heartbeat::default(),
            user: None,
            vhost: None,
            client_id: String::new(),
            events,
            encoder: StompCodec::default(),
            subs: IdMap::default(),
            sub_keys: HashMap::new(),
            outstanding: BTreeMap::new(),
            next_tag: 1,
            transactions: HashMap::new(),
            temp_queues: HashMap::new(),
            declared: HashSet::new(),
            receipts: VecDeque::new(),
            unsubscribed: false,
            durable: 0,
            sent: IdMap::default(),
            registration: None,
            listed_subs: 0,
            flow: PublisherFlow::default(),
            write_allowed: WriteCache::default(),
        }
    }

    /// The version whose escaping the decoder must use for the next frame.
    pub fn version(&self) -> Version {
        self.version
    }
    /// The negotiated heart-beats (none before CONNECTED).
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat
    }
    /// CONNECT has been answered with CONNECTED.
    pub fn is_connected(&self) -> bool {
        matches!(self.stage, Stage::Open | Stage::Closing)
    }
    /// Queues this connection's SENDs found behind.
    pub fn flow(&mut self) -> &mut PublisherFlow {
        &mut self.flow
    }
    /// More frames are welcome.
    pub fn is_reading(&self) -> bool {
        matches!(self.stage, Stage::AwaitConnect | Stage::Open)
    }
    /// The socket can be closed once the output is written.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }
    /// Whether a subscription ended since the last call.
    pub fn take_unsubscribed(&mut self) -> bool {
        std::mem::take(&mut self.unsubscribed)
    }
    /// The authenticated user, for logs.
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }
    /// The vhost, for logs.
    pub fn vhost_name(&self) -> Option<&str> {
        self.vhost.as_ref().map(|v| v.name().as_str())
    }

    pub(super) fn vhost(&self) -> Arc<VHost> {
        self.vhost
            .clone()
            .expect("frames past CONNECT run on an open session")
    }

    /// Handles one client frame.
    pub fn on_frame(&mut self, mut frame: Frame, out: &mut BytesMut) {
        if !self.is_reading() {
            return;
        }
        if self.version == Version::V1_0 && self.stage == Stage::Open {
            trim_values(&mut frame);
        }
        let receipt = frame.header("receipt").map(str::to_owned);
        let command = frame.command;
        let result: Handled = match (self.stage, command) {
            (Stage::AwaitConnect, Command::Connect | Command::Stomp) => {
                self.on_connect(frame, out).map(|()| None)
            }
            (Stage::AwaitConnect, other) => Err(StompError::new(
                "Illegal command",
                format!("{other} before CONNECT: log in with CONNECT first"),
            )),
            (_, Command::Connect | Command::Stomp) => Err(StompError::new(
                "Illegal command",
                "the connection is already established",
            )),
            (_, Command::Disconnect) => {
                self.release();
                self.receipts.push_back(Receipt {
                    id: receipt,
                    at: None,
                    close: true,
                });
                self.flush_receipts(out);
                return;
            }
            (_, Command::Send) => self.on_send(&frame, receipt.is_some()),
            (_, Command::Subscribe) => self.on_subscribe(&frame).map(|()| None),
            (_, Command::Unsubscribe) => self.on_unsubscribe(&frame).map(|()| None),
            (_, Command::Ack) => self.on_ack(&frame, None).map(|()| None),
            (_, Command::Nack) => {
                let requeue = match frame.header("requeue") {
                    None => Ok(true),
                    Some(v) => parse_bool("requeue", v),
                };
                requeue
                    .and_then(|r| self.on_ack(&frame, Some(r)))
                    .map(|()| None)
            }
            (_, Command::Begin) => self.on_begin(&frame).map(|()| None),
            (_, Command::Commit) => self.on_commit(&frame),
            (_, Command::Abort) => self.on_abort(&frame).map(|()| None),
            (
                _,
                server
                @ (Command::Connected | Command::Message | Command::Receipt | Command::Error),
            ) => Err(StompError::new(
                "Illegal command",
                format!("{server} is sent by servers, not clients"),
            )),
        };
        match result {
            Ok(at) => {
                // CONNECT cannot ask for a receipt: CONNECTED is its answer.
                if let Some(id) = receipt
                    && command != Command::Connect
                    && command != Command::Stomp
                {
                    self.receipts.push_back(Receipt {
                        id: Some(id),
                        at,
                        close: false,
                    });
                }
                self.flush_receipts(out);
            }
            Err(e) => self.fail(&e, receipt.as_deref(), out),
        }
        self.update_listing();
    }

    /// Reports input the codec refused: the stream cannot be trusted further.
    pub fn on_codec_error(&mut self, err: &codec::CodecError, out: &mut BytesMut) {
        self.fail(&stomp_error::from_codec(err), None, out);
    }

    /// Sends ERROR, releases everything, and ends the connection.
    pub(super) fn fail(&mut self, err: &StompError, receipt: Option<&str>, out: &mut BytesMut) {
        if self.stage == Stage::Done {
            return;
        }
        tracing::debug!(peer = %self.peer, user = self.user_name(), message = %err.message,
            details = %err.details, "STOMP error");
        let mut frame = Frame::error(&err.message, &err.details);
        if let Some(r) = receipt {
            frame = frame.with_header("receipt-id", r);
        }
        self.emit(&frame, out);
        self.release();
        self.stage = Stage::Done;
    }

    /// Encodes a server frame, leaving out any header this version cannot
    /// carry rather than failing the whole frame.
    pub(super) fn emit(&self, frame: &Frame, out: &mut BytesMut) {
        if self.encoder.encode_frame(frame, out).is_ok() {
            return;
        }
        let mut safe = frame.clone();
        safe.headers.retain(|(name, value)| {
            let one = Frame::new(frame.command).with_header(name.clone(), value.clone());
            name == "content-length"
                || self
                    .encoder
                    .encode_frame(&one, &mut BytesMut::new())
                    .is_ok()
        });
        if self.encoder.encode_frame(&safe, out).is_err() {
            tracing::warn!(command = %frame.command, "a server frame could not be encoded");
        }
    }

    fn on_connect(&mut self, mut frame: Frame, out: &mut BytesMut) -> Result<(), StompError> {
        let version = negotiate(frame.header("accept-version"))?;
        self.version = version;
        self.encoder.set_version(version);
        if version == Version::V1_0 {
            // 1.0 clients wrote "login: guest"; RabbitMQ trims too.
            trim_values(&mut frame);
        }
        let (cx, cy) = match frame.header("heart-beat") {
            None => (0, 0),
            Some(v) => parse_heart_beat(v).ok_or_else(|| {
                StompError::invalid_header("heart-beat", v, "is not two intervals in milliseconds")
            })?,
        };
        let (login, passcode) =
            match frame.header("login") {
                Some(login) => (
                    login.to_owned(),
                    frame.header("passcode").unwrap_or_default().to_owned(),
                ),
                None => self.settings.default_login.clone().ok_or_else(|| {
                    StompError::new("Bad CONNECT", "login and passcode are required")
                })?,
            };
        let user = self
            .broker
            .users
            .authenticate(&login, &passcode, self.peer.ip())
            .map_err(|e| {
                tracing::info!(peer = %self.peer, user = %login, error = %e, "STOMP login refused");
                StompError::from(&e)
            })?;
        // ActiveMQ's clients send the server's host name: only a name that
        // is a vhost picks one (DESIGN.md).
        let vhost = frame
            .header("host")
            .and_then(|h| self.broker.vhost(h))
            .or_else(|| self.broker.vhost(&self.settings.default_vhost))
            .ok_or_else(|| {
                StompError::new(
                    "Bad CONNECT",
                    format!(
                        "virtual host '{}' does not exist",
                        self.settings.default_vhost
                    ),
                )
            })?;
        // The runtime permission table decides, as for AMQP and MQTT: a
        // user granted nothing in the vhost may not open it.
        self.broker
            .users
            .check_access(&user.name, vhost.name().as_str())
            .map_err(|e| StompError::from(&e))?;
        self.client_id = frame.header("client-id").unwrap_or_default().to_owned();
        let (sx, sy) = (clamp_heartbeat(cy), clamp_heartbeat(cx));
        self.heartbeat = Heartbeat {
            send: sx,
            receive: sy,
        };
        let millis = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        let connected = Frame::connected(version)
            .with_header("heart-beat", format!("{},{}", millis(sx), millis(sy)))
            .with_header("server", concat!("ferrymq/", env!("CARGO_PKG_VERSION")))
            .with_header("session", self.session_id.clone());
        self.emit(&connected, out);
        self.user = Some(user);
        self.vhost = Some(vhost);
        self.stage = Stage::Open;
        self.register(frame.header("client-id"), frame.header("host"));
        Ok(())
    }

    /// Lists the connection in the broker's registry, where the management
    /// API and the metrics see it and an operator can close it.
    fn register(&mut self, client_id: Option<&str>, host: Option<&str>) {
        let (Some(user), Some(vhost)) = (&self.user, &self.vhost) else {
            return;
        };
        let registration = self.broker.connections.register_single_lane(
            ConnectionInfo {
                id: self.conn_id,
                protocol: Protocol::Stomp,
                peer: self.peer,
                user: user.name.clone(),
                vhost: vhost.name().clone(),
                client_name: client_id.or(host).map(Arc::from),
                client_product: None,
                connected_at_ms: crate::core::connections::now_ms(),
            },
            self.events.clone(),
        );
        self.registration = Some(registration);
        self.listed_subs = 0;
    }

    /// Keeps the registry's subscription count current.
    fn update_listing(&mut self) {
        if let Some(r) = &self.registration
            && self.subs.len() != self.listed_subs
        {
            self.listed_subs = self.subs.len();
            r.set_lane(LaneInfo {
                number: 1,
                consumers: self.listed_subs as u32,
                ..LaneInfo::default()
            });
        }
    }

    /// Counts bytes read from the client.
    pub fn received(&self, n: usize) {
        if let Some(r) = &self.registration {
            r.received(n);
        }
    }

    /// Counts bytes written to the client.
    pub fn sent(&self, n: usize) {
        if let Some(r) = &self.registration {
            r.sent(n);
        }
    }

    /// Refuses unless the user may do `access` to the named resource in
    /// this vhost (RabbitMQ's permission model, which its STOMP adapter
    /// applies too).
    pub(super) fn authorize(
        &mut self,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), StompError> {
        let (Some(user), Some(vhost)) = (&self.user, &self.vhost) else {
            return Ok(());
        };
        crate::core::auth::check_permission(
            &self.broker.users,
            &mut self.write_allowed,
            &user.name,
            vhost.name().as_str(),
            access,
            kind,
            name,
        )
        .map_err(|refusal| StompError::new("access_refused", refusal))
    }

    fn on_send(&mut self, frame: &Frame, receipted: bool) -> Handled {
        let dest_text = frame
            .header("destination")
            .ok_or_else(|| StompError::missing_header("SEND", "destination"))?;
        let dest = Destination::parse(dest_text)?;
        let max = self.settings.max_message_bytes;
        if frame.body.len() > max {
            return Err(StompError::new(
                "Message too large",
                format!("the body is {} bytes; the limit is {max}", frame.body.len()),
            ));
        }
        let mut props = properties::from_send(&frame.headers, epoch_millis())?;
        let user = self.user_name().unwrap_or_default();
        if let Some(claimed) = &props.user_id
            && claimed != user
        {
            return Err(StompError::new(
                "precondition_failed",
                format!("user-id header set to '{claimed}' but the authenticated user is '{user}'"),
            ));
        }
        if let Some(reply_to) = props.reply_to.clone() {
            match Destination::parse(&reply_to) {
                // [RabbitMQ] a temp queue is created and subscribed to, and
                // the reply-to names it as a bare queue name, which an AMQP
                // responder publishes to directly.
                Ok(Destination::TempQueue(name)) => {
                    let queue = self.temp_queue(&name, true)?;
                    props.reply_to = Some(queue.name().to_string());
                }
                Ok(Destination::ReplyQueue(name)) => props.reply_to = Some(name),
                _ => {}
            }
        }
        let (exchange, key) = match &dest {
            Destination::TempQueue(name) => (
                String::new(),
                self.temp_queue(name, false)?.name().to_string(),
            ),
            Destination::Queue(name) => {
                self.ensure_queue(name, frame)?;
                (String::new(), name.clone())
            }
            other => {
                let (x, k) = other.publish_target();
                (x.to_owned(), k.to_owned())
            }
        };
        self.authorize(Access::Write, "exchange", &exchange)?;
        let message = Message::new(
            exchange.into(),
            key.into(),
            props,
            detach_body(frame.body.clone()),
        );
        if let Some(tx) = frame.header("transaction") {
            let t = self.transaction(tx)?;
            t.bytes += frame.body.len();
            if t.bytes > MAX_TRANSACTION_BYTES {
                return Err(StompError::new(
                    "Transaction too large",
                    format!("transaction '{tx}' holds more than {MAX_TRANSACTION_BYTES} bytes"),
                ));
            }
            t.ops.push(TxOp::Publish(message));
            return Ok(None);
        }
        self.publish(message, receipted)
    }

    /// Routes a message; with a receipt, a queue refusing it (x-overflow
    /// reject-publish) is an error, as a nack would be in AMQP.
    fn publish(&mut self, message: Message, receipted: bool) -> Handled {
        let outcome = self.vhost().publish(message)?;
        if let Some(q) = outcome.behind {
            let waits = &self.broker.stats.protocol(Protocol::Stomp).publisher_waits;
            self.flow.note(q, self.conn_id, waits);
        }
        if outcome.rejected && receipted {
            return Err(StompError::new(
                "Message rejected",
                "a queue the message was routed to is full and refuses new messages",
            ));
        }
        Ok(outcome.durable_at)
    }

    /// An open transaction, or the error for a frame naming one that is not.
    pub(super) fn transaction(&mut self, id: &str) -> Result<&mut Transaction, StompError> {
        let t = self.transactions.get_mut(id).ok_or_else(|| {
            StompError::new(
                "Bad transaction",
                format!("transaction '{id}' is not active (BEGIN it first)"),
            )
        })?;
        if t.ops.len() >= MAX_TRANSACTION_FRAMES {
            return Err(StompError::new(
                "Transaction too large",
                format!("transaction '{id}' holds {MAX_TRANSACTION_FRAMES} frames already"),
            ));
        }
        Ok(t)
    }

    fn on_begin(&mut self, frame: &Frame) -> Result<(), StompError> {
        let id = frame
            .header("transaction")
            .ok_or_else(|| StompError::missing_header("BEGIN", "transaction"))?;
        if self.transactions.contains_key(id) {
            return Err(StompError::new(
                "Bad transaction",
                format!("transaction '{id}' is already active"),
            ));
        }
        if self.transactions.len() >= MAX_TRANSACTIONS {
            return Err(StompError::new(
                "Too many transactions",
                format!("at most {MAX_TRANSACTIONS} transactions may be open at once"),
            ));
        }
        self.transactions
            .insert(id.to_owned(), Transaction::default());
        Ok(())
    }

    fn take_transaction(
        &mut self,
        command: &str,
        frame: &Frame,
    ) -> Result<Transaction, StompError> {
        let id = frame
            .header("transaction")
            .ok_or_else(|| StompError::missing_header(command, "transaction"))?;
        self.transactions.remove(id).ok_or_else(|| {
            StompError::new(
                "Bad transaction",
                format!("transaction '{id}' is not active"),
            )
        })
    }

    /// Applies a transaction's work in order. Its receipt waits for every
    /// persistent message it published to be durable.
    fn on_commit(&mut self, frame: &Frame) -> Handled {
        let tx = self.take_transaction("COMMIT", frame)?;
        let receipted = frame.header("receipt").is_some();
        let mut at = None;
        for op in tx.ops {
            match op {
                TxOp::Publish(message) => at = at.max(self.publish(message, receipted)?),
                TxOp::Settle(tags, how) => self.settle_tags(&tags, how),
            }
        }
        Ok(at)
    }

    fn on_abort(&mut self, frame: &Frame) -> Result<(), StompError> {
        self.take_transaction("ABORT", frame).map(drop)
    }

    /// Sends, in frame order, every receipt whose messages are durable up
    /// to the known position.
    fn flush_receipts(&mut self, out: &mut BytesMut) {
        while let Some(r) = self.receipts.front() {
            if r.at.is_some_and(|p| p > self.durable) {
                break;
            }
            let r = self
                .receipts
                .pop_front()
                .expect("front exists: just peeked");
            if let Some(id) = &r.id {
                self.emit(&Frame::receipt(id), out);
            }
            if r.close {
                self.receipts.clear();
                self.stage = Stage::Done;
                return;
            }
        }
        if self.stage == Stage::Closing && self.receipts.is_empty() {
            self.close_for_shutdown(out);
        }
    }

    /// Some receipt waits for the journal.
    pub fn awaits_durability(&self) -> bool {
        self.receipts
            .front()
            .is_some_and(|r| r.at.is_some_and(|p| p > self.durable))
    }

    /// The journal reached `position`: receipts up to it may go out.
    pub fn set_durable(&mut self, position: LogPosition, out: &mut BytesMut) {
        self.durable = self.durable.max(position);
        self.flush_receipts(out);
    }

    /// The broker is shutting down: stop reading, send the receipts still
    /// owed as the journal makes them durable, then ERROR and close.
    pub fn shutdown(&mut self, out: &mut BytesMut) {
        match self.stage {
            Stage::AwaitConnect => self.stage = Stage::Done,
            Stage::Open => {
                self.stage = Stage::Closing;
                self.flush_receipts(out);
            }
            Stage::Closing | Stage::Done => {}
        }
    }

    /// The grace period is over: close now, receipts or not.
    pub fn close_for_shutdown(&mut self, out: &mut BytesMut) {
        if self.stage == Stage::Done {
            return;
        }
        self.fail(
            &StompError::new("Server shutdown", "the broker is shutting down"),
            None,
            out,
        );
    }

    /// Turns one core event into frames.
    pub fn on_event(&mut self, event: Event, out: &mut BytesMut) {
        match event {
            Event::Deliver(d) => {
                let (consumer, queue, id) = (d.consumer, d.queue.clone(), d.id);
                // After release there is no subscription: `deliver` gives
                // the message back instead of writing it.
                if let Some(auto) = self.deliver(d, out) {
                    let sent = self.sent.entry(consumer).or_insert_with(|| Sent {
                        queue,
                        n: 0,
                        settled: Vec::new(),
                    });
                    sent.n += 1;
                    if auto {
                        sent.settled.push(id);
                    }
                }
            }
            Event::ConsumerCancelled(id) => self.server_cancelled(id, out),
            Event::CloseConnection(reason) => {
                self.fail(&StompError::new("Connection forced", reason), None, out);
            }
        }
    }

    /// After the output reached the socket: reopen the consumers' send
    /// windows and settle the auto-ack deliveries written.
    pub fn after_write(&mut self) {
        for (consumer, sent) in self.sent.drain() {
            let mut after = sent.queue.sent(consumer, sent.n);
            if !sent.settled.is_empty() {
                let more = sent.queue.written(&sent.settled);
                after.dead.extend(more.dead);
                after.delete_queue |= more.delete_queue;
            }
            if let Some(v) = &self.vhost {
                v.settle_aftermath(&sent.queue, after);
            }
        }
    }

    /// The connection ended before the output was written: the auto-ack
    /// deliveries in it go back to their queues (after `release`, so not
    /// to this connection's consumers).
    pub fn give_back_unwritten(&mut self) {
        for (_, sent) in self.sent.drain() {
            if sent.settled.is_empty() {
                continue;
            }
            let after = sent.queue.settle(&sent.settled, Settle::Requeue);
            if let Some(v) = &self.vhost {
                v.settle_aftermath(&sent.queue, after);
            }
        }
    }

    /// Ends the client's subscriptions, requeues what it held
    /// unacknowledged and drops its private queues. Safe to call twice;
    /// deliveries still in flight afterwards are given back by `on_event`.
    pub fn release(&mut self) {
        self.transactions.clear();
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        // Cancel first: a message requeued while its consumer is still
        // attached would be handed straight back to it. An auto-delete
        // queue goes with its last consumer, taking the messages this
        // client held with it, as in RabbitMQ.
        self.sub_keys.clear();
        for (id, sub) in self.subs.drain() {
            vhost.cancel(&sub.queue, id);
            self.unsubscribed = true;
        }
        let held: Vec<u64> = self.outstanding.keys().copied().collect();
        self.settle_tags(&held, Settle::Requeue);
        self.temp_queues.clear();
        vhost.connection_closed(self.conn_id);
    }
}

/// A session id no other connection has: the connection's number and
/// some randomness, so that ids are not guessable across restarts.
fn session_id(conn: ConnectionId) -> String {
    use rand::Rng;
    let salt: u32 = rand::rng().random();
    format!("session-{}-{salt:08x}", conn.0)
}

/// Picks the highest version both sides speak; no header means 1.0.
fn negotiate(accept: Option<&str>) -> Result<Version, StompError> {
    let Some(list) = accept else {
        return Ok(Version::V1_0);
    };
    list.split(',')
        .filter_map(|v| Version::parse(v.trim()))
        .max()
        .ok_or_else(|| {
            StompError::new(
                "Version mismatch",
                format!("Supported protocol versions are 1.0,1.1,1.2; the client accepts {list:?}"),
            )
        })
}

/// Reads `heart-beat: cx,cy`.
fn parse_heart_beat(v: &str) -> Option<(u64, u64)> {
    let (x, y) = v.split_once(',')?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}

/// An interval the client asked for, bounded; 0 is none.
fn clamp_heartbeat(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT))
}

/// `true` / `false`, in any case.
pub(super) fn parse_bool(name: &str, v: &str) -> Result<bool, StompError> {
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(StompError::invalid_header(
            name,
            v,
            "is neither true nor false",
        ))
    }
}

/// STOMP 1.0 clients put a space after the colon.
fn trim_values(frame: &mut Frame) {
    for (_, value) in &mut frame.headers {
        if value.starts_with([' ', '\t']) {
            *value = value.trim_start_matches([' ', '\t']).to_owned();
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

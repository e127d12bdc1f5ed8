//! One MQTT connection's protocol state: CONNECT, QoS 0/1/2 both ways,
//! subscriptions, retained messages, topic aliases, the will. Sans-IO:
//! packets and core events in, bytes out; connection.rs owns the socket
//! and the timers (keepalive, will delay, session expiry).
//!
//! State that outlives the connection (subscriptions, QoS 2 packet ids in
//! flight) lives in `Persistent`, shared through the vhost's session
//! registry so the next connection with the same client id resumes it.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use bytes::BytesMut;
use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::{
    self, ConnectAckReason, DisconnectReasonCode, PublishAck2Reason, PublishAckReason,
    RetainHandling, SubscribeAckReason, UnsubscribeAckReason,
};

use super::codec::{
    CONNACK_UNACCEPTABLE_PROTOCOL, CodecError, Inbound, OutPublish, Version, Writer,
};
use super::error::{Disconnect, from_codec, from_topic, publish_reason, subscribe_reason};
use super::inflight::InFlight;
use super::properties::{self, published_qos, published_retained};
use super::topic::{self, ParsedFilter};
use crate::core::binding_options::{EXCLUDE_RESERVED, TopicBinding};
use crate::core::change::LogPosition;
use crate::core::exchange::{BindingSpec, Destination};
use crate::core::names::IdMap;
use crate::core::queue::{ConsumerSpec, Queue, QueueSpec};
use crate::core::retained::RETAINING_EXCHANGE;
use crate::core::sessions::SessionState;
use crate::core::{
    Access, AuthError, Broker, ConnectionId, ConnectionInfo, ConsumerId, ConsumerTag, CoreError,
    Delivery, DeliveryId, Event, EventSink, ExchangeName, Headers, LaneInfo, Message, Protocol,
    QueueName, Registration, RoutingKey, Settle, User, VHost, Value, detach_body,
};

/// The registry's state for every clean session: one shared marker, as
/// there is nothing to resume.
struct Clean;

static CLEAN: LazyLock<SessionState> = LazyLock::new(|| Arc::new(Clean));

/// The reason given to a connection whose client id another one claimed.
pub const TAKEN_OVER: &str = "session taken over";
/// In-flight PUBLISHes an emptied table keeps room for (about 40 KiB).
const OUTBOUND_KEPT: usize = 1024;
/// The reason given to open connections when the broker shuts down.
pub const SHUTTING_DOWN: &str = "broker shutdown";

/// What this server allows and announces; config.rs fills it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest packet accepted (remaining length), announced as Maximum
    /// Packet Size to MQTT 5 clients. Never 0.
    pub max_packet: u32,
    /// QoS 2 publishes a client may have awaiting PUBREL (Receive Maximum).
    pub receive_max: u16,
    /// Topic aliases a client may set up towards us.
    pub topic_alias_max: u16,
    /// Longest keepalive accepted, seconds; a longer or absent one is
    /// replaced with this and announced as Server Keep Alive.
    pub max_keep_alive: Option<u16>,
    /// The login for clients that send no user name; `None` refuses them.
    pub anonymous: Option<(String, String)>,
    /// The vhost of user names without a `vhost:` prefix.
    pub default_vhost: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_packet: 16 * 1024 * 1024 + 64 * 1024,
            receive_max: 1024,
            topic_alias_max: 64,
            max_keep_alive: None,
            anonymous: Some(("guest".into(), "guest".into())),
            default_vhost: "/".into(),
        }
    }
}

/// One subscription, as the client made it.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The filter and its share group.
    pub filter: ParsedFilter,
    matcher: TopicBinding,
    /// Granted QoS.
    pub qos: QoS,
    /// Messages this client published are not sent back (MQTT 5).
    pub no_local: bool,
    /// Deliveries keep the retain flag they were published with (MQTT 5).
    pub retain_as_published: bool,
    /// Subscription identifier (MQTT 5).
    pub id: Option<NonZeroU32>,
}

/// Session state that outlives a connection. Every connection has one,
/// shared with the session registry; its id sets are B-trees because an
/// empty one is allocation-free and smaller than an empty hash set.
#[derive(Debug, Default)]
pub struct Persistent {
    /// Subscriptions by the filter string the client sent.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// QoS 2 publishes received and routed, PUBREL awaited.
    pub incoming_qos2: BTreeSet<u16>,
    /// QoS 2 deliveries the client has PUBREC'd, PUBCOMP awaited.
    pub released: BTreeSet<u16>,
    /// The session survives its connection.
    pub durable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitConnect,
    Open,
    /// The socket should close once the output is flushed.
    Done,
}

/// A message on its way out.
#[derive(Debug)]
struct Pending {
    message: Message,
    qos: QoS,
    retain: bool,
    dup: bool,
    sub_ids: Vec<NonZeroU32>,
    /// The consumer it came through, to settle with the client's ack.
    settle: Option<(ConsumerId, DeliveryId)>,
}

/// A QoS 1 or 2 PUBLISH sent and not yet acknowledged.
#[derive(Debug)]
struct Outgoing {
    qos: QoS,
    settle: Option<(ConsumerId, DeliveryId)>,
}

#[derive(Debug)]
struct ConsumerInfo {
    queue: Arc<Queue>,
    manual: bool,
    /// The shared subscription (raw filter) it serves; `None` for the
    /// session's own queue.
    shared: Option<String>,
    active: bool,
}

/// The will, ready to publish.
#[derive(Debug, Clone)]
pub struct Will {
    /// The message, routed to amq.topic.
    pub message: Message,
    /// Seconds to wait before publishing (MQTT 5 will delay).
    pub delay: u32,
}

/// What the connection must do after the session ended: timers for the
/// will and the session's expiry.
#[derive(Debug, Default)]
pub struct Farewell {
    /// The vhost the session lived in.
    pub vhost: Option<Arc<VHost>>,
    /// The client id.
    pub client_id: String,
    /// The registry generation the session was parked at; `None` when the
    /// session was taken over or forgotten.
    pub generation: Option<u64>,
    /// The will to publish, after its delay (capped by the session expiry).
    pub will: Option<Will>,
    /// Seconds until the parked session expires; `None`: never or not parked.
    pub expiry: Option<u32>,
    /// The session's queue, deleted at expiry.
    pub queue: Option<QueueName>,
}

/// What a session needs once it subscribes, publishes at QoS 1 or 2 or
/// uses topic aliases. Boxed apart: most connections of an MQTT broker are
/// idle devices that never need it.
#[derive(Debug, Default)]
struct Flows {
    consumers: IdMap<ConsumerId, ConsumerInfo>,
    /// Shared subscription (raw filter) -> its consumer.
    shared: HashMap<String, ConsumerId>,
    /// Aliases given to the client, by routing key (the topic's
    /// one-to-one image).
    aliases_out: HashMap<String, NonZeroU16>,
    aliases_in: IdMap<u16, ByteString>,
    outbound: InFlight<Outgoing>,
    held: VecDeque<Pending>,
    /// Deliveries to settle once this batch is done, by the consumer
    /// they came through (its queue is in `consumers` until the session
    /// ends): no queue handle is cloned per delivery.
    settles: Vec<(ConsumerId, DeliveryId, Settle)>,
    /// Deliveries for a consumer this session does not know, to requeue.
    strays: Vec<(Arc<Queue>, DeliveryId)>,
    /// Ids of one queue's settlement, reused from batch to batch.
    settle_ids: Vec<DeliveryId>,
    /// Deliveries written this round per consumer, reported to their
    /// queues after the write so their send windows reopen.
    sent: Vec<(ConsumerId, u32)>,
    /// PUBACKs and PUBRECs waiting for the journal, in arrival order
    /// (MQTT-4.6.0-2): each with the position that must be durable first.
    held_acks: VecDeque<(LogPosition, v5::Packet)>,
    /// The highest journal position known durable.
    durable: LogPosition,
    /// Nothing goes out before the journal reaches this: the CONNACK of a
    /// session whose record it must hold first, and all behind it.
    output_held_until: LogPosition,
    /// The names the last publish was routed with (see `publish_names`).
    last_published: Option<PublishNames>,
}

/// The exchange and routing key a message published to one topic carries.
#[derive(Debug)]
struct PublishNames {
    /// A copy: the packet's topic is a slice of the read buffer, which
    /// keeping it would pin.
    topic: Box<str>,
    exchange: ExchangeName,
    key: RoutingKey,
}

impl Flows {
    /// The names for a publish to `topic`. A client nearly always publishes
    /// to the topic it published to last (a sensor to its reading's topic),
    /// and then every message shares one exchange and one key rather than
    /// allocating its own: 96 bytes of each queued message and four
    /// allocations, the key's check and its separator swap.
    fn publish_names(
        &mut self,
        topic: &str,
    ) -> Result<(ExchangeName, RoutingKey), topic::TopicError> {
        if let Some(last) = &self.last_published
            && *last.topic == *topic
        {
            return Ok((last.exchange.clone(), last.key.clone()));
        }
        let key = RoutingKey::from(topic::topic_to_key(topic)?);
        let exchange = self
            .last_published
            .take()
            .map_or_else(|| ExchangeName::from(RETAINING_EXCHANGE), |l| l.exchange);
        self.last_published = Some(PublishNames {
            topic: topic.into(),
            exchange: exchange.clone(),
            key: key.clone(),
        });
        Ok((exchange, key))
    }
}

/// One MQTT connection's protocol state.
#[derive(Debug)]
pub struct Session {
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    peer: SocketAddr,
    conn_id: ConnectionId,
    events: EventSink,
    stage: Stage,
    writer: Option<Writer>,
    client_id: Arc<str>,
    vhost: Option<Arc<VHost>>,
    keep_alive: u16,
    session_expiry: u32,
    /// Shared with the session registry for a session that outlives its
    /// connection; a clean session's is its own, made at its first use,
    /// so an idle one has none.
    state: OnceCell<Arc<Mutex<Persistent>>>,
    holds_name: bool,
    will: Option<Will>,
    /// A DISCONNECT with reason 0 arrived: no will.
    clean_disconnect: bool,
    queue: Option<Arc<Queue>>,
    /// Made at the first subscription, QoS 1/2 publish or topic alias.
    flows: Option<Box<Flows>>,
    /// The client's Receive Maximum: QoS 1/2 PUBLISHes in flight to it.
    client_receive_max: u16,
    client_alias_max: u16,
    next_packet_id: u16,
    /// `released.len()` of the persistent state, kept here: the window
    /// counts it for every QoS 1 or 2 delivery, and locking the state for
    /// that was two of the three locks each delivery took.
    released_len: usize,
    /// This connection's entry in the broker's connection registry, from
    /// CONNACK until the connection is released.
    registration: Option<Registration>,
    /// Consumers last shown in the registry.
    listed_consumers: u32,
    /// Whether the user may publish (write to amq.topic), and the user
    /// table's generation the answer holds for: asked once, not per message.
    may_publish: PublishGrant,
}

/// Whether the user may publish, as of a user table generation; packed in
/// one word because every connection keeps one.
#[derive(Debug, Clone, Copy, Default)]
struct PublishGrant(u64);

impl PublishGrant {
    fn new(generation: u64, allowed: bool) -> Self {
        Self(generation.wrapping_add(1) << 1 | u64::from(allowed))
    }

    /// The answer, if it was given at `generation`.
    fn at(self, generation: u64) -> Option<bool> {
        (self.0 != 0 && self.0 >> 1 == generation.wrapping_add(1) & (u64::MAX >> 1))
            .then_some(self.0 & 1 == 1)
    }
}

type Outcome = Result<(), Disconnect>;

impl Session {
    /// A session for a freshly accepted socket.
    pub fn new(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: SocketAddr,
        events: EventSink,
    ) -> Self {
        Self {
            settings,
            peer,
            conn_id: ConnectionId(crate::core::next_id()),
            events,
            stage: Stage::AwaitConnect,
            writer: None,
            client_id: Arc::from(""),
            vhost: None,
            keep_alive: 0,
            session_expiry: 0,
            state: OnceCell::new(),
            holds_name: false,
            will: None,
            clean_disconnect: false,
            queue: None,
            flows: None,
            client_receive_max: u16::MAX,
            client_alias_max: 0,
            next_packet_id: 1,
            released_len: 0,

            registration: None,
            listed_consumers: 0,
            may_publish: PublishGrant::default(),
            broker,
        }
    }

    /// The keepalive in force, seconds (0: none). The connection closes
    /// after 1.5 times this without a packet.
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }
    /// CONNECT has been accepted.
    pub fn is_open(&self) -> bool {
        self.stage == Stage::Open
    }
    /// The socket can be closed once the output is flushed.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }
    /// The client id, for logs.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    /// The connection's id in the broker.
    pub fn id(&self) -> ConnectionId {
        self.conn_id
    }
    /// The connection's own event sink, to be woken through.
    pub fn events(&self) -> &EventSink {
        &self.events
    }
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    /// The broker the session lives in.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }
    /// The largest packet accepted from the client.
    pub fn max_packet(&self) -> u32 {
        self.settings.max_packet
    }
    /// QoS 1/2 PUBLISHes in flight to the client.
    pub fn in_flight(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.outbound.len()) + self.released_len
    }

    fn flows(&mut self) -> &mut Flows {
        self.flows.get_or_insert_with(Box::default)
    }

    /// Counts a delivery the client acknowledged (PUBACK or PUBREC).
    fn count_acknowledged(&self) {
        self.broker
            .stats
            .protocol(Protocol::Mqtt)
            .acknowledged
            .inc();
    }

    fn settle_later(&mut self, consumer: ConsumerId, id: DeliveryId, how: Settle) {
        self.flows().settles.push((consumer, id, how));
    }

    fn persist(&self) -> MutexGuard<'_, Persistent> {
        self.state
            .get_or_init(Arc::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The persistent state if there is any yet, for a look that should
    /// not make it.
    fn persisted(&self) -> Option<MutexGuard<'_, Persistent>> {
        let state = self.state.get()?;
        Some(state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn v5(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.version().is_v5())
    }

    fn write(&mut self, packet: v5::Packet, out: &mut BytesMut) {
        write_packet(&mut self.writer, self.peer, packet, out);
    }

    /// Handles one inbound packet.
    pub fn on_packet(&mut self, packet: Inbound, out: &mut BytesMut) {
        if self.stage == Stage::Done {
            return;
        }
        let r = match packet {
            Inbound::Connect(version, c) if self.stage == Stage::AwaitConnect => {
                self.on_connect(version, *c, out)
            }
            Inbound::Connect(..) => Err(Disconnect::protocol("second CONNECT")),
            Inbound::Packet(_) if self.stage == Stage::AwaitConnect => {
                Err(Disconnect::protocol("a packet before CONNECT"))
            }
            Inbound::Packet(p) => self.on_open_packet(p, out),
        };
        if let Err(d) = r {
            self.fail(d, out);
        }
    }

    /// Reports input the codec could not read: the stream cannot be trusted
    /// any further. `version` is what the codec sniffed, if anything.
    pub fn on_codec_error(
        &mut self,
        err: &CodecError,
        version: Option<Version>,
        out: &mut BytesMut,
    ) {
        if self.stage == Stage::AwaitConnect {
            match (err, version) {
                (CodecError::UnsupportedProtocol, _) => {
                    out.extend_from_slice(&CONNACK_UNACCEPTABLE_PROTOCOL);
                }
                (_, Some(v)) => {
                    let reason = match err {
                        CodecError::TooLarge { .. } => ConnectAckReason::PacketTooLarge,
                        CodecError::InvalidClientId => ConnectAckReason::ClientIdentifierNotValid,
                        _ => ConnectAckReason::MalformedPacket,
                    };
                    self.writer = Some(Writer::new(v, self.settings.max_packet));
                    self.refuse(reason, &err.to_string(), out);
                }
                (_, None) => {}
            }
            self.stage = Stage::Done;
            return;
        }
        self.fail(from_codec(err), out);
    }

    /// Ends the connection: an MQTT 5 client is told why with DISCONNECT.
    pub fn fail(&mut self, d: Disconnect, out: &mut BytesMut) {
        if self.stage == Stage::Done {
            return;
        }
        tracing::debug!(peer = %self.peer, client = %self.client_id, reason = %d, "closing");
        if self.stage == Stage::Open && self.v5() {
            let packet = v5::Packet::Disconnect(v5::Disconnect {
                reason_code: d.code,
                session_expiry_interval_secs: None,
                server_reference: None,
                reason_string: Some(d.text.as_str().into()),
                user_properties: Vec::new(),
            });
            self.write(packet, out);
        }
        self.stage = Stage::Done;
    }

    fn refuse(&mut self, reason: ConnectAckReason, text: &str, out: &mut BytesMut) {
        tracing::info!(peer = %self.peer, client = %self.client_id, ?reason, text, "CONNECT refused");
        let ack = v5::ConnectAck {
            reason_code: reason,
            reason_string: Some(text.into()),
            ..Default::default()
        };
        self.write(v5::Packet::ConnectAck(Box::new(ack)), out);
        self.stage = Stage::Done;
    }

    fn login(&self, c: &v5::Connect) -> Result<(User, Arc<VHost>), (ConnectAckReason, String)> {
        let (vhost, user, pass) = match &c.username {
            None => match &self.settings.anonymous {
                Some((u, p)) => (self.settings.default_vhost.clone(), u.clone(), p.clone()),
                None => {
                    return Err((
                        ConnectAckReason::NotAuthorized,
                        "anonymous clients are not allowed".into(),
                    ));
                }
            },
            Some(name) => {
                let (vhost, user) = match name.split_once(':') {
                    Some((v, u)) => (v.to_owned(), u.to_owned()),
                    None => (self.settings.default_vhost.clone(), name.to_string()),
                };
                let pass = c
                    .password
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                (vhost, user, pass)
            }
        };
        let user = self
            .broker
            .users
            .authenticate(&user, &pass, self.peer.ip())
            .map_err(|e| {
                let reason = match e {
                    AuthError::BadCredentials => ConnectAckReason::BadUserNameOrPassword,
                    _ => ConnectAckReason::NotAuthorized,
                };
                (reason, e.to_string())
            })?;
        let host = self.broker.vhost(&vhost).ok_or_else(|| {
            (
                ConnectAckReason::NotAuthorized,
                format!("no vhost '{vhost}'"),
            )
        })?;
        self.broker
            .users
            .check_access(&user.name, &vhost)
            .map_err(|e| (ConnectAckReason::NotAuthorized, e.to_string()))?;
        Ok((user, host))
    }

    fn on_connect(&mut self, version: Version, c: v5::Connect, out: &mut BytesMut) -> Outcome {
        let mut writer = Writer::new(version, self.settings.max_packet);
        if version.is_v5() {
            if let Some(max) = c.max_packet_size {
                writer.set_max_out(max.get());
            }
            writer.set_problem_info(c.request_problem_info);
            self.client_receive_max = c.receive_max.map_or(u16::MAX, NonZeroU16::get);
            self.client_alias_max = c.topic_alias_max;
        }
        self.writer = Some(writer);
        if c.auth_method.is_some() {
            self.refuse(
                ConnectAckReason::BadAuthenticationMethod,
                "enhanced authentication is not supported",
                out,
            );
            return Ok(());
        }
        let (user, vhost) = match self.login(&c) {
            Ok(v) => v,
            Err((reason, text)) => {
                self.refuse(reason, &text, out);
                return Ok(());
            }
        };
        let assigned = c.client_id.is_empty();
        self.client_id = if assigned {
            Arc::from(format!("ferrymq-{}", random_suffix()))
        } else {
            Arc::from(&*c.client_id)
        };
        let will = match &c.last_will {
            None => None,
            Some(w) => match self.will_message(w) {
                Ok(m) => Some(m),
                Err(_) => {
                    self.refuse(ConnectAckReason::TopicNameInvalid, "bad will topic", out);
                    return Ok(());
                }
            },
        };
        let mut server_keep_alive = None;
        self.keep_alive = c.keep_alive;
        if let Some(max) = self.settings.max_keep_alive
            && (c.keep_alive == 0 || c.keep_alive > max)
        {
            self.keep_alive = max;
            server_keep_alive = Some(max);
        }
        self.session_expiry = c.session_expiry_interval_secs;
        let durable = self.session_expiry > 0;

        let fresh = || -> SessionState {
            if durable {
                Arc::new(Mutex::new(Persistent::default()))
            } else {
                // Nobody can resume it, so the registry need not share it.
                CLEAN.clone()
            }
        };
        let sessions = vhost.sessions();
        let mut claim = sessions.claim(
            &self.client_id,
            self.conn_id,
            self.events.clone(),
            !c.clean_start,
            TAKEN_OVER,
            fresh,
        );
        if claim.resumed && durable && claim.state.is::<Clean>() {
            // A clean session held the name: nothing to resume, and the
            // registry must hold this one's state for the next claim.
            let (id, sink) = (self.conn_id, self.events.clone());
            claim = sessions.claim(&self.client_id, id, sink, false, TAKEN_OVER, fresh);
        }
        let state = match claim.state.downcast::<Mutex<Persistent>>() {
            Ok(s) => Some(s),
            Err(other) => super::durable::resume(&vhost, &self.client_id, &other),
        };
        let mut session_present = claim.resumed && state.is_some();
        if let Some(state) = &state {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            if session_present && !st.durable {
                // The previous holder's session ended with its connection.
                *st = Persistent::default();
                session_present = false;
            }
            st.durable = durable;
        }
        self.state = OnceCell::new();
        if let Some(state) = state {
            let _ = self.state.set(state);
        }
        self.holds_name = true;
        if !session_present && !c.clean_start && durable {
            // The registry forgot the session (a restart) but its queue
            // and bindings were kept: resume from them.
            if let Some(subs) = self.recover_subscriptions(&vhost) {
                self.persist().subscriptions = subs;
                session_present = true;
            }
        }
        self.vhost = Some(vhost.clone());
        self.will = will;

        // A durable session's queue exists from CONNECT on, to keep
        // messages while the client is away; a clean session's is made at
        // its first subscription, so an idle publisher costs no queue. A
        // session resumed with an expiry of 0 keeps its durable queue, and
        // what was queued for it, until this connection ends (`release`
        // deletes it then).
        let keep_queue = session_present
            && !durable
            && vhost
                .queue(session_queue_name(&self.client_id).as_str())
                .is_some_and(|q| q.spec().durable);
        let queue_durable = durable || keep_queue;
        match self.open_queue(&vhost, session_present, queue_durable, queue_durable) {
            Ok(q) => self.queue = q,
            Err(e) => {
                self.refuse(ConnectAckReason::ServerUnavailable, &e.to_string(), out);
                return Ok(());
            }
        }
        if !session_present && let Some(mut st) = self.persisted() {
            // The bindings of a queue that outlived its session state.
            st.subscriptions.clear();
        }
        // CONNACK tells the client which session it has: a crash after it
        // must find that session (or its end) in the journal, as an ack
        // must find its message.
        if let Some(at) = super::durable::connected(
            &vhost,
            &self.client_id,
            self.session_expiry,
            session_present,
            keep_queue,
        ) {
            self.flows().output_held_until = at;
        }

        let ack = v5::ConnectAck {
            session_present,
            reason_code: ConnectAckReason::Success,
            receive_max: NonZeroU16::new(self.settings.receive_max).unwrap_or(NonZeroU16::MIN),
            max_packet_size: Some(self.settings.max_packet),
            assigned_client_id: assigned.then(|| ByteString::from(&*self.client_id)),
            topic_alias_max: self.settings.topic_alias_max,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            server_keepalive_sec: server_keep_alive,
            ..Default::default()
        };
        self.write(v5::Packet::ConnectAck(Box::new(ack)), out);
        self.stage = Stage::Open;
        self.register(user.name);
        tracing::debug!(peer = %self.peer, client = %self.client_id, ?version, session_present, "MQTT client connected");

        // Finish what the last connection left half done.
        let released: Vec<u16> = self
            .persisted()
            .map(|st| st.released.iter().copied().collect())
            .unwrap_or_default();
        self.released_len = released.len();
        for id in released {
            if let Some(packet_id) = NonZeroU16::new(id) {
                self.write(v5::Packet::PublishRelease(ack2(packet_id)), out);
            }
        }
        let shared: Vec<(String, Subscription)> = self
            .persisted()
            .map(|st| {
                st.subscriptions
                    .iter()
                    .filter(|(_, s)| s.filter.group.is_some())
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (raw, sub) in shared {
            if let Err(e) = self.join_share(&raw, &sub) {
                tracing::warn!(client = %self.client_id, filter = %raw, error = %e, "shared subscription not resumed");
            }
        }
        self.sync_consumer();
        Ok(())
    }

    /// Lists the connection in the broker's registry, with its one lane.
    /// The entry is where the session finds its user's name again.
    fn register(&mut self, user: String) {
        let Some(vhost) = &self.vhost else {
            return;
        };
        let registration = self.broker.connections.register_single_lane(
            ConnectionInfo {
                id: self.conn_id,
                protocol: Protocol::Mqtt,
                peer: self.peer,
                user,
                vhost: vhost.name().clone(),
                client_name: Some(self.client_id.clone()),
                client_product: None,
                connected_at_ms: crate::core::connections::now_ms(),
            },
            self.events.clone(),
        );
        self.registration = Some(registration);
        self.listed_consumers = 0;
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

    /// Deletes a session queue left by a session that is not being resumed,
    /// then (with `create`) declares the session's own.
    fn open_queue(
        &mut self,
        vhost: &Arc<VHost>,
        resume: bool,
        durable: bool,
        create: bool,
    ) -> Result<Option<Arc<Queue>>, crate::core::CoreError> {
        let name = session_queue_name(&self.client_id);
        if let Some(q) = vhost.queue(name.as_str()) {
            let spec = q.spec();
            if !resume || spec.durable != durable || spec.exclusive.is_some() {
                vhost.delete_queue(name.as_str(), false, false, spec.exclusive)?;
            }
        }
        if !create {
            return Ok(None);
        }
        vhost.declare_queue(
            QueueSpec {
                name: name.clone(),
                durable,
                exclusive: (!durable).then_some(self.conn_id),
                auto_delete: false,
                arguments: Headers::new(),
            },
            false,
            Some(self.conn_id),
        )?;
        vhost.existing_queue(name.as_str()).map(Some)
    }

    /// The session's queue, declared at the first subscription that needs it.
    fn ensure_queue(&mut self) -> Result<(), crate::core::CoreError> {
        if self.queue.is_some() {
            return Ok(());
        }
        let vhost = self.vhost.clone().expect("open sessions have a vhost");
        let durable = self.session_expiry > 0;
        self.queue = self.open_queue(&vhost, true, durable, true)?;
        Ok(())
    }

    fn will_message(&self, w: &v5::LastWill) -> Result<Will, Disconnect> {
        let key = topic::topic_to_key(&w.topic).map_err(from_topic)?;
        let props = properties::to_core(&properties::Inbound {
            qos: w.qos.value(),
            retain: w.retain,
            content_type: w.content_type.as_deref(),
            correlation_data: w.correlation_data.as_ref(),
            response_topic: w.response_topic.as_deref(),
            expiry: w.message_expiry_interval.map(NonZeroU32::get),
            utf8_payload: w.is_utf8_payload.unwrap_or(false),
            user_properties: &w.user_properties,
        });
        let message = Message::new(
            ExchangeName::from(RETAINING_EXCHANGE),
            RoutingKey::from(key),
            props,
            detach_body(w.message.clone()),
        )
        .with_origin(self.client_id.clone());
        Ok(Will {
            message,
            delay: w.will_delay_interval_sec.unwrap_or(0),
        })
    }

    fn on_open_packet(&mut self, p: v5::Packet, out: &mut BytesMut) -> Outcome {
        use v5::Packet as P;
        match p {
            P::Publish(p) => self.on_publish(*p, out),
            P::PublishAck(a) => {
                let acked = self.take_outbound(a.packet_id.get());
                if let Some(o) = acked {
                    self.count_acknowledged();
                    if let Some((q, id)) = o.settle {
                        self.settle_later(q, id, Settle::Ack);
                    }
                    self.drain_held(out);
                }
                Ok(())
            }
            P::PublishReceived(a) => {
                let id = a.packet_id.get();
                let received = self.take_outbound(id);
                if let Some(o) = received {
                    self.count_acknowledged();
                    if let Some((q, did)) = o.settle {
                        self.settle_later(q, did, Settle::Ack);
                    }
                    if o.qos == QoS::ExactlyOnce && u8::from(a.reason_code) < 0x80 {
                        self.released_len = {
                            let mut st = self.persist();
                            st.released.insert(id);
                            st.released.len()
                        };
                        self.record_packet_id(true, id, true);
                        self.write(v5::Packet::PublishRelease(ack2(a.packet_id)), out);
                    } else {
                        self.drain_held(out);
                    }
                } else if self.persist().released.contains(&id) {
                    self.write(v5::Packet::PublishRelease(ack2(a.packet_id)), out);
                }
                Ok(())
            }
            P::PublishComplete(a) => {
                let (removed, left) = {
                    let mut st = self.persist();
                    (st.released.remove(&a.packet_id.get()), st.released.len())
                };
                self.released_len = left;
                if removed {
                    self.record_packet_id(true, a.packet_id.get(), false);
                    self.drain_held(out);
                }
                Ok(())
            }
            P::PublishRelease(a) => {
                let known = self.persist().incoming_qos2.remove(&a.packet_id.get());
                let mut reply = ack2(a.packet_id);
                if known {
                    self.record_packet_id(false, a.packet_id.get(), false);
                } else {
                    reply.reason_code = PublishAck2Reason::PacketIdNotFound;
                    reply.reason_string = Some(ByteString::from(format!(
                        "no QoS 2 publish with packet id {} awaits PUBREL",
                        a.packet_id
                    )));
                }
                self.write(v5::Packet::PublishComplete(reply), out);
                Ok(())
            }
            P::Subscribe(s) => self.on_subscribe(s, out),
            P::Unsubscribe(u) => self.on_unsubscribe(u, out),
            P::PingRequest => {
                self.write(v5::Packet::PingResponse, out);
                Ok(())
            }
            P::Disconnect(d) => self.on_disconnect(d),
            P::Auth(_) => Err(Disconnect::protocol(
                "AUTH without an authentication method",
            )),
            P::Connect(_) => Err(Disconnect::protocol("second CONNECT")),
            P::ConnectAck(_) | P::SubscribeAck(_) | P::UnsubscribeAck(_) | P::PingResponse => {
                Err(Disconnect::protocol("a packet only a server sends"))
            }
        }
    }

    fn on_disconnect(&mut self, d: v5::Disconnect) -> Outcome {
        if let Some(expiry) = d.session_expiry_interval_secs {
            if self.session_expiry == 0 && expiry != 0 {
                return Err(Disconnect::protocol(
                    "session expiry set on DISCONNECT after CONNECT said 0",
                ));
            }
            self.session_expiry = expiry;
            if let Some(mut st) = self.persisted() {
                st.durable = expiry > 0;
            }
        }
        self.clean_disconnect = d.reason_code != DisconnectReasonCode::DisconnectWithWillMessage;
        self.stage = Stage::Done;
        Ok(())
    }

    fn on_publish(&mut self, mut p: Publish, out: &mut BytesMut) -> Outcome {
        let v5 = self.v5();
        let props = p.properties.take().unwrap_or_default();
        if v5 {
            if !props.subscription_ids.is_empty() {
                return Err(Disconnect::protocol(
                    "a client PUBLISH carries a subscription identifier",
                ));
            }
            if let Some(alias) = props.topic_alias {
                if alias.get() > self.settings.topic_alias_max {
                    return Err(Disconnect::new(
                        DisconnectReasonCode::TopicAliasInvalid,
                        format!(
                            "topic alias {alias} above the maximum {}",
                            self.settings.topic_alias_max
                        ),
                    ));
                }
                if p.topic.is_empty() {
                    p.topic = self
                        .flows
                        .as_ref()
                        .and_then(|f| f.aliases_in.get(&alias.get()).cloned())
                        .ok_or_else(|| {
                            Disconnect::protocol(format!("topic alias {alias} was never set"))
                        })?;
                } else {
                    let topic = p.topic.clone();
                    self.flows().aliases_in.insert(alias.get(), topic);
                }
            }
        }
        let (exchange, key) = self.flows().publish_names(&p.topic).map_err(from_topic)?;
        let packet_id = p.packet_id;
        if p.qos == QoS::ExactlyOnce {
            let id = packet_id.map_or(0, NonZeroU16::get);
            let (dup, count) = {
                let st = self.persist();
                (st.incoming_qos2.contains(&id), st.incoming_qos2.len())
            };
            if dup {
                // Routed already: only the PUBREC went missing.
                if let Some(pid) = packet_id {
                    self.write(v5::Packet::PublishReceived(ack(pid)), out);
                }
                return Ok(());
            }
            if count >= usize::from(self.settings.receive_max) {
                return Err(Disconnect::new(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                    "more QoS 2 publishes in flight than Receive Maximum",
                ));
            }
        }
        let core_props = properties::to_core(&properties::Inbound {
            qos: p.qos.value(),
            retain: p.retain,
            content_type: props.content_type.as_deref(),
            correlation_data: props.correlation_data.as_ref(),
            response_topic: props.response_topic.as_deref(),
            expiry: props.message_expiry_interval.map(NonZeroU32::get),
            utf8_payload: props.is_utf8_payload,
            user_properties: &props.user_properties,
        });
        let message = Message::new(exchange, key, core_props, detach_body(p.payload))
            .with_origin(self.client_id.clone());
        let vhost = self.vhost.clone().expect("open sessions have a vhost");
        let access = self.check_access(Access::Write);
        let mut durable_at = None;
        let mqtt = self.broker.stats.protocol(Protocol::Mqtt);
        mqtt.published.inc();
        let mut refusal = None;
        let routed = match access {
            Ok(()) => vhost.publish(message),
            // MQTT 3.1.1 has no refusing PUBACK: the connection closes
            // (MQTT-3.3.5-2 allows either), as RabbitMQ's adapter does.
            Err(e) if !v5 => {
                return Err(Disconnect::new(
                    DisconnectReasonCode::NotAuthorized,
                    e.to_string(),
                ));
            }
            Err(e) => Err(e),
        };
        let reason = match routed {
            Ok(o) if o.rejected => {
                refusal = Some("a queue is full and refuses new messages".to_owned());
                PublishAckReason::QuotaExceeded
            }
            Ok(o) => {
                if o.queues == 0 {
                    mqtt.unroutable.inc();
                }
                if packet_id.is_some() {
                    mqtt.confirmed.inc();
                }
                durable_at = o.durable_at;
                if o.queues == 0 && v5 {
                    PublishAckReason::NoMatchingSubscribers
                } else {
                    PublishAckReason::Success
                }
            }
            Err(e) => {
                refusal = Some(e.to_string());
                publish_reason(&e)
            }
        };
        let Some(pid) = packet_id else {
            return Ok(());
        };
        let mut reply = ack(pid);
        reply.reason_code = reason;
        reply.reason_string = refusal.map(ByteString::from);
        let packet = match p.qos {
            QoS::AtMostOnce => return Ok(()),
            QoS::AtLeastOnce => v5::Packet::PublishAck(reply),
            QoS::ExactlyOnce => {
                if u8::from(reason) < 0x80 {
                    self.persist().incoming_qos2.insert(pid.get());
                    // PUBREC waits for the id too: a restart must not route a resent PUBLISH again.
                    durable_at = durable_at.max(self.record_packet_id(false, pid.get(), true));
                }
                v5::Packet::PublishReceived(reply)
            }
        };
        // The ack promises the message is safe: it waits for the journal.
        match durable_at {
            Some(at) if at > self.flows.as_ref().map_or(0, |f| f.durable) => {
                self.flows().held_acks.push_back((at, packet));
            }
            _ if self.flows.as_ref().is_some_and(|f| !f.held_acks.is_empty()) => {
                self.flows().held_acks.push_back((0, packet));
            }
            _ => self.write(packet, out),
        }
        Ok(())
    }

    /// Refuses unless the user may publish to (`Write`) or subscribe
    /// through (`Read`) amq.topic in this vhost, under RabbitMQ's
    /// permission model, as its MQTT adapter applies it.
    fn check_access(&mut self, access: Access) -> Result<(), CoreError> {
        let (Some(registration), Some(vhost)) = (&self.registration, &self.vhost) else {
            return Ok(());
        };
        let user = &registration.info().user;
        let users = &self.broker.users;
        let known = match access {
            Access::Write => self.may_publish.at(users.generation()),
            _ => None,
        };
        let allowed = match known {
            Some(allowed) => allowed,
            _ => {
                let generation = users.generation();
                let allowed = users.allows(user, vhost.name().as_str(), access, RETAINING_EXCHANGE);
                if access == Access::Write {
                    self.may_publish = PublishGrant::new(generation, allowed);
                }
                allowed
            }
        };
        if allowed {
            return Ok(());
        }
        Err(CoreError::AccessRefused(crate::core::auth::refusal(
            user,
            vhost.name().as_str(),
            access,
            "exchange",
            RETAINING_EXCHANGE,
        )))
    }

    /// Records a QoS 2 packet id of a session that outlives its connection.
    fn record_packet_id(&self, outbound: bool, id: u16, held: bool) -> Option<LogPosition> {
        let vhost = self.vhost.as_ref().filter(|_| self.session_expiry > 0)?;
        super::durable::packet_id(vhost, &self.client_id, outbound, id, held)
    }

    /// The journal reached `position`: acks waiting for it go out.
    pub fn set_durable(&mut self, position: LogPosition, out: &mut BytesMut) {
        let Some(flows) = &mut self.flows else {
            return;
        };
        flows.durable = flows.durable.max(position);
        while let Some((at, _)) = flows.held_acks.front() {
            if *at > flows.durable {
                break;
            }
            let (_, packet) = flows.held_acks.pop_front().expect("front exists");
            write_packet(&mut self.writer, self.peer, packet, out);
        }
    }

    /// Some ack, or all output, waits for the journal.
    pub fn awaits_durability(&self) -> bool {
        self.flows
            .as_ref()
            .is_some_and(|f| !f.held_acks.is_empty() || f.output_held_until > f.durable)
    }

    /// All output waits for the journal: the connection sends none.
    pub fn output_held(&self) -> bool {
        self.flows
            .as_ref()
            .is_some_and(|f| f.output_held_until > f.durable)
    }

    fn binding(&self, raw: &str, sub: &Subscription) -> BindingSpec {
        let queue = self.queue.as_ref().expect("open sessions have a queue");
        sub.binding(queue.name().clone(), raw)
    }

    /// Reads a durable session's subscriptions back from its queue's
    /// bindings, when the registry has forgotten them (a broker restart).
    fn recover_subscriptions(&self, vhost: &VHost) -> Option<BTreeMap<String, Subscription>> {
        let name = session_queue_name(&self.client_id);
        let q = vhost.queue(name.as_str())?;
        if !q.spec().durable || q.spec().exclusive.is_some() {
            return None;
        }
        let dest = Destination::Queue(name);
        Some(
            vhost
                .bindings_to(&dest)
                .iter()
                .filter(|b| b.source.as_str() == RETAINING_EXCHANGE)
                .filter_map(Subscription::from_binding)
                .collect(),
        )
    }

    fn on_subscribe(&mut self, s: v5::Subscribe, out: &mut BytesMut) -> Outcome {
        let vhost = self.vhost.clone().expect("open sessions have a vhost");
        let mut status = Vec::with_capacity(s.topic_filters.len());
        // One reason string for the SUBACK: why each refused filter was.
        let mut refusals: Vec<String> = Vec::new();
        let mut retained: Vec<Pending> = Vec::new();
        for (raw, opts) in s.topic_filters {
            let filter = match topic::parse_filter(&raw) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(client = %self.client_id, filter = %raw, error = %e, "filter refused");
                    refusals.push(format!("'{raw}': {e}"));
                    status.push(SubscribeAckReason::TopicFilterInvalid);
                    continue;
                }
            };
            if filter.group.is_some() && opts.no_local {
                return Err(Disconnect::protocol("no local on a shared subscription"));
            }
            let sub = Subscription {
                matcher: topic::matcher(&filter.key),
                filter,
                qos: opts.qos,
                no_local: opts.no_local,
                retain_as_published: opts.retain_as_published,
                id: s.id,
            };
            if let Err(e) = self.check_access(Access::Read) {
                refusals.push(format!("'{raw}': {e}"));
                status.push(subscribe_reason(&e));
                continue;
            }
            let raw = raw.to_string();
            let existed = self.persist().subscriptions.contains_key(&raw);
            let previous = self.persist().subscriptions.get(&raw).cloned();
            let bound = if sub.filter.group.is_some() {
                self.join_share(&raw, &sub)
            } else if let Err(e) = self.ensure_queue() {
                Err(e)
            } else {
                let spec = self.binding(&raw, &sub);
                if let Some(old) = previous.filter(|p| p.filter.group.is_none()) {
                    let old = self.binding(&raw, &old);
                    if old != spec {
                        let _ = vhost.unbind(&old, Some(self.conn_id));
                    }
                }
                vhost.bind(spec, Some(self.conn_id))
            };
            if let Err(e) = bound {
                tracing::info!(client = %self.client_id, filter = %raw, error = %e, "subscribe failed");
                refusals.push(format!("'{raw}': {e}"));
                status.push(subscribe_reason(&e));
                continue;
            }
            let send_retained = sub.filter.group.is_none()
                && match opts.retain_handling {
                    RetainHandling::AtSubscribe => true,
                    RetainHandling::AtSubscribeNew => !existed,
                    RetainHandling::NoAtSubscribe => false,
                };
            if send_retained {
                for m in vhost.retained().matching(&sub.matcher) {
                    let qos = published_qos(&m).min(sub.qos);
                    retained.push(Pending {
                        message: m,
                        qos,
                        retain: true,
                        dup: false,
                        sub_ids: sub.id.into_iter().collect(),
                        settle: None,
                    });
                }
            }
            status.push(match sub.qos {
                QoS::AtMostOnce => SubscribeAckReason::GrantedQos0,
                QoS::AtLeastOnce => SubscribeAckReason::GrantedQos1,
                QoS::ExactlyOnce => SubscribeAckReason::GrantedQos2,
            });
            self.persist().subscriptions.insert(raw, sub);
        }
        let ack = v5::SubscribeAck {
            packet_id: s.packet_id,
            properties: Vec::new(),
            reason_string: (!refusals.is_empty()).then(|| ByteString::from(refusals.join("; "))),
            status,
        };
        self.write(v5::Packet::SubscribeAck(ack), out);
        self.sync_consumer();
        for p in retained {
            self.send(p, out);
        }
        Ok(())
    }

    /// Joins a shared subscription's group queue (one queue per group and
    /// filter, its consumers load-balanced by the core).
    fn join_share(&mut self, raw: &str, sub: &Subscription) -> Result<(), crate::core::CoreError> {
        let vhost = self.vhost.clone().expect("open sessions have a vhost");
        let group = sub.filter.group.as_deref().unwrap_or_default();
        let name = QueueName::from(format!("mqtt-shared-{group}-{}", sub.filter.key));
        if vhost.queue(name.as_str()).is_none() {
            vhost.declare_queue(
                QueueSpec {
                    name: name.clone(),
                    durable: false,
                    exclusive: None,
                    auto_delete: true,
                    arguments: Headers::new(),
                },
                false,
                Some(self.conn_id),
            )?;
        }
        vhost.bind(binding_to(name.clone(), &sub.filter.key), None)?;
        if self
            .flows
            .as_ref()
            .is_some_and(|f| f.shared.contains_key(raw))
        {
            return Ok(());
        }
        let id = ConsumerId(crate::core::next_id());
        let queue = vhost.consume(
            name.as_str(),
            ConsumerSpec {
                id,
                tag: ConsumerTag::from(format!("mqtt-{}", self.client_id)),
                manual_ack: true,
                settle_on_write: false,
                prefetch: u32::from(self.client_receive_max),
                priority: 0,
                exclusive: false,
                owner: self.conn_id,
                shared_credit: None,
                sink: self.events.clone(),
            },
        )?;
        let flows = self.flows();
        flows.consumers.insert(
            id,
            ConsumerInfo {
                queue,
                manual: true,
                shared: Some(raw.to_owned()),
                active: true,
            },
        );
        flows.shared.insert(raw.to_owned(), id);
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: v5::Unsubscribe, out: &mut BytesMut) -> Outcome {
        let vhost = self.vhost.clone().expect("open sessions have a vhost");
        let mut status = Vec::with_capacity(u.topic_filters.len());
        for raw in u.topic_filters {
            let removed = self.persist().subscriptions.remove(&*raw);
            let Some(sub) = removed else {
                status.push(UnsubscribeAckReason::NoSubscriptionExisted);
                continue;
            };
            if sub.filter.group.is_some() {
                let consumer = self.flows.as_mut().and_then(|f| f.shared.remove(&*raw));
                if let Some(id) = consumer {
                    self.cancel_consumer(id);
                }
            } else {
                let _ = vhost.unbind(&self.binding(&raw, &sub), Some(self.conn_id));
            }
            status.push(UnsubscribeAckReason::Success);
        }
        let ack = v5::UnsubscribeAck {
            packet_id: u.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        };
        self.write(v5::Packet::UnsubscribeAck(ack), out);
        self.sync_consumer();
        Ok(())
    }

    fn cancel_consumer(&mut self, id: ConsumerId) {
        let Some(info) = self.flows.as_mut().and_then(|f| f.consumers.get_mut(&id)) else {
            return;
        };
        if !info.active {
            return;
        }
        info.active = false;
        let queue = info.queue.clone();
        if let Some(v) = &self.vhost {
            v.cancel(&queue, id);
        }
    }

    /// Keeps one consumer on the session's queue while it has subscriptions:
    /// manual-ack when any grants QoS 1 or 2, auto-ack when all are QoS 0.
    fn sync_consumer(&mut self) {
        let (want, any) = {
            let st = self.persisted();
            let own = st
                .iter()
                .flat_map(|st| st.subscriptions.values())
                .filter(|s| s.filter.group.is_none());
            let mut any = false;
            let mut manual = false;
            for s in own {
                any = true;
                manual |= s.qos != QoS::AtMostOnce;
            }
            (manual, any)
        };
        let Some(queue) = self.queue.clone() else {
            return;
        };
        let current = self
            .flows
            .iter()
            .flat_map(|f| f.consumers.iter())
            .find(|(_, c)| c.active && c.shared.is_none())
            .map(|(id, c)| (*id, c.manual));
        match current {
            Some((_, manual)) if any && manual == want => return,
            Some((id, _)) => self.cancel_consumer(id),
            None if !any => return,
            None => {}
        }
        if !any {
            return;
        }
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        let id = ConsumerId(crate::core::next_id());
        let spec = ConsumerSpec {
            id,
            tag: ConsumerTag::from(format!("mqtt-{}", self.client_id)),
            manual_ack: want,
            settle_on_write: false,
            prefetch: if want {
                u32::from(self.client_receive_max)
            } else {
                0
            },
            priority: 0,
            exclusive: false,
            owner: self.conn_id,
            shared_credit: None,
            sink: self.events.clone(),
        };
        // Register before consuming: deliveries may arrive at once.
        self.flows().consumers.insert(
            id,
            ConsumerInfo {
                queue: queue.clone(),
                manual: want,
                shared: None,
                active: true,
            },
        );
        if let Err(e) = vhost.consume(queue.name().as_str(), spec) {
            tracing::warn!(client = %self.client_id, error = %e, "consume on the session queue failed");
            self.flows().consumers.remove(&id);
        }
    }

    /// Turns one core event into packets.
    pub fn on_event(&mut self, event: Event, out: &mut BytesMut) {
        match event {
            Event::Deliver(d) => self.deliver(d, out),
            Event::ConsumerCancelled(id) => {
                let live = self
                    .flows
                    .as_ref()
                    .and_then(|f| f.consumers.get(&id))
                    .is_some_and(|c| c.active);
                if live && self.stage == Stage::Open {
                    self.fail(
                        Disconnect::new(
                            DisconnectReasonCode::AdministrativeAction,
                            "a subscription's queue was deleted",
                        ),
                        out,
                    );
                }
            }
            Event::CloseConnection(reason) => {
                let code = match reason.as_str() {
                    TAKEN_OVER => DisconnectReasonCode::SessionTakenOver,
                    SHUTTING_DOWN => DisconnectReasonCode::ServerShuttingDown,
                    _ => DisconnectReasonCode::AdministrativeAction,
                };
                self.fail(Disconnect::new(code, reason), out);
            }
        }
    }

    fn deliver(&mut self, d: Delivery, out: &mut BytesMut) {
        let flows = self.flows();
        let Some(info) = flows.consumers.get(&d.consumer) else {
            // Not ours: give it back.
            flows.strays.push((d.queue, d.id));
            return;
        };
        let manual = info.manual;
        let shared = info.shared.clone();
        match flows.sent.iter_mut().find(|(c, _)| *c == d.consumer) {
            Some((_, n)) => *n += 1,
            None => flows.sent.push((d.consumer, 1)),
        }
        let settle = manual.then_some((d.consumer, d.id));
        if self.stage != Stage::Open {
            if let Some((q, id)) = settle {
                self.settle_later(q, id, Settle::Requeue);
            }
            return;
        }
        let key = d.message.routing_key().as_str();
        let (qos, retain, sub_ids) = {
            let st = self.persist();
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut was_retained: Option<bool> = None;
            let mut ids = Vec::new();
            let origin = d.message.origin();
            let mine = origin == Some(&*self.client_id);
            let mut visit = |s: &Subscription| {
                if s.no_local && mine {
                    return;
                }
                qos = Some(qos.map_or(s.qos, |q| q.max(s.qos)));
                // The header is looked up only for a subscription that asks.
                retain |= s.retain_as_published
                    && *was_retained.get_or_insert_with(|| published_retained(&d.message));
                ids.extend(s.id);
            };
            match &shared {
                Some(raw) => st.subscriptions.get(raw).into_iter().for_each(&mut visit),
                None => {
                    // With a single subscription the queue's one binding
                    // already matched: no need to match again.
                    let single = st.subscriptions.len() == 1;
                    st.subscriptions
                        .values()
                        .filter(|s| s.filter.group.is_none() && (single || s.matcher.matches(key)))
                        .for_each(&mut visit);
                }
            }
            (qos, retain, ids)
        };
        let Some(granted) = qos else {
            // No subscription wants it (any more).
            if let Some((q, id)) = settle {
                let how = if shared.is_some() {
                    Settle::Requeue
                } else {
                    Settle::Ack
                };
                self.settle_later(q, id, how);
            }
            return;
        };
        let qos = if granted == QoS::AtMostOnce {
            granted
        } else {
            granted.min(published_qos(&d.message))
        };
        self.send(
            Pending {
                message: d.message,
                qos,
                retain,
                dup: d.redelivered,
                sub_ids,
                settle,
            },
            out,
        );
    }

    fn window_open(&self) -> bool {
        self.in_flight() < usize::from(self.client_receive_max)
    }

    fn send(&mut self, p: Pending, out: &mut BytesMut) {
        if p.qos != QoS::AtMostOnce
            && (!self.window_open() || self.flows.as_ref().is_some_and(|f| !f.held.is_empty()))
        {
            self.flows().held.push_back(p);
            return;
        }
        self.write_publish(p, out);
    }

    fn drain_held(&mut self, out: &mut BytesMut) {
        while self.window_open() {
            let Some(p) = self.flows.as_mut().and_then(|f| f.held.pop_front()) else {
                return;
            };
            self.write_publish(p, out);
        }
    }

    /// The in-flight PUBLISH `id` acknowledges, taken out. A table
    /// emptied after a burst keeps its room for the next, unless the
    /// burst was large enough that holding on to it would weigh on an
    /// idle connection.
    fn take_outbound(&mut self, id: u16) -> Option<Outgoing> {
        let f = self.flows.as_mut()?;
        let o = f.outbound.remove(&id);
        if f.outbound.is_empty() && f.outbound.capacity() > OUTBOUND_KEPT {
            f.outbound.release_spare();
        }
        o
    }

    fn alloc_packet_id(&mut self) -> NonZeroU16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            // An id still in use waits for a later round: any free id
            // will do.
            let in_use = self
                .flows
                .as_ref()
                .is_some_and(|f| f.outbound.contains(&id));
            if !in_use && (self.released_len == 0 || !self.persist().released.contains(&id)) {
                return NonZeroU16::new(id).expect("ids start at 1");
            }
        }
    }

    fn write_publish(&mut self, p: Pending, out: &mut BytesMut) {
        if properties::remaining_expiry(&p.message) == Some(0) {
            if let Some((q, id)) = p.settle {
                self.settle_later(q, id, Settle::Ack);
            }
            return;
        }
        let mqtt = self.broker.stats.protocol(Protocol::Mqtt);
        mqtt.delivered.inc();
        if p.dup {
            mqtt.redelivered.inc();
        }
        let key = p.message.routing_key().as_str();
        let mut send_topic = true;
        let mut new_alias = None;
        let props = if self.v5() {
            let mut props = properties::to_mqtt(&p.message);
            props.subscription_ids = p.sub_ids;
            if self.client_alias_max > 0 {
                let client_alias_max = usize::from(self.client_alias_max);
                let aliases = &self.flows().aliases_out;
                if let Some(&alias) = aliases.get(key) {
                    props.topic_alias = Some(alias);
                    send_topic = false;
                } else if aliases.len() < client_alias_max {
                    let alias =
                        NonZeroU16::new(aliases.len() as u16 + 1).expect("aliases start at 1");
                    props.topic_alias = Some(alias);
                    new_alias = Some(alias);
                }
            }
            Some(props)
        } else {
            None
        };
        let packet_id = (p.qos != QoS::AtMostOnce).then(|| self.alloc_packet_id());
        let publish = OutPublish {
            key: send_topic.then_some(key),
            qos: p.qos,
            dup: p.dup,
            retain: p.retain,
            packet_id,
            properties: props.as_ref(),
            payload: p.message.body(),
        };
        let written = match &self.writer {
            Some(w) => w.write_publish(&publish, out),
            None => Ok(()),
        };
        if let Err(e) = written {
            // Over the client's Maximum Packet Size: discarded as if sent
            // (MQTT-3.1.2-25).
            tracing::debug!(client = %self.client_id, error = %e, "PUBLISH dropped");
            if let Some((q, id)) = p.settle {
                self.settle_later(q, id, Settle::Ack);
            }
            return;
        }
        if let Some(alias) = new_alias {
            self.flows().aliases_out.insert(key.to_owned(), alias);
        }
        match packet_id {
            Some(id) => {
                self.flows().outbound.insert(
                    id.get(),
                    Outgoing {
                        qos: p.qos,
                        settle: p.settle,
                    },
                );
            }
            None => {
                if let Some((q, id)) = p.settle {
                    self.settle_later(q, id, Settle::Ack);
                }
            }
        }
    }

    /// Settles what this round of packets and events decided, one queue
    /// lock per queue.
    pub fn end_of_batch(&mut self) {
        let Some(flows) = &mut self.flows else {
            return;
        };
        if let Some(r) = &self.registration
            && flows.consumers.len() != self.listed_consumers as usize
        {
            self.listed_consumers = flows.consumers.len() as u32;
            r.set_lane(LaneInfo {
                number: 1,
                consumers: self.listed_consumers,
                ..LaneInfo::default()
            });
        }
        if flows.settles.is_empty() && flows.strays.is_empty() {
            return;
        }
        let Some(vhost) = &self.vhost else {
            flows.settles.clear();
            flows.strays.clear();
            return;
        };
        flows.settle(vhost);
    }

    /// After the write buffer reached the socket: reopen the consumers'
    /// send windows.
    pub fn after_write(&mut self) {
        let Some(flows) = &mut self.flows else {
            return;
        };
        if let Some(v) = &self.vhost {
            flows.report_sent(v);
        } else {
            flows.sent.clear();
        }
    }

    /// Releases everything the connection holds and says what is left to
    /// do: the will and the session's expiry. Safe to call more than once.
    pub fn release(&mut self) -> Farewell {
        self.stage = Stage::Done;
        self.registration = None;
        let Some(vhost) = self.vhost.take() else {
            return Farewell::default();
        };
        // Settle what the client did acknowledge, then detach each consumer
        // putting back what it never acknowledged. Requeueing before the
        // detach would hand those deliveries straight back to the consumer
        // being detached, and a resumed session would never see them.
        if let Some(mut flows) = self.flows.take() {
            flows.settle(&vhost);
            flows.outbound.clear();
            flows.held.clear();
            flows.report_sent(&vhost);
            // A consumer already cancelled (an UNSUBSCRIBE, a switch to
            // manual acks) may still have deliveries outstanding: those too.
            for (id, info) in flows.consumers.drain() {
                vhost.cancel_and_requeue(&info.queue, id);
            }
        }
        let durable = self.session_expiry > 0;
        let generation = if self.holds_name {
            self.holds_name = false;
            vhost
                .sessions()
                .release(&self.client_id, self.conn_id, durable)
        } else {
            None
        };
        super::durable::released(&vhost, &self.client_id, self.session_expiry, generation);
        if !durable
            && generation.is_some()
            && let Some(q) = &self.queue
            && q.spec().durable
        {
            // DISCONNECT set the session expiry to 0: the session ends now.
            let _ = vhost.delete_queue(q.name().as_str(), false, false, None);
        }
        vhost.connection_closed(self.conn_id);
        let taken_over = generation.is_none();
        let will = self
            .will
            .take()
            .filter(|_| !self.clean_disconnect)
            .and_then(|mut w| {
                if !durable {
                    w.delay = 0;
                } else if self.session_expiry != u32::MAX {
                    w.delay = w.delay.min(self.session_expiry);
                }
                // Taken over: the session goes on, so only an undelayed will fires.
                (!taken_over || w.delay == 0).then_some(w)
            });
        Farewell {
            client_id: self.client_id.to_string(),
            generation,
            will,
            expiry: (durable && generation.is_some() && self.session_expiry != u32::MAX)
                .then_some(self.session_expiry),
            queue: self.queue.take().map(|q| q.name().clone()),
            vhost: Some(vhost),
        }
    }
}

/// The queue holding a session's subscriptions (RabbitMQ's name for it).
pub(super) fn session_queue_name(client_id: &str) -> QueueName {
    QueueName::from(format!("mqtt-subscription-{client_id}qos1"))
}

/// Binding arguments that record a subscription on its binding, so a
/// durable session's subscriptions can be read back from its queue.
const ARG_FILTER: &str = "x-mqtt-filter";
const ARG_QOS: &str = "x-mqtt-qos";
const ARG_NO_LOCAL: &str = "x-mqtt-no-local";
const ARG_RETAIN_AS_PUBLISHED: &str = "x-mqtt-retain-as-published";
const ARG_SUBSCRIPTION_ID: &str = "x-mqtt-subscription-id";

impl Subscription {
    /// The binding of the session's queue that carries this subscription.
    fn binding(&self, queue: QueueName, raw: &str) -> BindingSpec {
        let mut spec = binding_to(queue, &self.filter.key);
        let args = &mut spec.arguments;
        args.insert(ARG_FILTER.into(), Value::Str(raw.to_owned()));
        args.insert(ARG_QOS.into(), Value::U8(self.qos.value()));
        args.insert(ARG_NO_LOCAL.into(), Value::Bool(self.no_local));
        args.insert(
            ARG_RETAIN_AS_PUBLISHED.into(),
            Value::Bool(self.retain_as_published),
        );
        if let Some(id) = self.id {
            args.insert(ARG_SUBSCRIPTION_ID.into(), Value::U32(id.get()));
        }
        spec
    }

    /// A subscription read back from its binding.
    pub(super) fn from_binding(b: &BindingSpec) -> Option<(String, Subscription)> {
        let args = &b.arguments;
        let raw = args.get(ARG_FILTER)?.as_str()?.to_owned();
        let filter = topic::parse_filter(&raw).ok()?;
        let flag = |k: &str| args.get(k).and_then(Value::as_bool).unwrap_or(false);
        let qos = match args.get(ARG_QOS).and_then(Value::as_i64) {
            Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let sub = Subscription {
            matcher: topic::matcher(&filter.key),
            filter,
            qos,
            no_local: flag(ARG_NO_LOCAL),
            retain_as_published: flag(ARG_RETAIN_AS_PUBLISHED),
            id: args
                .get(ARG_SUBSCRIPTION_ID)
                .and_then(Value::as_i64)
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new),
        };
        Some((raw, sub))
    }
}

fn binding_to(queue: QueueName, key: &str) -> BindingSpec {
    let mut arguments = Headers::new();
    arguments.insert(EXCLUDE_RESERVED.into(), Value::Bool(true));
    BindingSpec {
        source: ExchangeName::from(RETAINING_EXCHANGE),
        destination: Destination::Queue(queue),
        key: RoutingKey::from(key),
        arguments,
    }
}

impl Flows {
    /// Settles what this batch decided: per consumer and kind, in the
    /// order first seen, one queue lock each.
    fn settle(&mut self, vhost: &Arc<VHost>) {
        for (queue, id) in self.strays.drain(..) {
            let after = queue.settle(&[id], Settle::Requeue);
            vhost.settle_aftermath(&queue, after);
        }
        while let Some(&(consumer, _, how)) = self.settles.first() {
            let ids = &mut self.settle_ids;
            ids.clear();
            self.settles.retain(|&(c, id, h)| {
                let same = c == consumer && h == how;
                if same {
                    ids.push(id);
                }
                !same
            });
            if let Some(info) = self.consumers.get(&consumer) {
                let after = info.queue.settle(ids, how);
                vhost.settle_aftermath(&info.queue, after);
            }
        }
    }

    /// Reports the deliveries written to their queues.
    fn report_sent(&mut self, vhost: &Arc<VHost>) {
        for (consumer, n) in self.sent.drain(..) {
            if let Some(info) = self.consumers.get(&consumer) {
                let after = info.queue.sent(consumer, n);
                vhost.settle_aftermath(&info.queue, after);
            }
        }
    }
}

fn write_packet(
    writer: &mut Option<Writer>,
    peer: SocketAddr,
    packet: v5::Packet,
    out: &mut BytesMut,
) {
    if let Some(w) = writer
        && let Err(e) = w.write(packet, out)
    {
        tracing::debug!(%peer, error = %e, "packet not written");
    }
}

fn ack(packet_id: NonZeroU16) -> v5::PublishAck {
    v5::PublishAck {
        packet_id,
        reason_code: PublishAckReason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}

fn ack2(packet_id: NonZeroU16) -> v5::PublishAck2 {
    v5::PublishAck2 {
        packet_id,
        reason_code: PublishAck2Reason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[rng.random_range(0..36)]))
        .collect()
}

/// Publishes a will now (connection.rs calls it when the delay is over).
pub fn publish_will(vhost: &VHost, will: &Will) {
    if let Err(e) = vhost.publish(will.message.clone()) {
        tracing::info!(error = %e, "will not published");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::{Limits, NoLog, Users};
    use tokio_util::codec::Decoder as _;

    /// A broker with vhost "/" and guest, journalling nothing.
    pub(crate) fn broker() -> Arc<Broker> {
        broker_with(Arc::new(NoLog))
    }

    /// A broker with vhost "/" and guest, journalling to `log`.
    fn broker_with(log: Arc<dyn crate::core::change::ChangeLog>) -> Arc<Broker> {
        Broker::new(
            &["/"],
            Users::new([User {
                name: "guest".into(),
                password: "guest".into(),
                tags: vec![],
                loopback_only: true,
                vhosts: vec![],
            }]),
            Limits::default(),
            log,
        )
    }

    struct Peer {
        session: Session,
        events: crate::core::event_channel::EventStream,
        out: BytesMut,
        client: v5::Codec,
    }

    impl Peer {
        fn new(broker: &Arc<Broker>, settings: Settings) -> Self {
            let (tx, rx) = crate::core::event_channel::channel();
            Self {
                session: Session::new(
                    broker.clone(),
                    Arc::new(settings),
                    "127.0.0.1:5000".parse().unwrap(),
                    tx,
                ),
                events: rx,
                out: BytesMut::new(),
                client: v5::Codec::new(1 << 20, 1 << 20),
            }
        }

        fn send(&mut self, p: v5::Packet) {
            let inbound = match p {
                v5::Packet::Connect(c) => Inbound::Connect(Version::V5, c),
                other => Inbound::Packet(other),
            };
            self.session.on_packet(inbound, &mut self.out);
            self.session.end_of_batch();
        }

        /// Feeds the core's events to the session, then decodes everything written.
        fn received(&mut self) -> Vec<v5::Packet> {
            while let Ok(e) = self.events.try_recv() {
                self.session.on_event(e, &mut self.out);
            }
            self.session.end_of_batch();
            self.session.after_write();
            let mut got = Vec::new();
            while let Some((p, _)) = self
                .client
                .decode(&mut self.out)
                .expect("server output decodes")
            {
                got.push(p);
            }
            got
        }

        fn connect(&mut self, id: &str, f: impl FnOnce(&mut v5::Connect)) -> v5::ConnectAck {
            let mut c = v5::Connect {
                clean_start: true,
                client_id: id.into(),
                keep_alive: 30,
                ..Default::default()
            };
            f(&mut c);
            self.send(v5::Packet::Connect(Box::new(c)));
            match self.received().into_iter().next() {
                Some(v5::Packet::ConnectAck(a)) => *a,
                other => panic!("CONNACK expected, got {other:?}"),
            }
        }
    }

    fn pid(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    fn publish(topic: &str, qos: QoS, id: Option<u16>, body: &'static [u8]) -> v5::Packet {
        v5::Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos,
            topic: topic.into(),
            packet_id: id.map(pid),
            payload: bytes::Bytes::from_static(body),
            properties: Some(Default::default()),
        }))
    }

    fn subscribe(id: u16, filter: &str, qos: QoS) -> v5::Packet {
        v5::Packet::Subscribe(v5::Subscribe {
            packet_id: pid(id),
            id: None,
            user_properties: vec![],
            topic_filters: vec![(
                filter.into(),
                v5::SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        })
    }

    #[test]
    fn a_publish_grant_holds_only_for_its_generation() {
        assert_eq!(PublishGrant::default().at(0), None);
        let grant = PublishGrant::new(7, true);
        assert_eq!(grant.at(7), Some(true));
        assert_eq!(grant.at(8), None);
        assert_eq!(PublishGrant::new(0, false).at(0), Some(false));
    }

    #[tokio::test]
    async fn connect_subscribe_and_publish_to_oneself_at_qos1() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        let connack = c.connect("", |_| {});
        assert_eq!(connack.reason_code, ConnectAckReason::Success);
        assert!(
            connack.assigned_client_id.is_some(),
            "an empty client id gets one assigned"
        );
        c.send(subscribe(1, "a/+", QoS::AtLeastOnce));
        let got = c.received();
        assert!(
            matches!(&got[..], [v5::Packet::SubscribeAck(s)] if s.status == [SubscribeAckReason::GrantedQos1]),
            "{got:?}"
        );
        c.send(publish("a/b", QoS::AtLeastOnce, Some(7), b"hi"));
        let got = c.received();
        assert!(
            matches!(&got[0], v5::Packet::PublishAck(a) if a.packet_id == pid(7) && a.reason_code == PublishAckReason::Success),
            "{got:?}"
        );
        let v5::Packet::Publish(p) = &got[1] else {
            panic!("delivery expected: {got:?}")
        };
        assert_eq!(&*p.topic, "a/b");
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert_eq!(c.session.in_flight(), 1);
        c.send(v5::Packet::PublishAck(ack(p.packet_id.unwrap())));
        assert_eq!(c.session.in_flight(), 0);
        let q = b.vhost("/").unwrap().queues();
        assert_eq!(q[0].unacked_count(), 0, "PUBACK settled the delivery");
    }

    /// A queued message may wait long: its short body must not keep the
    /// packet's read buffer alive (core::detach_body).
    #[tokio::test]
    async fn a_queued_message_does_not_hold_its_read_buffer() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        c.connect("keeper", |_| {});
        c.send(subscribe(1, "k/#", QoS::AtLeastOnce));
        c.received();
        let read_buffer = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let range = read_buffer.as_ptr_range();
        let v5::Packet::Publish(mut p) = publish("k/1", QoS::AtLeastOnce, Some(1), b"") else {
            unreachable!("publish() makes a PUBLISH")
        };
        p.payload = read_buffer.slice(100..200);
        c.send(v5::Packet::Publish(p));
        let Ok(Event::Deliver(d)) = c.events.try_recv() else {
            panic!("the subscription got no delivery");
        };
        assert_eq!(d.message.body(), &[7u8; 100][..]);
        assert!(
            !range.contains(&d.message.body().as_ptr()),
            "the queued body still points into the read buffer"
        );
    }

    #[tokio::test]
    async fn a_second_connect_is_a_protocol_error() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        c.connect("c1", |_| {});
        c.send(v5::Packet::Connect(Box::default()));
        let got = c.received();
        assert!(
            matches!(&got[..], [v5::Packet::Disconnect(d)] if d.reason_code == DisconnectReasonCode::ProtocolError),
            "{got:?}"
        );
        assert!(c.session.is_done());
    }

    #[tokio::test]
    async fn a_repeated_qos2_publish_is_routed_once() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        c.connect("c2", |_| {});
        c.send(subscribe(1, "x", QoS::AtMostOnce));
        c.received();
        c.send(publish("x", QoS::ExactlyOnce, Some(3), b"once"));
        c.send(publish("x", QoS::ExactlyOnce, Some(3), b"once"));
        let got = c.received();
        let recs = got
            .iter()
            .filter(|p| matches!(p, v5::Packet::PublishReceived(_)))
            .count();
        let pubs = got
            .iter()
            .filter(|p| matches!(p, v5::Packet::Publish(_)))
            .count();
        assert_eq!((recs, pubs), (2, 1), "{got:?}");
        c.send(v5::Packet::PublishRelease(ack2(pid(3))));
        let got = c.received();
        assert!(
            matches!(&got[..], [v5::Packet::PublishComplete(a)] if a.reason_code == PublishAck2Reason::Success)
        );
        c.send(v5::Packet::PublishRelease(ack2(pid(3))));
        let got = c.received();
        assert!(
            matches!(&got[..], [v5::Packet::PublishComplete(a)] if a.reason_code == PublishAck2Reason::PacketIdNotFound)
        );
    }

    #[tokio::test]
    async fn qos2_deliveries_wait_for_pubrec_then_pubcomp() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        c.connect("c3", |_| {});
        c.send(subscribe(1, "x", QoS::ExactlyOnce));
        c.received();
        c.send(publish("x", QoS::ExactlyOnce, Some(1), b"q2"));
        let got = c.received();
        let Some(v5::Packet::Publish(p)) = got.iter().find(|p| matches!(p, v5::Packet::Publish(_)))
        else {
            panic!("{got:?}")
        };
        let id = p.packet_id.unwrap();
        c.send(v5::Packet::PublishReceived(ack(id)));
        let got = c.received();
        assert!(matches!(&got[..], [v5::Packet::PublishRelease(r)] if r.packet_id == id));
        assert_eq!(c.session.in_flight(), 1, "still in flight until PUBCOMP");
        c.send(v5::Packet::PublishComplete(ack2(id)));
        assert_eq!(c.session.in_flight(), 0);
    }

    #[tokio::test]
    async fn topic_aliases_are_checked_and_resolved() {
        let b = broker();
        let mut c = Peer::new(
            &b,
            Settings {
                topic_alias_max: 2,
                ..Settings::default()
            },
        );
        c.connect("c4", |_| {});
        c.send(subscribe(1, "t/#", QoS::AtMostOnce));
        c.received();
        let with_alias = |topic: &str, alias: u16| {
            v5::Packet::Publish(Box::new(Publish {
                dup: false,
                retain: false,
                qos: QoS::AtMostOnce,
                topic: topic.into(),
                packet_id: None,
                payload: bytes::Bytes::from_static(b"a"),
                properties: Some(v5::PublishProperties {
                    topic_alias: NonZeroU16::new(alias),
                    ..Default::default()
                }),
            }))
        };
        c.send(with_alias("t/1", 1));
        c.send(with_alias("", 1));
        let got = c.received();
        let topics: Vec<&str> = got
            .iter()
            .filter_map(|p| match p {
                v5::Packet::Publish(p) => Some(&*p.topic),
                _ => None,
            })
            .collect();
        assert_eq!(topics, ["t/1", "t/1"]);
        c.send(with_alias("t/2", 3));
        let got = c.received();
        assert!(
            matches!(&got[..], [v5::Packet::Disconnect(d)] if d.reason_code == DisconnectReasonCode::TopicAliasInvalid),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn inbound_qos2_beyond_receive_maximum_disconnects() {
        let b = broker();
        let mut c = Peer::new(
            &b,
            Settings {
                receive_max: 1,
                ..Settings::default()
            },
        );
        let connack = c.connect("c5", |_| {});
        assert_eq!(connack.receive_max.get(), 1);
        c.send(publish("x", QoS::ExactlyOnce, Some(1), b"1"));
        c.send(publish("x", QoS::ExactlyOnce, Some(2), b"2"));
        let got = c.received();
        assert!(
            matches!(got.last(), Some(v5::Packet::Disconnect(d)) if d.reason_code == DisconnectReasonCode::ReceiveMaximumExceeded),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn outbound_window_holds_deliveries_beyond_the_clients_receive_maximum() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        c.connect("c6", |c| c.receive_max = NonZeroU16::new(2));
        c.send(subscribe(1, "w", QoS::AtLeastOnce));
        c.received();
        for i in 1..=4 {
            c.send(publish("w", QoS::AtLeastOnce, Some(i), b"m"));
        }
        let got = c.received();
        let ids: Vec<NonZeroU16> = got
            .iter()
            .filter_map(|p| match p {
                v5::Packet::Publish(p) => p.packet_id,
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 2, "two in flight at most: {got:?}");
        c.send(v5::Packet::PublishAck(ack(ids[0])));
        let got = c.received();
        let more = got
            .iter()
            .filter(|p| matches!(p, v5::Packet::Publish(_)))
            .count();
        assert_eq!(more, 1, "one PUBACK lets one more out");
    }

    #[tokio::test]
    async fn server_keep_alive_caps_the_clients_and_anonymous_can_be_refused() {
        let b = broker();
        let mut c = Peer::new(
            &b,
            Settings {
                max_keep_alive: Some(10),
                ..Settings::default()
            },
        );
        let connack = c.connect("c7", |c| c.keep_alive = 0);
        assert_eq!(connack.server_keepalive_sec, Some(10));
        assert_eq!(c.session.keep_alive(), 10);
        let mut d = Peer::new(
            &b,
            Settings {
                anonymous: None,
                ..Settings::default()
            },
        );
        let connack = d.connect("c8", |_| {});
        assert_eq!(connack.reason_code, ConnectAckReason::NotAuthorized);
        let mut e = Peer::new(&b, Settings::default());
        let connack = e.connect("c9", |c| {
            c.username = Some("guest".into());
            c.password = Some(bytes::Bytes::from_static(b"wrong"));
        });
        assert_eq!(connack.reason_code, ConnectAckReason::BadUserNameOrPassword);
        let mut f = Peer::new(&b, Settings::default());
        let connack = f.connect("c10", |c| {
            c.username = Some("nohost:guest".into());
            c.password = Some(bytes::Bytes::from_static(b"guest"));
        });
        assert_eq!(connack.reason_code, ConnectAckReason::NotAuthorized);
    }

    #[tokio::test]
    async fn no_local_and_subscription_identifiers_apply_per_subscription() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        c.connect("c11", |_| {});
        let sub = |id: u16, sid: u32, filter: &str, no_local: bool| {
            v5::Packet::Subscribe(v5::Subscribe {
                packet_id: pid(id),
                id: NonZeroU32::new(sid),
                user_properties: vec![],
                topic_filters: vec![(
                    filter.into(),
                    v5::SubscriptionOptions {
                        qos: QoS::AtMostOnce,
                        no_local,
                        ..Default::default()
                    },
                )],
            })
        };
        c.send(sub(1, 5, "n/#", false));
        c.send(sub(2, 6, "n/+", false));
        c.received();
        c.send(publish("n/x", QoS::AtMostOnce, None, b"1"));
        let got = c.received();
        let [v5::Packet::Publish(p)] = &got[..] else {
            panic!("one copy for overlapping subscriptions: {got:?}")
        };
        let mut ids: Vec<u32> = p
            .properties
            .as_ref()
            .unwrap()
            .subscription_ids
            .iter()
            .map(|n| n.get())
            .collect();
        ids.sort();
        assert_eq!(ids, [5, 6]);
        c.send(sub(3, 7, "n/#", true));
        c.send(sub(4, 8, "n/+", true));
        c.received();
        c.send(publish("n/x", QoS::AtMostOnce, None, b"2"));
        assert!(c.received().is_empty(), "no-local drops our own message");
    }

    #[tokio::test]
    async fn disconnect_with_expiry_zero_ends_a_durable_session() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        let connack = c.connect("c12", |c| {
            c.clean_start = false;
            c.session_expiry_interval_secs = 60;
        });
        assert!(!connack.session_present);
        c.send(subscribe(1, "d/#", QoS::AtLeastOnce));
        c.received();
        let vhost = b.vhost("/").unwrap();
        assert!(
            vhost
                .queue("mqtt-subscription-c12qos1")
                .is_some_and(|q| q.spec().durable)
        );
        c.send(v5::Packet::Disconnect(v5::Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
            session_expiry_interval_secs: Some(0),
            server_reference: None,
            reason_string: None,
            user_properties: vec![],
        }));
        assert!(c.session.is_done());
        let farewell = c.session.release();
        assert!(farewell.will.is_none() && farewell.expiry.is_none());
        assert!(vhost.queue("mqtt-subscription-c12qos1").is_none());
        assert!(!vhost.sessions().contains("c12"));
    }

    /// Numbers records as a journal would and never makes them durable
    /// by itself.
    #[derive(Debug, Default)]
    struct NumberingLog(std::sync::atomic::AtomicU64);

    impl crate::core::change::ChangeLog for NumberingLog {
        fn record(
            &self,
            _: &crate::core::VHostName,
            _: crate::core::change::Change,
        ) -> Option<crate::core::change::Logged> {
            let seq = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            Some(crate::core::change::Logged {
                seq,
                segment: 0,
                offset: 0,
            })
        }
    }

    #[test]
    fn a_repeated_topic_shares_its_names() {
        let mut flows = Flows::default();
        let (e1, k1) = flows.publish_names("plant/3/temp").unwrap();
        let (e2, k2) = flows.publish_names("plant/3/temp").unwrap();
        assert_eq!((e1.as_str(), k1.as_str()), ("amq.topic", "plant.3.temp"));
        assert!(
            std::ptr::eq(k1.as_str(), k2.as_str()),
            "one key for the topic"
        );
        assert!(std::ptr::eq(e1.as_str(), e2.as_str()), "one exchange name");
        let (e3, k3) = flows.publish_names("plant/4/temp").unwrap();
        assert_eq!(k3.as_str(), "plant.4.temp");
        assert!(
            std::ptr::eq(e1.as_str(), e3.as_str()),
            "the exchange stays shared"
        );
        assert!(flows.publish_names("plant/+/temp").is_err());
        let (_, k4) = flows.publish_names("plant/4/temp").unwrap();
        assert!(
            std::ptr::eq(k3.as_str(), k4.as_str()),
            "a refused topic leaves the last one in place"
        );
    }

    #[tokio::test]
    async fn connack_waits_for_the_session_record_it_speaks_of() {
        let log = Arc::new(NumberingLog::default());
        let b = broker_with(log.clone());
        let recorded = || log.0.load(std::sync::atomic::Ordering::Relaxed);
        let mut clean = Peer::new(&b, Settings::default());
        clean.connect("c40", |_| {});
        assert!(
            !clean.session.output_held(),
            "a clean session records nothing"
        );

        let mut c = Peer::new(&b, Settings::default());
        c.connect("c41", |c| {
            c.clean_start = false;
            c.session_expiry_interval_secs = 60;
        });
        let at = recorded();
        assert!(
            c.session.output_held(),
            "a new durable session is recorded first"
        );
        assert!(
            c.session.awaits_durability(),
            "so the connection watches the journal"
        );
        c.session.set_durable(at - 1, &mut c.out);
        assert!(
            c.session.output_held(),
            "held until its own record is durable"
        );
        c.session.set_durable(at, &mut c.out);
        assert!(!c.session.output_held());
        c.send(subscribe(1, "e/#", QoS::AtLeastOnce));
        c.received();
        c.session.set_durable(recorded(), &mut c.out);
        drop(c.session.release());

        // Resumed with an expiry of 0: a crash after CONNACK must find the
        // session ending with this connection, not parked for a minute.
        let mut again = Peer::new(&b, Settings::default());
        let ack = again.connect("c41", |c| c.clean_start = false);
        assert!(ack.session_present);
        assert!(again.session.output_held());
        again.session.set_durable(recorded(), &mut again.out);
        assert!(!again.session.output_held());
    }

    #[tokio::test]
    async fn a_resumed_session_gets_what_the_last_connection_left_unacknowledged() {
        let b = broker();
        let durable = |c: &mut v5::Connect| {
            c.clean_start = false;
            c.session_expiry_interval_secs = 60;
        };
        let mut c = Peer::new(&b, Settings::default());
        c.connect("c13", durable);
        c.send(subscribe(1, "r/#", QoS::AtLeastOnce));
        c.received();
        let mut p = Peer::new(&b, Settings::default());
        p.connect("c13-pub", |_| {});
        p.send(publish("r/1", QoS::AtLeastOnce, Some(1), b"unacked"));
        p.received();
        let got = c.received();
        assert!(
            matches!(&got[..], [v5::Packet::Publish(p)] if !p.dup),
            "{got:?}"
        );
        // The connection ends without a PUBACK.
        drop(c.session.release());
        let mut again = Peer::new(&b, Settings::default());
        let mut connect = v5::Connect {
            client_id: "c13".into(),
            keep_alive: 30,
            ..Default::default()
        };
        durable(&mut connect);
        again.send(v5::Packet::Connect(Box::new(connect)));
        let got = again.received();
        assert!(
            matches!(&got[..], [v5::Packet::ConnectAck(a), v5::Packet::Publish(p)]
                if a.session_present && p.dup && &p.payload[..] == b"unacked"),
            "the delivery comes again, marked DUP: {got:?}"
        );
    }

    #[tokio::test]
    async fn a_clean_session_has_no_state_until_it_subscribes_and_a_durable_one_can_take_over_its_name()
     {
        let b = broker();
        let vhost = b.vhost("/").expect("vhost");
        let mut clean = Peer::new(&b, Settings::default());
        clean.connect("c20", |_| {});
        assert!(clean.session.state.get().is_none());
        assert!(vhost.sessions().contains("c20"));
        clean.send(subscribe(1, "s/1", QoS::AtMostOnce));
        clean.received();
        assert!(clean.session.state.get().is_some());
        let durable = |c: &mut v5::Connect| {
            c.clean_start = false;
            c.session_expiry_interval_secs = 60;
        };
        let mut taker = Peer::new(&b, Settings::default());
        let ack = taker.connect("c20", durable);
        assert!(!ack.session_present, "a clean session is not resumed");
        taker.send(subscribe(1, "s/2", QoS::AtLeastOnce));
        taker.received();
        drop(clean.session.release());
        drop(taker.session.release());
        let mut again = Peer::new(&b, Settings::default());
        assert!(again.connect("c20", durable).session_present);
        let st = again.session.persisted().expect("resumed state");
        assert_eq!(st.subscriptions.keys().collect::<Vec<_>>(), ["s/2"]);
    }

    #[tokio::test]
    async fn acks_with_an_error_reason_code_say_why() {
        let b = broker();
        let mut c = Peer::new(&b, Settings::default());
        c.connect("c14", |_| {});
        c.send(v5::Packet::Subscribe(v5::Subscribe {
            packet_id: pid(1),
            id: None,
            user_properties: vec![],
            topic_filters: vec![
                ("ok/+".into(), v5::SubscriptionOptions::default()),
                ("bad/#/x".into(), v5::SubscriptionOptions::default()),
            ],
        }));
        let got = c.received();
        let [v5::Packet::SubscribeAck(a)] = &got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(
            a.status,
            [
                SubscribeAckReason::GrantedQos0,
                SubscribeAckReason::TopicFilterInvalid
            ]
        );
        assert!(
            a.reason_string
                .as_deref()
                .is_some_and(|s| s.contains("bad/#/x")),
            "{a:?}"
        );
        c.send(v5::Packet::PublishRelease(ack2(pid(9))));
        let got = c.received();
        assert!(
            matches!(&got[..], [v5::Packet::PublishComplete(a)] if a.reason_code == PublishAck2Reason::PacketIdNotFound && a.reason_string.is_some()),
            "{got:?}"
        );
        c.send(subscribe(2, "fine", QoS::AtMostOnce));
        let got = c.received();
        assert!(
            matches!(&got[..], [v5::Packet::SubscribeAck(a)] if a.reason_string.is_none()),
            "no reason string when all is well: {got:?}"
        );
    }
}

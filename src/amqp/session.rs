//! The connection-level state machine: handshake, tuning, the channel
//! table and turning core events into frames. Sans-IO: frames and events
//! in, bytes out; connection.rs owns the socket.

use std::net::SocketAddr;
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::BytesMut;

use super::channel::Channel;
use super::codec::{FrameWriter, Inbound};
use super::error::*;
use crate::core::alarm::Alarms;
use crate::core::change::LogPosition;
use crate::core::names::IdMap;
use crate::core::publisher_flow::PublisherFlow;
use crate::core::queue::Queue;
use crate::core::{
    Access, Broker, ConnectionId, ConnectionInfo, ConsumerId, DeliveryId, Event, EventSink,
    Protocol, Registration, Settle, Stats, User, VHost, WriteCache,
};

/// The largest frame this server accepts or sends, and offers in tune.
pub const FRAME_MAX: u32 = 131_072;
/// Channels per connection offered in tune (RabbitMQ's default).
pub const CHANNEL_MAX: u16 = 2047;
/// Heartbeat interval offered in tune, seconds (RabbitMQ's default).
pub const HEARTBEAT: u16 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitHeader,
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// connection.close sent or received; only close / close-ok matter now.
    Closing,
    /// The socket should be closed once the write buffer is flushed.
    Done,
}

/// Deliveries written for one consumer since the last socket write.
#[derive(Debug)]
struct Sent {
    queue: Arc<Queue>,
    n: u32,
    /// Auto-ack deliveries among them, settled by the write.
    settled: Vec<DeliveryId>,
}

/// Features the client said it understands.
#[derive(Debug, Default, Clone, Copy)]
struct ClientCaps {
    consumer_cancel_notify: bool,
    connection_blocked: bool,
}

/// One AMQP connection's protocol state.
#[derive(Debug)]
pub struct Session {
    pub(super) broker: Arc<Broker>,
    peer: SocketAddr,
    pub(super) conn_id: ConnectionId,
    stage: Stage,
    pub(super) user: Option<User>,
    pub(super) vhost: Option<Arc<VHost>>,
    pub(super) frame_max: usize,
    channel_max: u16,
    heartbeat: u16,
    pub(super) channels: IdMap<u16, Channel>,
    /// Which channel each of this connection's consumers lives on.
    pub(super) consumers: IdMap<ConsumerId, u16>,
    pub(super) events: EventSink,
    pub(super) writer: FrameWriter,
    caps: ClientCaps,
    /// Deliveries written this round, reported to their queues after the
    /// write so their send windows reopen.
    sent: IdMap<ConsumerId, Sent>,
    /// The channel of the frame being handled, which a channel error closes.
    pub(super) current_channel: u16,
    /// Resource alarms in force.
    alarms: Alarms,
    /// A publish arrived during an alarm: read nothing more until it clears.
    held: bool,
    /// A queue published to whose consumers are behind: the connection
    /// reads nothing more until they catch up (or a while has passed).
    pub(super) flow: PublisherFlow,
    /// connection.blocked was sent and unblocked is still due.
    told_blocked: bool,
    /// The client asked to close (we answered close-ok).
    client_closed: bool,
    /// A channel was closed since the connection last asked
    /// (`take_channel_closed`).
    pub(super) channel_closed: bool,
    /// The highest journal position known durable.
    durable: LogPosition,
    /// The broker's counters for AMQP.
    pub(super) stats: Arc<Stats>,
    /// This connection's entry in the broker's connection registry, from
    /// connection.open-ok until the connection is released.
    pub(super) registration: Option<Registration>,
    client_name: Option<String>,
    client_product: Option<String>,
    /// Exchanges this user may publish to, valid while the user table's
    /// generation is unchanged.
    write_allowed: WriteCache,
}

impl Session {
    /// A session for a freshly accepted socket.
    pub fn new(broker: Arc<Broker>, peer: SocketAddr, events: EventSink) -> Self {
        Self {
            peer,
            conn_id: ConnectionId(crate::core::next_id()),
            stage: Stage::AwaitHeader,
            user: None,
            vhost: None,
            frame_max: FRAME_MAX as usize,
            channel_max: CHANNEL_MAX,
            heartbeat: HEARTBEAT,
            channels: IdMap::default(),
            consumers: IdMap::default(),
            events,
            writer: FrameWriter::default(),
            caps: ClientCaps::default(),
            sent: IdMap::default(),
            current_channel: 0,
            durable: 0,
            alarms: Alarms::default(),
            held: false,
            flow: PublisherFlow::default(),
            told_blocked: false,
            client_closed: false,
            channel_closed: false,
            stats: broker.stats.clone(),
            registration: None,
            client_name: None,
            client_product: None,
            write_allowed: WriteCache::default(),
            broker,
        }
    }

    /// The negotiated frame-max.
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }
    /// The negotiated heartbeat interval in seconds (0: off).
    pub fn heartbeat(&self) -> u16 {
        if self.stage == Stage::Open {
            self.heartbeat
        } else {
            0
        }
    }
    /// The socket can be closed once the output is flushed.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }
    /// The handshake is over and the connection is usable.
    pub fn is_open(&self) -> bool {
        self.stage == Stage::Open
    }
    /// connection.close has been sent and its close-ok is awaited.
    pub fn is_closing(&self) -> bool {
        self.stage == Stage::Closing
    }
    /// The authenticated user, for logs.
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }

    /// Handles one inbound frame.
    pub fn on_frame(&mut self, frame: Inbound, out: &mut BytesMut) {
        let lane = match &frame {
            Inbound::Method(ch, m) if *ch != 0 && changes_lane(m) => Some(*ch),
            _ => None,
        };
        if let Err(reply) = self.dispatch(frame, out) {
            self.fail(reply, out);
        }
        if let Some(ch) = lane {
            self.sync_lane(ch);
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

    /// Refuses with ACCESS_REFUSED unless the user may do `access` to the
    /// named resource in this vhost.
    pub(super) fn authorize(
        &mut self,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), Reply> {
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
        .map_err(|refusal| Reply::channel(ACCESS_REFUSED, format!("ACCESS_REFUSED - {refusal}")))
    }

    /// Reports a codec error: the stream cannot be trusted any further.
    pub fn on_codec_error(&mut self, err: &super::codec::CodecError, out: &mut BytesMut) {
        use super::codec::CodecError;
        match err {
            CodecError::BadProtocolHeader => {
                // The spec's answer to a wrong greeting: our own header, then close.
                out.extend_from_slice(super::codec::PROTOCOL_HEADER);
                self.stage = Stage::Done;
            }
            CodecError::PrefetchSize(_) => self.fail(
                Reply::connection(NOT_IMPLEMENTED, format!("NOT_IMPLEMENTED - {err}")),
                out,
            ),
            CodecError::TooLarge { .. } => self.fail(
                Reply::connection(FRAME_ERROR, format!("FRAME_ERROR - {err}")),
                out,
            ),
            _ => self.fail(
                Reply::connection(FRAME_ERROR, format!("FRAME_ERROR - {err}")),
                out,
            ),
        }
    }

    /// Closes a channel or the connection with an error reply.
    pub(super) fn fail(&mut self, reply: Reply, out: &mut BytesMut) {
        tracing::debug!(peer = %self.peer, code = reply.code, text = %reply.text, "closing with error");
        match reply.scope {
            Scope::Channel => {
                let ch = self.current_channel;
                self.close_channel_locally(ch);
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.closing = true;
                }
                self.writer.method(
                    out,
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                        reply_code: reply.code,
                        reply_text: short(&reply.text),
                        class_id: reply.cause.0,
                        method_id: reply.cause.1,
                    })),
                );
            }
            Scope::Connection => self.close_connection(reply.code, &reply.text, reply.cause, out),
        }
    }

    /// Sends connection.close (once) and releases everything the
    /// connection holds.
    pub fn close_connection(
        &mut self,
        code: u16,
        text: &str,
        cause: (u16, u16),
        out: &mut BytesMut,
    ) {
        if matches!(self.stage, Stage::Closing | Stage::Done) {
            return;
        }
        if matches!(self.stage, Stage::AwaitHeader) {
            self.stage = Stage::Done;
            return;
        }
        self.writer.method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: code,
                reply_text: short(text),
                class_id: cause.0,
                method_id: cause.1,
            })),
        );
        self.release();
        self.stage = Stage::Closing;
    }

    /// Releases every channel's consumers and deliveries and the exclusive
    /// queues. Safe to call more than once.
    pub fn release(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for ch in ids {
            self.close_channel_locally(ch);
        }
        self.channels.clear();
        self.registration = None;
        if let Some(vhost) = &self.vhost {
            vhost.connection_closed(self.conn_id);
        }
    }

    fn dispatch(&mut self, frame: Inbound, out: &mut BytesMut) -> Result<(), Reply> {
        match (self.stage, frame) {
            (Stage::Done, _) => Ok(()),
            (Stage::AwaitHeader, Inbound::ProtocolHeader) => {
                self.send_start(out);
                self.stage = Stage::AwaitStartOk;
                Ok(())
            }
            (_, Inbound::Heartbeat(0)) => Ok(()),
            (_, Inbound::Heartbeat(ch)) => Err(Reply::connection(
                FRAME_ERROR,
                format!("FRAME_ERROR - heartbeat on channel {ch}"),
            )),
            (Stage::Closing, Inbound::Method(0, AMQPClass::Connection(m))) => {
                match m {
                    connection::AMQPMethod::CloseOk(_) => self.stage = Stage::Done,
                    connection::AMQPMethod::Close(_) => {
                        self.send_close_ok(out);
                        self.stage = Stage::Done;
                    }
                    _ => {}
                }
                Ok(())
            }
            (Stage::Closing, _) => Ok(()),
            (
                Stage::AwaitStartOk,
                Inbound::Method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(m))),
            ) => self.on_start_ok(m, out),
            (
                Stage::AwaitTuneOk,
                Inbound::Method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(m))),
            ) => self.on_tune_ok(m),
            (
                Stage::AwaitOpen,
                Inbound::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(m))),
            ) => self.on_open(m, out),
            (Stage::Open, Inbound::Method(0, AMQPClass::Connection(m))) => {
                self.on_connection_method(m, out)
            }
            (Stage::Open, Inbound::Method(0, m)) => Err(Reply::connection(
                COMMAND_INVALID,
                "COMMAND_INVALID - only connection methods are allowed on channel 0",
            )
            .caused_by(ids(&m))),
            (Stage::Open, Inbound::Method(ch, m)) => {
                self.current_channel = ch;
                self.channel_method(ch, m, out)
            }
            (Stage::Open, Inbound::Header(ch, h)) => {
                self.current_channel = ch;
                self.channel_header(ch, h)
            }
            (Stage::Open, Inbound::Body(ch, b)) => {
                self.current_channel = ch;
                self.channel_body(ch, b, out)
            }
            (_, other) => Err(Reply::connection(
                UNEXPECTED_FRAME,
                format!(
                    "UNEXPECTED_FRAME - {} during the handshake",
                    describe(&other)
                ),
            )),
        }
    }

    fn send_start(&mut self, out: &mut BytesMut) {
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        for (k, v) in [
            ("product", "ferrymq"),
            ("version", env!("CARGO_PKG_VERSION")),
            ("platform", "Rust"),
            ("cluster_name", "ferrymq"),
            ("copyright", "ferrymq contributors"),
            ("information", "Licensed under the Apache License 2.0"),
        ] {
            props.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        self.writer.method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })),
        );
    }

    fn on_start_ok(&mut self, m: connection::StartOk, out: &mut BytesMut) -> Result<(), Reply> {
        let text = |key: &str| match m.client_properties.inner().get(key) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        };
        self.client_name = text("connection_name");
        self.client_product = text("product");
        if let Some(AMQPValue::FieldTable(caps)) = m.client_properties.inner().get("capabilities") {
            let on = |k: &str| matches!(caps.inner().get(k), Some(AMQPValue::Boolean(true)));
            self.caps.consumer_cancel_notify = on("consumer_cancel_notify");
            self.caps.connection_blocked = on("connection.blocked");
        }
        let (user, pass) = match m.mechanism.as_str() {
            "PLAIN" => parse_plain(m.response.as_bytes()),
            "AMQPLAIN" => parse_amqplain(m.response.as_bytes()),
            other => {
                return Err(Reply::connection(
                    ACCESS_REFUSED,
                    format!("ACCESS_REFUSED - unsupported authentication mechanism '{other}'"),
                ));
            }
        }
        .ok_or_else(|| {
            Reply::connection(
                SYNTAX_ERROR,
                "SYNTAX_ERROR - malformed authentication response",
            )
        })?;
        match self.broker.users.authenticate(&user, &pass, self.peer.ip()) {
            Ok(u) => self.user = Some(u),
            Err(e) => {
                tracing::info!(peer = %self.peer, user = %user, error = %e, "login refused");
                return Err(Reply::connection(ACCESS_REFUSED, e.to_string()));
            }
        }
        self.writer.method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: CHANNEL_MAX,
                frame_max: FRAME_MAX,
                heartbeat: HEARTBEAT,
            })),
        );
        self.stage = Stage::AwaitTuneOk;
        Ok(())
    }

    fn on_tune_ok(&mut self, m: connection::TuneOk) -> Result<(), Reply> {
        // A client may only lower what tune offered (RabbitMQ closes with
        // NOT_ALLOWED too); 0 means "no limit of its own".
        if m.frame_max > FRAME_MAX {
            return Err(Reply::connection(
                NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - frame_max={} > {FRAME_MAX} max size",
                    m.frame_max
                ),
            ));
        }
        if m.channel_max > CHANNEL_MAX {
            return Err(Reply::connection(
                NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - channel_max={} > {CHANNEL_MAX} max",
                    m.channel_max
                ),
            ));
        }
        let frame_max = if m.frame_max == 0 {
            FRAME_MAX
        } else {
            m.frame_max.min(FRAME_MAX)
        };
        if frame_max < 4096 {
            return Err(Reply::connection(
                SYNTAX_ERROR,
                format!("SYNTAX_ERROR - frame_max={frame_max} < 4096 min size"),
            ));
        }
        self.frame_max = frame_max as usize;
        self.channel_max = if m.channel_max == 0 {
            CHANNEL_MAX
        } else {
            m.channel_max.min(CHANNEL_MAX)
        };
        self.heartbeat = m.heartbeat;
        self.stage = Stage::AwaitOpen;
        Ok(())
    }

    fn on_open(&mut self, m: connection::Open, out: &mut BytesMut) -> Result<(), Reply> {
        let name = m.virtual_host.as_str();
        let user = self
            .user
            .as_ref()
            .expect("open follows a successful start-ok");
        let vhost = self.broker.vhost(name).ok_or_else(|| {
            Reply::connection(NOT_ALLOWED, format!("NOT_ALLOWED - vhost {name} not found"))
        })?;
        self.broker
            .users
            .check_access(&user.name, name)
            .map_err(|e| Reply::connection(NOT_ALLOWED, format!("NOT_ALLOWED - {e}")))?;
        self.registration = Some(self.broker.connections.register(
            ConnectionInfo {
                id: self.conn_id,
                protocol: Protocol::Amqp,
                peer: self.peer,
                user: user.name.clone(),
                vhost: vhost.name().clone(),
                client_name: self.client_name.take().map(Arc::from),
                client_product: self.client_product.take().map(Box::from),
                connected_at_ms: crate::core::connections::now_ms(),
            },
            self.events.clone(),
        ));
        self.vhost = Some(vhost);
        self.writer.method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.stage = Stage::Open;
        Ok(())
    }

    fn on_connection_method(
        &mut self,
        m: connection::AMQPMethod,
        out: &mut BytesMut,
    ) -> Result<(), Reply> {
        match m {
            connection::AMQPMethod::Close(_) => {
                self.release();
                self.send_close_ok(out);
                self.stage = Stage::Done;
                self.client_closed = true;
                Ok(())
            }
            connection::AMQPMethod::UpdateSecret(_) => {
                // Passwords do not expire here; acknowledging keeps clients
                // that rotate tokens working.
                self.writer.method(
                    out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            // Clients may tell us they are blocked or not; nothing to do.
            connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_) => Ok(()),
            other => Err(Reply::connection(
                COMMAND_INVALID,
                format!("COMMAND_INVALID - unexpected {other:?} on an open connection"),
            )
            .caused_by(ids(&AMQPClass::Connection(other)))),
        }
    }

    fn send_close_ok(&mut self, out: &mut BytesMut) {
        self.writer.method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
    }

    /// Checks a channel id against the negotiated maximum.
    pub(super) fn check_channel_id(&self, ch: u16) -> Result<(), Reply> {
        if ch > self.channel_max {
            return Err(Reply::connection(
                NOT_ALLOWED,
                format!(
                    "NOT_ALLOWED - channel {ch} above the negotiated channel_max {}",
                    self.channel_max
                ),
            ));
        }
        Ok(())
    }

    /// Turns one core event into frames.
    pub fn on_event(&mut self, event: Event, out: &mut BytesMut) {
        match event {
            Event::Deliver(d) => self.deliver(d, out),
            Event::ConsumerCancelled(id) => {
                let Some(ch) = self.consumers.remove(&id) else {
                    return;
                };
                let Some(channel) = self.channels.get_mut(&ch) else {
                    return;
                };
                let Some(tag) = channel.forget_consumer(id) else {
                    return;
                };
                if self.caps.consumer_cancel_notify && !channel.closing {
                    self.writer.method(
                        out,
                        ch,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: short(&tag),
                            nowait: true,
                        })),
                    );
                }
                self.sync_lane(ch);
            }
            Event::CloseConnection(reason) => self.close_connection(
                CONNECTION_FORCED,
                &format!("CONNECTION_FORCED - {reason}"),
                (0, 0),
                out,
            ),
        }
    }

    fn deliver(&mut self, d: crate::core::Delivery, out: &mut BytesMut) {
        let ch = self.consumers.get(&d.consumer).copied();
        let channel = ch.and_then(|ch| self.channels.get_mut(&ch).map(|c| (ch, c)));
        let Some((ch, channel)) = channel.filter(|(_, c)| !c.closing && c.has_consumer(d.consumer))
        else {
            // The consumer went away while this was in flight: give it back.
            let after = d.queue.settle(&[d.id], Settle::Requeue);
            if let Some(v) = &self.vhost {
                v.settle_aftermath(&d.queue, after);
            }
            return;
        };
        let (consumer, queue, id, redelivered) = (d.consumer, d.queue.clone(), d.id, d.redelivered);
        if let Some(no_ack) = channel.write_delivery(ch, d, &mut self.writer, self.frame_max, out) {
            self.count_sent(consumer, &queue, no_ack.then_some(id), redelivered);
        }
    }

    /// Notes a delivery written to the output, to report after the write.
    /// `settled` is an auto-ack delivery, done once written.
    pub(super) fn count_sent(
        &mut self,
        consumer: ConsumerId,
        queue: &Arc<Queue>,
        settled: Option<DeliveryId>,
        redelivered: bool,
    ) {
        let stats = self.stats.protocol(Protocol::Amqp);
        stats.delivered.inc();
        if redelivered {
            stats.redelivered.inc();
        }
        let entry = self.sent.entry(consumer).or_insert_with(|| Sent {
            queue: queue.clone(),
            n: 0,
            settled: Vec::new(),
        });
        entry.n += 1;
        entry.settled.extend(settled);
    }

    /// After the write buffer reached the socket: reopen the consumers'
    /// send windows, and let queues sharing a channel prefetch retry.
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

    /// Emits the publisher confirms gathered while handling a batch of frames.
    pub fn flush_confirms(&mut self, out: &mut BytesMut) {
        for (ch, channel) in self.channels.iter_mut() {
            let (acks, oldest) = channel.flush_confirms(*ch, self.durable, &mut self.writer, out);
            if acks > 0 {
                self.stats.protocol(Protocol::Amqp).confirmed.add(acks);
            }
            if let Some(since) = oldest {
                self.stats
                    .confirm_latency
                    .record(since.elapsed().as_secs_f64());
            }
        }
    }

    /// The broker's alarms changed. As RabbitMQ does, a connection is told
    /// (connection.blocked) and stops being read only once it publishes,
    /// so consumers and their acks keep flowing.
    pub fn on_alarm(&mut self, alarms: Alarms, out: &mut BytesMut) {
        let (was, now) = (self.alarms.any(), alarms.any());
        self.alarms = alarms;
        if now == was {
            return;
        }
        if !now {
            self.held = false;
        }
        if now {
            self.tell_blocked(out);
        } else if self.told_blocked {
            self.told_blocked = false;
            self.writer.method(
                out,
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
        }
    }

    /// Sends connection.blocked once per alarm, to a client that
    /// understands it and whose connection is open.
    fn tell_blocked(&mut self, out: &mut BytesMut) {
        if self.told_blocked || !self.caps.connection_blocked || self.stage != Stage::Open {
            return;
        }
        self.told_blocked = true;
        self.writer.method(
            out,
            0,
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: short(self.alarms.reason()),
            })),
        );
    }

    /// A publish arrived during an alarm: hold further input. A connection
    /// opened while the alarm was already on learns of it here.
    pub(super) fn hold_if_alarmed(&mut self, out: &mut BytesMut) {
        if self.alarms.any() {
            self.held = true;
            self.tell_blocked(out);
        }
    }

    /// Whether a channel was closed since the last call.
    pub fn take_channel_closed(&mut self) -> bool {
        std::mem::take(&mut self.channel_closed)
    }

    /// Input is held back until the alarms clear.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Queues this connection's publishes found behind (core/publisher_flow.rs).
    pub fn flow(&mut self) -> &mut PublisherFlow {
        &mut self.flow
    }

    /// The client closed the connection and was sent close-ok.
    pub fn closed_by_client(&self) -> bool {
        self.client_closed
    }

    /// The client was told it is blocked.
    pub fn is_blocked(&self) -> bool {
        self.alarms.any() && self.caps.connection_blocked
    }

    /// The journal reached `position`: confirms up to it may go out.
    pub fn set_durable(&mut self, position: LogPosition, out: &mut BytesMut) {
        self.durable = position;
        self.flush_confirms(out);
    }

    /// Some confirm waits for the journal.
    pub fn awaits_durability(&self) -> bool {
        self.channels
            .values()
            .any(|c| c.awaits_durability(self.durable))
    }
}

/// A short string from text the server wrote or received, cut at 255
/// bytes on a character boundary rather than panicking.
pub(super) fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&s[..end]).unwrap_or_default()
}

/// Methods that change what the registry shows of a channel.
fn changes_lane(m: &AMQPClass) -> bool {
    matches!(
        m,
        AMQPClass::Channel(_)
            | AMQPClass::Confirm(_)
            | AMQPClass::Tx(_)
            | AMQPClass::Basic(
                basic::AMQPMethod::Consume(_)
                    | basic::AMQPMethod::Cancel(_)
                    | basic::AMQPMethod::Qos(_)
            )
    )
}

/// The (class, method) ids of a method, for close frames.
pub(super) fn ids(m: &AMQPClass) -> (u16, u16) {
    (m.get_amqp_class_id(), m.get_amqp_method_id())
}

fn describe(f: &Inbound) -> &'static str {
    match f {
        Inbound::ProtocolHeader => "protocol header",
        Inbound::Method(..) => "method frame",
        Inbound::Header(..) => "content header",
        Inbound::Body(..) => "content body",
        Inbound::Heartbeat(_) => "heartbeat",
    }
}

fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let pass = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    Some((user, pass))
}

/// AMQPLAIN's response is a field table without its length prefix.
fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
    framed.extend_from_slice(response);
    let (_, table) = amq_protocol::types::parsing::parse_field_table(framed.as_slice()).ok()?;
    let get = |k: &str| match table.inner().get(k)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some((get("LOGIN")?, get("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain_responses_parse() {
        assert_eq!(
            parse_plain(b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(parse_plain(b"guest"), None);
        // LOGIN longstr "u", PASSWORD longstr "p", as pika writes it
        let mut t = Vec::new();
        t.push(5);
        t.extend_from_slice(b"LOGIN");
        t.push(b'S');
        t.extend_from_slice(&1u32.to_be_bytes());
        t.push(b'u');
        t.push(8);
        t.extend_from_slice(b"PASSWORD");
        t.push(b'S');
        t.extend_from_slice(&1u32.to_be_bytes());
        t.push(b'p');
        assert_eq!(parse_amqplain(&t), Some(("u".into(), "p".into())));
        assert_eq!(parse_amqplain(&[1, 2, 3]), None);
    }
}

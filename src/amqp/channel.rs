//! Per-channel state: publishing (method, header, body), confirms,
//! transactions, consumers, delivery tags and their settlement.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, access, basic, channel, confirm, exchange, queue, tx};
use bytes::{Bytes, BytesMut};

use super::codec::FrameWriter;
use super::error::*;
use super::properties::{from_amqp, headers_from_table, to_amqp};
use super::session::{Session, ids, short};
use crate::core::change::LogPosition;
use crate::core::exchange::{BindingSpec, Destination, ExchangeKind, ExchangeSpec};
use crate::core::queue::{ConsumerSpec, Queue, QueueSpec, SharedCredit};
use crate::core::{
    Access, ConsumerId, ConsumerTag, CoreError, Delivery, DeliveryId, ExchangeName, LaneInfo,
    Message, Properties, Protocol, QueueName, RoutingKey, Settle, VHost, detach_body,
};

/// The pseudo-queue RPC clients consume from for direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[derive(Debug)]
struct Pending {
    exchange: ExchangeName,
    key: RoutingKey,
    mandatory: bool,
    header: Option<(usize, Properties)>,
    body: BytesMut,
    first: Option<Bytes>,
}

/// A publisher confirm waiting to be sent.
#[derive(Debug)]
struct Confirm {
    seq: u64,
    /// The journal position that must be durable first.
    at: Option<LogPosition>,
    nack: bool,
    /// When it was routed, for the confirm latency histogram.
    routed: std::time::Instant,
}

#[derive(Debug)]
struct Subscription {
    id: ConsumerId,
    queue: Arc<Queue>,
    no_ack: bool,
}

#[derive(Debug)]
struct Outstanding {
    queue: Arc<Queue>,
    id: DeliveryId,
}

#[derive(Debug, Default)]
struct Transaction {
    publishes: Vec<(Message, bool)>,
    settles: Vec<(u64, bool, Settle)>,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    /// channel.close was sent; everything but close / close-ok is dropped.
    pub closing: bool,
    publish: Option<Pending>,
    confirm: bool,
    publish_seq: u64,
    /// Confirms not yet sent, in publish order.
    confirms: VecDeque<Confirm>,
    confirm_sent: u64,
    tx: Option<Transaction>,
    consumers: HashMap<String, Subscription>,
    prefetch: u32,
    shared: Arc<SharedCredit>,
    next_tag: u64,
    unacked: BTreeMap<u64, Outstanding>,
    flow: bool,
    held: VecDeque<Delivery>,
    last_queue: Option<QueueName>,
    reply_queue: Option<Arc<Queue>>,
}

impl Channel {
    fn new() -> Self {
        Self {
            closing: false,
            publish: None,
            confirm: false,
            publish_seq: 0,
            confirms: VecDeque::new(),
            confirm_sent: 0,
            tx: None,
            consumers: HashMap::new(),
            prefetch: 0,
            shared: Arc::new(SharedCredit::default()),
            next_tag: 1,
            unacked: BTreeMap::new(),
            flow: true,
            held: VecDeque::new(),
            last_queue: None,
            reply_queue: None,
        }
    }

    /// Whether a consumer still belongs to this channel.
    pub fn has_consumer(&self, id: ConsumerId) -> bool {
        self.consumers.values().any(|s| s.id == id)
    }

    /// Drops a consumer the broker cancelled; returns its tag.
    pub fn forget_consumer(&mut self, id: ConsumerId) -> Option<String> {
        let tag = self
            .consumers
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(t, _)| t.clone())?;
        self.consumers.remove(&tag);
        Some(tag)
    }

    /// Writes basic.deliver, its content header and body; or holds the
    /// delivery while the client has paused the channel with channel.flow.
    pub fn write_delivery(
        &mut self,
        ch: u16,
        d: Delivery,
        writer: &mut FrameWriter,
        frame_max: usize,
        out: &mut BytesMut,
    ) -> Option<bool> {
        if !self.flow {
            self.held.push_back(d);
            return None;
        }
        let (tag, sub) = self.consumers.iter().find(|(_, s)| s.id == d.consumer)?;
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        if !sub.no_ack {
            self.unacked.insert(
                delivery_tag,
                Outstanding {
                    queue: d.queue.clone(),
                    id: d.id,
                },
            );
        }
        FrameWriter::deliver(
            out,
            ch,
            tag,
            delivery_tag,
            d.redelivered,
            d.message.exchange().as_str(),
            d.message.routing_key().as_str(),
        );
        write_content(writer, out, ch, &d.message, frame_max);
        Some(sub.no_ack)
    }

    /// Whether a confirm waits for the journal.
    pub fn awaits_durability(&self, durable: LogPosition) -> bool {
        self.confirms
            .front()
            .is_some_and(|c| c.at.is_some_and(|p| p > durable))
    }

    /// Sends, in publish order, every confirm whose message is durable up
    /// to `durable`: runs of acks as one basic.ack with `multiple`, nacks
    /// one by one. Returns how many acks went out and when the oldest
    /// confirm sent was routed.
    pub fn flush_confirms(
        &mut self,
        ch: u16,
        durable: LogPosition,
        writer: &mut FrameWriter,
        out: &mut BytesMut,
    ) -> (u64, Option<std::time::Instant>) {
        let mut ack_up_to = None;
        let (mut acks, mut oldest) = (0, None);
        while let Some(c) = self.confirms.front() {
            if c.at.is_some_and(|p| p > durable) {
                break;
            }
            let c = self
                .confirms
                .pop_front()
                .expect("front exists: just peeked");
            oldest.get_or_insert(c.routed);
            if c.nack {
                if let Some(up) = ack_up_to.take() {
                    self.send_ack(ch, up, writer, out);
                }
                writer.method(
                    out,
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                        delivery_tag: c.seq,
                        multiple: false,
                        requeue: false,
                    })),
                );
                self.confirm_sent = c.seq;
            } else {
                acks += 1;
                ack_up_to = Some(c.seq);
            }
        }
        if let Some(up) = ack_up_to {
            self.send_ack(ch, up, writer, out);
        }
        (acks, oldest)
    }

    fn send_ack(&mut self, ch: u16, up: u64, writer: &mut FrameWriter, out: &mut BytesMut) {
        writer.method(
            out,
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: up,
                multiple: up - self.confirm_sent > 1,
            })),
        );
        self.confirm_sent = up;
    }
}

fn write_content(
    writer: &mut FrameWriter,
    out: &mut BytesMut,
    ch: u16,
    message: &Message,
    frame_max: usize,
) {
    writer.frame(
        out,
        &AMQPFrame::Header(
            ch,
            AMQPContentHeader {
                class_id: 60,
                body_size: message.body().len() as u64,
                properties: to_amqp(message.properties()),
            },
        ),
    );
    FrameWriter::body(out, ch, message.body(), frame_max);
}

/// A binding as the core sees it, from a bind or unbind method's fields.
fn binding(
    source: &amq_protocol::types::ShortString,
    destination: Destination,
    key: &amq_protocol::types::ShortString,
    arguments: &amq_protocol::types::FieldTable,
) -> BindingSpec {
    BindingSpec {
        source: source.as_str().into(),
        destination,
        key: key.as_str().into(),
        arguments: headers_from_table(arguments),
    }
}

fn random_tag(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{prefix}{n:032x}")
}

impl Session {
    fn vhost(&self) -> Arc<VHost> {
        self.vhost
            .clone()
            .expect("channels exist only on an open connection")
    }

    fn ok(&mut self, out: &mut BytesMut, ch: u16, m: AMQPClass) {
        self.writer.method(out, ch, m);
    }

    fn chan(&mut self, ch: u16) -> &mut Channel {
        self.channels
            .get_mut(&ch)
            .expect("caller checked the channel is open")
    }

    /// Handles a method on a non-zero channel.
    pub(super) fn channel_method(
        &mut self,
        ch: u16,
        m: AMQPClass,
        out: &mut BytesMut,
    ) -> Result<(), Reply> {
        self.check_channel_id(ch)?;
        let cause = ids(&m);
        let Some(channel) = self.channels.get_mut(&ch) else {
            return match m {
                AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                    self.channels.insert(ch, Channel::new());
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                    );
                    Ok(())
                }
                // A close-ok for a channel already forgotten is harmless.
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
                _ => Err(Reply::connection(
                    CHANNEL_ERROR,
                    format!("CHANNEL_ERROR - expected 'channel.open' on channel {ch}"),
                )
                .caused_by(cause)),
            };
        };
        if channel.closing {
            match m {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    self.channels.remove(&ch);
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.channels.remove(&ch);
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                }
                _ => {}
            }
            return Ok(());
        }
        if channel.publish.is_some() {
            return Err(Reply::connection(
                UNEXPECTED_FRAME,
                format!("UNEXPECTED_FRAME - expected content header or body on channel {ch}, got a method"),
            )
            .caused_by(cause));
        }
        self.channel_method_open(ch, m, out).map_err(|r| {
            if r.cause == (0, 0) {
                r.caused_by(cause)
            } else {
                r
            }
        })
    }

    fn channel_method_open(
        &mut self,
        ch: u16,
        m: AMQPClass,
        out: &mut BytesMut,
    ) -> Result<(), Reply> {
        match m {
            AMQPClass::Channel(m) => self.on_channel(ch, m, out),
            AMQPClass::Exchange(m) => self.on_exchange(ch, m, out),
            AMQPClass::Queue(m) => self.on_queue(ch, m, out),
            AMQPClass::Basic(m) => self.on_basic(ch, m, out),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(m)) => {
                let c = self.chan(ch);
                if c.tx.is_some() {
                    return Err(Reply::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
                    ));
                }
                c.confirm = true;
                if !m.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.on_tx(ch, m, out),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.ok(
                    out,
                    ch,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            other => Err(Reply::connection(
                COMMAND_INVALID,
                format!("COMMAND_INVALID - a client may not send {other:?}"),
            )),
        }
    }

    fn on_channel(
        &mut self,
        ch: u16,
        m: channel::AMQPMethod,
        out: &mut BytesMut,
    ) -> Result<(), Reply> {
        match m {
            channel::AMQPMethod::Open(_) => Err(Reply::connection(
                CHANNEL_ERROR,
                format!("CHANNEL_ERROR - second 'channel.open' seen on channel {ch}"),
            )),
            channel::AMQPMethod::Close(_) => {
                self.close_channel_locally(ch);
                self.channels.remove(&ch);
                self.ok(
                    out,
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            channel::AMQPMethod::CloseOk(_) => Ok(()),
            channel::AMQPMethod::OpenOk(_) => Err(Reply::connection(
                COMMAND_INVALID,
                "COMMAND_INVALID - a client may not send channel.open-ok",
            )),
            channel::AMQPMethod::Flow(f) => {
                let c = self.chan(ch);
                c.flow = f.active;
                let held: Vec<Delivery> = if f.active {
                    c.held.drain(..).collect()
                } else {
                    Vec::new()
                };
                self.ok(
                    out,
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: f.active,
                    })),
                );
                let frame_max = self.frame_max;
                for d in held {
                    let (consumer, queue, id, redelivered) =
                        (d.consumer, d.queue.clone(), d.id, d.redelivered);
                    let c = self.channels.get_mut(&ch).expect("still open");
                    if let Some(no_ack) = c.write_delivery(ch, d, &mut self.writer, frame_max, out)
                    {
                        self.count_sent(consumer, &queue, no_ack.then_some(id), redelivered);
                    }
                }
                Ok(())
            }
            channel::AMQPMethod::FlowOk(_) => Ok(()),
        }
    }

    fn on_exchange(
        &mut self,
        ch: u16,
        m: exchange::AMQPMethod,
        out: &mut BytesMut,
    ) -> Result<(), Reply> {
        let vhost = self.vhost();
        let core = |e: crate::core::CoreError| reply(&e);
        match m {
            exchange::AMQPMethod::Declare(d) => {
                if d.passive {
                    // A passive declare names an exchange and nothing else:
                    // as with RabbitMQ its type and flags go unread
                    // (amqplib's checkExchange sends an empty type).
                    if vhost.exchange(d.exchange.as_str()).is_none() {
                        return Err(reply(&crate::core::CoreError::NotFound(format!(
                            "no exchange '{}' in vhost '{}'",
                            d.exchange,
                            vhost.name()
                        ))));
                    }
                } else {
                    let spec = ExchangeSpec {
                        name: d.exchange.as_str().into(),
                        kind: ExchangeKind::parse(d.kind.as_str()).map_err(core)?,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: headers_from_table(&d.arguments),
                    };
                    self.authorize(Access::Configure, "exchange", d.exchange.as_str())?;
                    vhost.declare_exchange(spec, false).map_err(core)?;
                }
                if !d.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                self.authorize(Access::Configure, "exchange", d.exchange.as_str())?;
                vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)
                    .map_err(core)?;
                if !d.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Bind(b) => {
                self.authorize(Access::Write, "exchange", b.destination.as_str())?;
                self.authorize(Access::Read, "exchange", b.source.as_str())?;
                let spec = binding(
                    &b.source,
                    Destination::Exchange(b.destination.as_str().into()),
                    &b.routing_key,
                    &b.arguments,
                );
                vhost.bind(spec, Some(self.conn_id)).map_err(core)?;
                if !b.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
            }
            exchange::AMQPMethod::Unbind(b) => {
                self.authorize(Access::Write, "exchange", b.destination.as_str())?;
                self.authorize(Access::Read, "exchange", b.source.as_str())?;
                let spec = binding(
                    &b.source,
                    Destination::Exchange(b.destination.as_str().into()),
                    &b.routing_key,
                    &b.arguments,
                );
                vhost.unbind(&spec, Some(self.conn_id)).map_err(core)?;
                if !b.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
            }
            other => {
                return Err(Reply::connection(
                    COMMAND_INVALID,
                    format!("COMMAND_INVALID - a client may not send {other:?}"),
                ));
            }
        }
        Ok(())
    }

    /// "" names the last queue declared on the channel, as the spec allows.
    fn queue_name(&mut self, ch: u16, name: &str) -> Result<QueueName, Reply> {
        if !name.is_empty() {
            return Ok(name.into());
        }
        self.chan(ch)
            .last_queue
            .clone()
            .ok_or_else(|| Reply::channel(NOT_FOUND, "NOT_FOUND - no previously declared queue"))
    }

    fn on_queue(&mut self, ch: u16, m: queue::AMQPMethod, out: &mut BytesMut) -> Result<(), Reply> {
        let vhost = self.vhost();
        let conn = Some(self.conn_id);
        let core = |e: crate::core::CoreError| reply(&e);
        match m {
            queue::AMQPMethod::Declare(d) => {
                let declared = if d.queue.as_str() == REPLY_TO && d.passive {
                    crate::core::vhost::QueueDeclared {
                        name: REPLY_TO.into(),
                        messages: 0,
                        consumers: 0,
                    }
                } else {
                    if !d.passive {
                        // A server-named queue is checked as RabbitMQ names it.
                        let name = match d.queue.as_str() {
                            "" => "amq.gen-",
                            n => n,
                        };
                        self.authorize(Access::Configure, "queue", name)?;
                    }
                    let spec = QueueSpec {
                        name: d.queue.as_str().into(),
                        durable: d.durable,
                        exclusive: d.exclusive.then_some(self.conn_id),
                        auto_delete: d.auto_delete,
                        arguments: headers_from_table(&d.arguments),
                    };
                    vhost.declare_queue(spec, d.passive, conn).map_err(core)?
                };
                self.chan(ch).last_queue = Some(declared.name.clone());
                if !d.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: short(declared.name.as_str()),
                            message_count: declared.messages as u32,
                            consumer_count: declared.consumers as u32,
                        })),
                    );
                }
            }
            queue::AMQPMethod::Bind(b) => {
                let q = self.queue_name(ch, b.queue.as_str())?;
                self.authorize(Access::Write, "queue", q.as_str())?;
                self.authorize(Access::Read, "exchange", b.exchange.as_str())?;
                let spec = binding(
                    &b.exchange,
                    Destination::Queue(q),
                    &b.routing_key,
                    &b.arguments,
                );
                vhost.bind(spec, conn).map_err(core)?;
                if !b.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
            }
            queue::AMQPMethod::Unbind(b) => {
                let q = self.queue_name(ch, b.queue.as_str())?;
                self.authorize(Access::Write, "queue", q.as_str())?;
                self.authorize(Access::Read, "exchange", b.exchange.as_str())?;
                let spec = binding(
                    &b.exchange,
                    Destination::Queue(q),
                    &b.routing_key,
                    &b.arguments,
                );
                vhost.unbind(&spec, conn).map_err(core)?;
                self.ok(
                    out,
                    ch,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            queue::AMQPMethod::Purge(p) => {
                let q = self.queue_name(ch, p.queue.as_str())?;
                self.authorize(Access::Read, "queue", q.as_str())?;
                let n = vhost.purge_queue(q.as_str(), conn).map_err(core)?;
                if !p.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: n as u32,
                        })),
                    );
                }
            }
            queue::AMQPMethod::Delete(d) => {
                let q = self.queue_name(ch, d.queue.as_str())?;
                self.authorize(Access::Configure, "queue", q.as_str())?;
                let n = vhost
                    .delete_queue(q.as_str(), d.if_unused, d.if_empty, conn)
                    .map_err(core)?;
                if !d.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: n as u32,
                        })),
                    );
                }
            }
            other => {
                return Err(Reply::connection(
                    COMMAND_INVALID,
                    format!("COMMAND_INVALID - a client may not send {other:?}"),
                ));
            }
        }
        Ok(())
    }

    fn on_basic(&mut self, ch: u16, m: basic::AMQPMethod, out: &mut BytesMut) -> Result<(), Reply> {
        match m {
            basic::AMQPMethod::Publish(p) => {
                if p.immediate {
                    return Err(Reply::connection(
                        NOT_IMPLEMENTED,
                        "NOT_IMPLEMENTED - immediate=true",
                    ));
                }
                self.authorize(Access::Write, "exchange", p.exchange.as_str())?;
                self.hold_if_alarmed(out);
                self.chan(ch).publish = Some(Pending {
                    exchange: p.exchange.as_str().into(),
                    key: p.routing_key.as_str().into(),
                    mandatory: p.mandatory,
                    header: None,
                    body: BytesMut::new(),
                    first: None,
                });
                Ok(())
            }
            basic::AMQPMethod::Qos(q) => {
                let c = self.chan(ch);
                if q.global {
                    c.shared.limit.store(
                        q.prefetch_count.into(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    let queues: Vec<Arc<Queue>> =
                        c.consumers.values().map(|s| s.queue.clone()).collect();
                    self.kick(&queues);
                } else {
                    c.prefetch = q.prefetch_count.into();
                }
                self.ok(
                    out,
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::Consume(c) => self.on_consume(ch, c, out),
            basic::AMQPMethod::Cancel(c) => {
                let sub = self.chan(ch).consumers.remove(c.consumer_tag.as_str());
                if let Some(sub) = sub {
                    self.consumers.remove(&sub.id);
                    self.vhost().cancel(&sub.queue, sub.id);
                }
                if !c.nowait {
                    self.ok(
                        out,
                        ch,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Get(g) => self.on_get(ch, g, out),
            basic::AMQPMethod::Ack(a) => self.settle(ch, a.delivery_tag, a.multiple, Settle::Ack),
            basic::AMQPMethod::Reject(r) => self.settle(
                ch,
                r.delivery_tag,
                false,
                if r.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                },
            ),
            basic::AMQPMethod::Nack(n) => self.settle(
                ch,
                n.delivery_tag,
                n.multiple,
                if n.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                },
            ),
            basic::AMQPMethod::Recover(r) if !r.requeue => Err(Reply::connection(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - requeue=false",
            )),
            basic::AMQPMethod::RecoverAsync(r) if !r.requeue => Err(Reply::connection(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - requeue=false",
            )),
            basic::AMQPMethod::Recover(_) => {
                self.requeue_unacked(ch);
                self.ok(
                    out,
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(_) => {
                self.requeue_unacked(ch);
                Ok(())
            }
            other => Err(Reply::connection(
                COMMAND_INVALID,
                format!("COMMAND_INVALID - a client may not send {other:?}"),
            )),
        }
    }

    fn on_consume(&mut self, ch: u16, c: basic::Consume, out: &mut BytesMut) -> Result<(), Reply> {
        let vhost = self.vhost();
        let tag = if c.consumer_tag.as_str().is_empty() {
            random_tag("amq.ctag-")
        } else {
            c.consumer_tag.as_str().to_owned()
        };
        if self.chan(ch).consumers.contains_key(&tag) {
            return Err(Reply::connection(
                NOT_ALLOWED,
                format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let args = headers_from_table(&c.arguments);
        let priority = match args.get("x-priority") {
            None => 0,
            Some(v) => v
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| {
                    Reply::channel(
                        PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - invalid x-priority {v:?}"),
                    )
                })?,
        };
        let queue_name = if c.queue.as_str() == REPLY_TO {
            if !c.no_ack {
                return Err(Reply::channel(
                    PRECONDITION_FAILED,
                    "PRECONDITION_FAILED - reply consumer cannot acknowledge",
                ));
            }
            if self.chan(ch).reply_queue.is_some() {
                return Err(Reply::channel(
                    PRECONDITION_FAILED,
                    "PRECONDITION_FAILED - reply consumer already set",
                ));
            }
            let q = vhost.declare_internal_queue(QueueSpec {
                name: random_tag("amq.rabbitmq.reply-to.").into(),
                durable: false,
                exclusive: Some(self.conn_id),
                auto_delete: true,
                arguments: Default::default(),
            });
            let name = q.name().clone();
            self.chan(ch).reply_queue = Some(q);
            name
        } else {
            let name = self.queue_name(ch, c.queue.as_str())?;
            self.authorize(Access::Read, "queue", name.as_str())?;
            name
        };
        let id = ConsumerId(crate::core::next_id());
        let owner = self.conn_id;
        let sink = self.events.clone();
        let chan = self.chan(ch);
        let spec = ConsumerSpec {
            id,
            tag: ConsumerTag::from(tag.as_str()),
            manual_ack: !c.no_ack,
            prefetch: chan.prefetch,
            priority,
            exclusive: c.exclusive,
            owner,
            settle_on_write: c.no_ack,
            shared_credit: Some(chan.shared.clone()),
            sink,
        };
        // consume-ok must precede the first delivery: deliveries arrive as
        // events, written after this frame's reply.
        if !c.nowait {
            let m = AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: short(&tag),
            }));
            let mut reply_buf = BytesMut::new();
            self.writer.method(&mut reply_buf, ch, m);
            let queue = vhost
                .consume(queue_name.as_str(), spec)
                .map_err(|e| reply(&e))?;
            out.extend_from_slice(&reply_buf);
            self.consumers.insert(id, ch);
            self.chan(ch).consumers.insert(
                tag,
                Subscription {
                    id,
                    queue,
                    no_ack: c.no_ack,
                },
            );
        } else {
            let queue = vhost
                .consume(queue_name.as_str(), spec)
                .map_err(|e| reply(&e))?;
            self.consumers.insert(id, ch);
            self.chan(ch).consumers.insert(
                tag,
                Subscription {
                    id,
                    queue,
                    no_ack: c.no_ack,
                },
            );
        }
        Ok(())
    }

    fn on_get(&mut self, ch: u16, g: basic::Get, out: &mut BytesMut) -> Result<(), Reply> {
        let vhost = self.vhost();
        let name = self.queue_name(ch, g.queue.as_str())?;
        self.authorize(Access::Read, "queue", name.as_str())?;
        let queue = vhost.existing_queue(name.as_str()).map_err(|e| reply(&e))?;
        if let Some(owner) = queue.spec().exclusive
            && owner != self.conn_id
        {
            return Err(reply(&crate::core::CoreError::ResourceLocked(format!(
                "cannot obtain exclusive access to locked queue '{name}'"
            ))));
        }
        let (got, after) = queue.get(!g.no_ack);
        vhost.settle_aftermath(&queue, after);
        let Some(got) = got else {
            self.ok(
                out,
                ch,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let stats = self.stats.protocol(Protocol::Amqp);
        stats.delivered.inc();
        if got.redelivered {
            stats.redelivered.inc();
        }
        let c = self.chan(ch);
        let delivery_tag = c.next_tag;
        c.next_tag += 1;
        if !g.no_ack {
            c.unacked
                .insert(delivery_tag, Outstanding { queue, id: got.id });
        }
        self.ok(
            out,
            ch,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag,
                redelivered: got.redelivered,
                exchange: short(got.message.exchange().as_str()),
                routing_key: short(got.message.routing_key().as_str()),
                message_count: got.remaining as u32,
            })),
        );
        write_content(&mut self.writer, out, ch, &got.message, self.frame_max);
        Ok(())
    }

    fn settle(&mut self, ch: u16, tag: u64, multiple: bool, how: Settle) -> Result<(), Reply> {
        let c = self.chan(ch);
        let known = if multiple {
            tag == 0 || c.unacked.range(..=tag).next().is_some()
        } else {
            c.unacked.contains_key(&tag)
        };
        if !known {
            return Err(Reply::channel(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
            ));
        }
        if let Some(t) = c.tx.as_mut() {
            t.settles.push((tag, multiple, how));
            return Ok(());
        }
        self.apply_settle(ch, tag, multiple, how);
        Ok(())
    }

    fn apply_settle(&mut self, ch: u16, tag: u64, multiple: bool, how: Settle) {
        let c = self.chan(ch);
        let taken: Vec<Outstanding> = if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            let keys: Vec<u64> = c.unacked.range(..=upto).map(|(k, _)| *k).collect();
            keys.into_iter()
                .filter_map(|k| c.unacked.remove(&k))
                .collect()
        } else {
            c.unacked.remove(&tag).into_iter().collect()
        };
        let stats = self.stats.protocol(Protocol::Amqp);
        match how {
            Settle::Ack => stats.acknowledged.add(taken.len() as u64),
            Settle::Requeue | Settle::Discard => stats.rejected.add(taken.len() as u64),
        }
        let c = self.chan(ch);
        let global = c.shared.limit.load(std::sync::atomic::Ordering::Relaxed) > 0;
        let others: Vec<Arc<Queue>> = if global {
            c.consumers.values().map(|s| s.queue.clone()).collect()
        } else {
            Vec::new()
        };
        self.settle_outstanding(taken, how);
        self.kick(&others);
    }

    fn settle_outstanding(&mut self, taken: Vec<Outstanding>, how: Settle) {
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        // One lock per queue for the whole batch.
        let mut by_queue: Vec<(Arc<Queue>, Vec<DeliveryId>)> = Vec::new();
        for o in taken {
            match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &o.queue)) {
                Some((_, ids)) => ids.push(o.id),
                None => by_queue.push((o.queue, vec![o.id])),
            }
        }
        for (queue, ids) in by_queue {
            let after = queue.settle(&ids, how);
            vhost.settle_aftermath(&queue, after);
        }
    }

    fn kick(&self, queues: &[Arc<Queue>]) {
        let Some(vhost) = &self.vhost else { return };
        for q in queues {
            let after = q.kick();
            vhost.settle_aftermath(q, after);
        }
    }

    fn requeue_unacked(&mut self, ch: u16) {
        let taken: Vec<Outstanding> = std::mem::take(&mut self.chan(ch).unacked)
            .into_values()
            .collect();
        self.settle_outstanding(taken, Settle::Requeue);
    }

    fn on_tx(&mut self, ch: u16, m: tx::AMQPMethod, out: &mut BytesMut) -> Result<(), Reply> {
        let not_tx = || {
            Reply::channel(
                PRECONDITION_FAILED,
                "PRECONDITION_FAILED - channel is not transactional",
            )
        };
        match m {
            tx::AMQPMethod::Select(_) => {
                let c = self.chan(ch);
                if c.confirm {
                    return Err(Reply::channel(
                        PRECONDITION_FAILED,
                        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
                    ));
                }
                c.tx.get_or_insert_with(Transaction::default);
                self.ok(
                    out,
                    ch,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
            }
            tx::AMQPMethod::Commit(_) => {
                let work = std::mem::take(self.chan(ch).tx.as_mut().ok_or_else(not_tx)?);
                for (message, mandatory) in work.publishes {
                    self.route(ch, message, mandatory, out)?;
                }
                for (tag, multiple, how) in work.settles {
                    self.apply_settle(ch, tag, multiple, how);
                }
                self.ok(
                    out,
                    ch,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
            }
            tx::AMQPMethod::Rollback(_) => {
                *self.chan(ch).tx.as_mut().ok_or_else(not_tx)? = Transaction::default();
                self.ok(
                    out,
                    ch,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            other => {
                return Err(Reply::connection(
                    COMMAND_INVALID,
                    format!("COMMAND_INVALID - a client may not send {other:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Handles a content header.
    pub(super) fn channel_header(&mut self, ch: u16, h: AMQPContentHeader) -> Result<(), Reply> {
        self.check_channel_id(ch)?;
        let max = self.broker.limits.max_message_bytes;
        let Some(c) = self.channels.get_mut(&ch) else {
            return Err(Reply::connection(
                CHANNEL_ERROR,
                format!("CHANNEL_ERROR - channel {ch} is not open"),
            ));
        };
        if c.closing {
            return Ok(());
        }
        let unexpected = || {
            Reply::connection(
                UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - content header without basic.publish",
            )
        };
        let pending = c.publish.as_mut().ok_or_else(unexpected)?;
        if pending.header.is_some() {
            return Err(Reply::connection(
                UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - second content header",
            ));
        }
        if h.class_id != 60 {
            return Err(Reply::connection(
                FRAME_ERROR,
                format!("FRAME_ERROR - content header for class {}", h.class_id),
            ));
        }
        let size = usize::try_from(h.body_size).unwrap_or(usize::MAX);
        if size > max {
            c.publish = None;
            return Err(Reply::channel(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - message size {size} is larger than configured max size {max}"),
            )
            .caused_by((60, 40)));
        }
        pending.header = Some((size, from_amqp(&h.properties)));
        if size == 0 {
            return self.complete_publish(ch, &mut BytesMut::new());
        }
        Ok(())
    }

    /// Handles a body frame.
    pub(super) fn channel_body(
        &mut self,
        ch: u16,
        body: Bytes,
        out: &mut BytesMut,
    ) -> Result<(), Reply> {
        self.check_channel_id(ch)?;
        let Some(c) = self.channels.get_mut(&ch) else {
            return Err(Reply::connection(
                CHANNEL_ERROR,
                format!("CHANNEL_ERROR - channel {ch} is not open"),
            ));
        };
        if c.closing {
            return Ok(());
        }
        let unexpected = || {
            Reply::connection(
                UNEXPECTED_FRAME,
                "UNEXPECTED_FRAME - content body without a header",
            )
        };
        let pending = c.publish.as_mut().ok_or_else(unexpected)?;
        let size = pending.header.as_ref().ok_or_else(unexpected)?.0;
        let have = pending.first.as_ref().map_or(0, Bytes::len) + pending.body.len() + body.len();
        if have > size {
            return Err(Reply::connection(
                FRAME_ERROR,
                format!("FRAME_ERROR - body exceeds the announced size {size}"),
            ));
        }
        // The common case, a body in one frame, is a slice of the read
        // buffer until the publish completes (`detach_body` decides then);
        // multi-frame bodies are copied together.
        match pending.first.take() {
            None if pending.body.is_empty() => pending.first = Some(body),
            None => pending.body.extend_from_slice(&body),
            Some(first) => {
                pending.body.reserve(size);
                pending.body.extend_from_slice(&first);
                pending.body.extend_from_slice(&body);
            }
        }
        if have == size {
            return self.complete_publish(ch, out);
        }
        Ok(())
    }

    fn complete_publish(&mut self, ch: u16, out: &mut BytesMut) -> Result<(), Reply> {
        let user = self
            .user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default();
        let vhost = self.vhost.clone();
        let c = self.chan(ch);
        let Some(mut p) = c.publish.take() else {
            return Ok(());
        };
        let (_, mut props) = p.header.take().expect("complete only after the header");
        let body = match p.first.take() {
            Some(b) => detach_body(b),
            None => p.body.freeze(),
        };
        if let Some(claimed) = &props.user_id
            && *claimed != user
        {
            return Err(Reply::channel(
                    PRECONDITION_FAILED,
                    format!("PRECONDITION_FAILED - user_id property set to '{claimed}' but authenticated user was '{user}'"),
                )
                .caused_by((60, 40)));
        }
        if let Some(expiration) = &props.expiration
            && props.ttl_millis().is_none()
        {
            // RabbitMQ refuses it too; kept, it would never expire.
            return Err(Reply::channel(
                PRECONDITION_FAILED,
                format!("PRECONDITION_FAILED - invalid expiration '{expiration}'"),
            )
            .caused_by((60, 40)));
        }
        if props.reply_to.as_deref() == Some(REPLY_TO) {
            let q = c.reply_queue.as_ref().ok_or_else(|| {
                Reply::channel(
                    PRECONDITION_FAILED,
                    "PRECONDITION_FAILED - fast reply consumer does not exist",
                )
                .caused_by((60, 40))
            })?;
            props.reply_to = Some(q.name().to_string());
        }
        let message = Message::new(p.exchange, p.key, props, body);
        if let Some(t) = c.tx.as_mut() {
            // As in RabbitMQ, the exchange is checked at publish time, so
            // a commit cannot route half the transaction and then fail.
            if let Some(vhost) = &vhost {
                let name = message.exchange().as_str();
                match vhost.exchange(name) {
                    None => {
                        return Err(reply(&CoreError::NotFound(format!(
                            "no exchange '{name}' in vhost '{}'",
                            vhost.name()
                        )))
                        .caused_by((60, 40)));
                    }
                    Some(x) if x.internal => {
                        return Err(reply(&CoreError::AccessRefused(format!(
                            "cannot publish to internal exchange '{name}' in vhost '{}'",
                            vhost.name()
                        )))
                        .caused_by((60, 40)));
                    }
                    Some(_) => {}
                }
            }
            t.publishes.push((message, p.mandatory));
            return Ok(());
        }
        self.route(ch, message, p.mandatory, out)
            .map_err(|r| r.caused_by((60, 40)))
    }

    fn route(
        &mut self,
        ch: u16,
        message: Message,
        mandatory: bool,
        out: &mut BytesMut,
    ) -> Result<(), Reply> {
        let vhost = self.vhost();
        let outcome = vhost.publish(message.clone()).map_err(|e| reply(&e))?;
        if let Some(q) = outcome.behind {
            let waits = &self.stats.protocol(Protocol::Amqp).publisher_waits;
            self.flow.note(q, self.conn_id, waits);
        }
        let amqp = self.stats.protocol(Protocol::Amqp);
        amqp.published.inc();
        if outcome.queues == 0 && !outcome.rejected {
            amqp.unroutable.inc();
            if mandatory {
                amqp.returned.inc();
            }
        }
        if mandatory && outcome.queues == 0 && !outcome.rejected {
            self.ok(
                out,
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange: short(message.exchange().as_str()),
                    routing_key: short(message.routing_key().as_str()),
                })),
            );
            write_content(&mut self.writer, out, ch, &message, self.frame_max);
        }
        let c = self
            .channels
            .get_mut(&ch)
            .expect("routing on an open channel");
        if c.confirm {
            c.publish_seq += 1;
            c.confirms.push_back(Confirm {
                seq: c.publish_seq,
                at: outcome.durable_at,
                nack: outcome.rejected,
                routed: std::time::Instant::now(),
            });
        }
        Ok(())
    }

    /// Shows a channel's current state in the connection registry, or
    /// removes it once the channel is gone or closing.
    pub(super) fn sync_lane(&self, ch: u16) {
        let Some(registration) = &self.registration else {
            return;
        };
        match self.channels.get(&ch).filter(|c| !c.closing) {
            Some(c) => registration.set_lane(LaneInfo {
                number: ch.into(),
                consumers: c.consumers.len() as u32,
                prefetch: c.prefetch,
                confirm: c.confirm,
                transactional: c.tx.is_some(),
            }),
            None => registration.remove_lane(ch.into()),
        }
    }

    /// Cancels a channel's consumers and requeues what it held. The
    /// channel itself stays in the table until the caller removes it.
    pub(super) fn close_channel_locally(&mut self, ch: u16) {
        self.channel_closed = true;
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        c.publish = None;
        let subs: Vec<Subscription> = c.consumers.drain().map(|(_, s)| s).collect();
        let held: Vec<Delivery> = c.held.drain(..).collect();
        c.reply_queue = None;
        let unacked: Vec<Outstanding> = std::mem::take(&mut c.unacked).into_values().collect();
        for s in &subs {
            self.consumers.remove(&s.id);
        }
        // Cancel first, so what is requeued goes to other consumers and
        // not back to these; an auto-delete queue goes with its last
        // consumer and takes its messages with it, as in RabbitMQ.
        let held: Vec<Delivery> = held.into_iter().collect();
        for s in subs {
            vhost.cancel_and_requeue(&s.queue, s.id);
        }
        self.settle_outstanding(unacked, Settle::Requeue);
        for d in held {
            let after = d.queue.settle(&[d.id], Settle::Requeue);
            vhost.settle_aftermath(&d.queue, after);
        }
    }
}

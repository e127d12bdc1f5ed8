//! SUBSCRIBE, UNSUBSCRIBE, ACK and NACK, deliveries as MESSAGE frames, and
//! the queues subscriptions consume from.
//!
//! A subscription is a core consumer. Its queue depends on the destination
//! (destination.rs): a named queue, or one the subscription declares and
//! binds for itself — exclusive and auto-delete by default, durable when
//! the client asks for a durable topic subscription (RabbitMQ's
//! `durable:true` with an `id`, or ActiveMQ's `activemq.subscriptionName`
//! scoped by CONNECT's `client-id`).
//!
//! Message ids are `T_<subscription>@@<session>@@<tag>` as RabbitMQ writes
//! them; the tag is this connection's delivery counter, and deliveries that
//! await acknowledgement are kept by tag, so an ACK finds its delivery
//! whichever version's header named it, even after UNSUBSCRIBE.

use std::sync::Arc;

use bytes::BytesMut;

use super::codec::{Command, Frame, Version};
use super::destination::Destination;
use super::error::StompError;
use super::properties::{self, MessageHead};
use super::session::{Session, TxOp, parse_bool};
use crate::core::exchange::{BindingSpec, Destination as BindingTarget};
use crate::core::queue::{ConsumerSpec, Queue, QueueSpec};
use crate::core::{
    Access, ConsumerId, ConsumerTag, CoreError, Delivery, DeliveryId, Headers, Settle, Value,
};

/// How a subscription's messages are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckMode {
    /// Settled when sent.
    Auto,
    /// An ACK settles that message and every earlier one of the subscription.
    Client,
    /// An ACK settles that message alone.
    ClientIndividual,
}

/// One SUBSCRIBE.
#[derive(Debug)]
pub(super) struct Subscription {
    /// The client's id, written back in each MESSAGE's `subscription`.
    pub(super) id: Option<String>,
    /// What UNSUBSCRIBE names it by: the id, or a 1.0 client's destination.
    pub(super) key: String,
    pub(super) queue: Arc<Queue>,
    pub(super) ack: AckMode,
    /// The destination MESSAGE frames report, when not the message's own
    /// exchange and key (a temp queue's subscribers see the temp queue).
    pub(super) destination: Option<String>,
    /// `T_<key>@@<session>@@`: a message id is this and the tag.
    pub(super) message_id_prefix: String,
    /// A durable topic subscription's own queue, which UNSUBSCRIBE with
    /// `durable:true` deletes.
    pub(super) durable: bool,
}

/// A delivery awaiting ACK or NACK.
#[derive(Debug)]
pub(super) struct Outstanding {
    pub(super) consumer: ConsumerId,
    pub(super) queue: Arc<Queue>,
    pub(super) id: DeliveryId,
    /// The subscription acknowledges cumulatively (`ack:client`).
    pub(super) cumulative: bool,
}

/// A `/temp-queue/` destination's queue: private to the connection.
#[derive(Debug)]
pub(super) struct TempQueue {
    pub(super) queue: Arc<Queue>,
    pub(super) subscribed: bool,
}

/// `x-` queue arguments accepted as headers, by the type the core wants.
const INT_ARGUMENTS: [&str; 6] = [
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-delivery-limit",
];
const TEXT_ARGUMENTS: [&str; 6] = [
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-overflow",
    "x-queue-type",
    "x-queue-mode",
    "x-max-age",
];
const BOOL_ARGUMENTS: [&str; 1] = ["x-single-active-consumer"];

/// A queue's shape as a frame's headers ask for it.
#[derive(Debug)]
struct QueueParams {
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: Headers,
    /// Some header asked for something; otherwise an existing queue is
    /// taken as it is.
    explicit: bool,
}

/// Reads `durable`, `auto-delete`, `exclusive` and `x-` arguments over the
/// destination type's defaults.
fn queue_params(
    frame: &Frame,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
) -> Result<QueueParams, StompError> {
    let mut p = QueueParams {
        durable,
        auto_delete,
        exclusive,
        arguments: Headers::new(),
        explicit: false,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &frame.headers {
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        let v = value.trim();
        let slot = match name.as_str() {
            "durable" => Some(&mut p.durable),
            "auto-delete" => Some(&mut p.auto_delete),
            "exclusive" => Some(&mut p.exclusive),
            _ => None,
        };
        if let Some(slot) = slot {
            *slot = parse_bool(name, v)?;
            p.explicit = true;
            continue;
        }
        let arg =
            if INT_ARGUMENTS.contains(&name.as_str()) {
                Value::I64(v.parse().map_err(|_| {
                    StompError::invalid_header(name, value, "is not a whole number")
                })?)
            } else if TEXT_ARGUMENTS.contains(&name.as_str()) {
                Value::Str(v.to_owned())
            } else if BOOL_ARGUMENTS.contains(&name.as_str()) {
                Value::Bool(parse_bool(name, v)?)
            } else {
                continue;
            };
        p.arguments.insert(name.clone().into(), arg);
        p.explicit = true;
    }
    Ok(p)
}

/// A durable subscription's queue name, derived from what identifies the
/// subscription and bounded in length (RabbitMQ hashes alike).
fn durable_queue_name(parts: &[&str]) -> String {
    // FNV-1a, 64 bits: stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("stomp-subscription-{h:016x}")
}

impl Session {
    pub(super) fn on_subscribe(&mut self, frame: &Frame) -> Result<(), StompError> {
        let dest_text = frame
            .header("destination")
            .ok_or_else(|| StompError::missing_header("SUBSCRIBE", "destination"))?;
        let dest = Destination::parse(dest_text)?;
        let id = frame.header("id");
        if id.is_none() && self.version != Version::V1_0 {
            return Err(StompError::missing_header("SUBSCRIBE", "id"));
        }
        if let Some(id) = id
            && id.starts_with("/temp-queue/")
        {
            return Err(StompError::invalid_header(
                "id",
                id,
                "may not start with /temp-queue/ (reserved for reply subscriptions)",
            ));
        }
        let key = id.unwrap_or(dest_text).to_owned();
        if self.sub_keys.contains_key(&key) {
            return Err(StompError::new(
                "Duplicated subscription identifier",
                format!("a subscription identified by '{key}' already exists"),
            ));
        }
        let ack = match frame.header("ack") {
            None | Some("auto") => AckMode::Auto,
            Some("client") => AckMode::Client,
            Some("client-individual") => AckMode::ClientIndividual,
            Some(other) => {
                return Err(StompError::invalid_header(
                    "ack",
                    other,
                    "is not auto, client or client-individual",
                ));
            }
        };
        // RabbitMQ's header, then ActiveMQ's; unlimited when absent.
        let prefetch = match frame
            .header("prefetch-count")
            .or_else(|| frame.header("activemq.prefetchSize"))
        {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| StompError::invalid_header("prefetch-count", v, "is not a count"))?,
        };
        let priority = match frame.header("x-priority") {
            None => 0,
            Some(v) => v.trim().parse::<i32>().map_err(|_| {
                StompError::invalid_header("x-priority", v, "is not a whole number")
            })?,
        };
        let exclusive = match frame.header("activemq.exclusive") {
            None => false,
            Some(v) => parse_bool("activemq.exclusive", v)?,
        };
        let (queue, fixed_destination, durable) = match &dest {
            Destination::Queue(name) => {
                self.authorize(Access::Read, "queue", name)?;
                (self.ensure_queue(name, frame)?, None, false)
            }
            Destination::AmqQueue(name) => {
                self.authorize(Access::Read, "queue", name)?;
                (self.vhost().existing_queue(name)?, None, false)
            }
            Destination::TempQueue(name) => {
                let queue = self.temp_queue(name, false)?;
                if let Some(t) = self.temp_queues.get_mut(name) {
                    t.subscribed = true;
                }
                (queue, Some(dest_text.to_owned()), false)
            }
            Destination::ReplyQueue(_) => {
                return Err(StompError::new(
                    "Invalid destination",
                    format!("'{dest_text}' is a reply destination; it cannot be subscribed to"),
                ));
            }
            Destination::Topic(_) | Destination::Exchange { .. } => {
                let (queue, durable) = self.subscription_queue(&dest, dest_text, frame, id)?;
                (queue, None, durable)
            }
        };
        let sub = Subscription {
            id: id.map(str::to_owned),
            message_id_prefix: format!("T_{key}@@{}@@", self.session_id),
            key,
            queue,
            ack,
            destination: fixed_destination,
            durable,
        };
        self.subscribe(sub, prefetch, priority, exclusive)
    }

    /// Attaches a core consumer for `sub`.
    fn subscribe(
        &mut self,
        sub: Subscription,
        prefetch: u32,
        priority: i32,
        exclusive: bool,
    ) -> Result<(), StompError> {
        let consumer = ConsumerId(crate::core::next_id());
        let spec = ConsumerSpec {
            id: consumer,
            tag: ConsumerTag::from(sub.key.as_str()),
            manual_ack: sub.ack != AckMode::Auto,
            // An auto-ack delivery still in flight when the subscription
            // ends goes back to the queue rather than being lost.
            settle_on_write: sub.ack == AckMode::Auto,
            prefetch,
            priority,
            exclusive,
            owner: self.conn_id,
            shared_credit: None,
            sink: self.events.clone(),
        };
        // Deliveries arrive as events, handled after this frame: the
        // subscription is in place before the first MESSAGE is written.
        self.vhost().consume(sub.queue.name().as_str(), spec)?;
        self.sub_keys.insert(sub.key.clone(), consumer);
        self.subs.insert(consumer, sub);
        Ok(())
    }

    /// A `/queue/` destination's queue, declared durable (RabbitMQ's
    /// default) unless the headers say otherwise. An existing queue is used
    /// as it is when the headers ask for nothing in particular, so a SEND
    /// reaches a queue an AMQP client declared transient.
    pub(super) fn ensure_queue(
        &mut self,
        name: &str,
        frame: &Frame,
    ) -> Result<Arc<Queue>, StompError> {
        let params = queue_params(frame, true, false, false)?;
        let vhost = self.vhost();
        // A SEND declares once per connection, as RabbitMQ's adapter does:
        // a producer repeating queue headers on every SEND costs no
        // re-declaration each time. A SUBSCRIBE always declares.
        let sent_before = frame.command == Command::Send && self.declared.contains(name);
        if let Some(q) = vhost.queue(name)
            && (!params.explicit || sent_before)
        {
            return Ok(q);
        }
        self.authorize(Access::Configure, "queue", name)?;
        vhost.declare_queue(
            QueueSpec {
                name: name.into(),
                durable: params.durable,
                exclusive: params.exclusive.then_some(self.conn_id),
                auto_delete: params.auto_delete,
                arguments: params.arguments,
            },
            false,
            Some(self.conn_id),
        )?;
        if frame.command == Command::Send {
            self.declared.insert(name.to_owned());
        }
        Ok(vhost.existing_queue(name)?)
    }

    /// The queue a topic or exchange subscription declares and binds.
    fn subscription_queue(
        &mut self,
        dest: &Destination,
        dest_text: &str,
        frame: &Frame,
        id: Option<&str>,
    ) -> Result<(Arc<Queue>, bool), StompError> {
        let (exchange, pattern) = dest
            .binding()
            .expect("topic and exchange destinations bind");
        let vhost = self.vhost();
        if vhost.exchange(exchange).is_none() {
            return Err(CoreError::NotFound(format!(
                "no exchange '{exchange}' in vhost '{}'",
                vhost.name()
            ))
            .into());
        }
        let activemq_name = frame.header("activemq.subscriptionName");
        let flag = |name: &str| frame.header(name).map(|v| parse_bool(name, v)).transpose();
        let durable = flag("durable")?.unwrap_or(false)
            || flag("persistent")?.unwrap_or(false)
            || activemq_name.is_some();
        let name = match (frame.header("x-queue-name"), durable, activemq_name) {
            (Some(name), _, _) => name.to_owned(),
            (None, true, Some(sub_name)) => {
                durable_queue_name(&["activemq", &self.client_id, sub_name])
            }
            (None, true, None) => {
                let id = id.ok_or_else(|| {
                    StompError::new(
                        "Missing header",
                        "durable subscriptions must include an 'id' header",
                    )
                })?;
                durable_queue_name(&[dest_text, id])
            }
            (None, false, _) => String::new(),
        };
        self.authorize(Access::Read, "exchange", exchange)?;
        // A server-named queue is this subscription's own; a named one
        // may be shared or pre-declared, so it needs the user's rights.
        if !name.is_empty() {
            self.authorize(Access::Configure, "queue", &name)?;
            self.authorize(Access::Write, "queue", &name)?;
            self.authorize(Access::Read, "queue", &name)?;
        }
        let mut params = queue_params(frame, durable, !durable, !durable)?;
        params.durable = durable;
        let declared = vhost.declare_queue(
            QueueSpec {
                name: name.into(),
                durable,
                exclusive: params.exclusive.then_some(self.conn_id),
                auto_delete: params.auto_delete,
                arguments: params.arguments,
            },
            false,
            Some(self.conn_id),
        )?;
        vhost.bind(
            BindingSpec {
                source: exchange.into(),
                destination: BindingTarget::Queue(declared.name.clone()),
                key: pattern.into(),
                arguments: Headers::new(),
            },
            Some(self.conn_id),
        )?;
        Ok((vhost.existing_queue(declared.name.as_str())?, durable))
    }

    /// This connection's queue for `/temp-queue/<name>`, created on first
    /// use; `auto_subscribe` also subscribes to it (a reply-to does).
    pub(super) fn temp_queue(
        &mut self,
        name: &str,
        auto_subscribe: bool,
    ) -> Result<Arc<Queue>, StompError> {
        let queue = match self.temp_queues.get(name) {
            Some(t) => t.queue.clone(),
            None => {
                let vhost = self.vhost();
                let declared = vhost.declare_queue(
                    QueueSpec {
                        name: "".into(),
                        durable: false,
                        exclusive: Some(self.conn_id),
                        auto_delete: false,
                        arguments: Headers::new(),
                    },
                    false,
                    Some(self.conn_id),
                )?;
                let queue = vhost.existing_queue(declared.name.as_str())?;
                self.temp_queues.insert(
                    name.to_owned(),
                    TempQueue {
                        queue: queue.clone(),
                        subscribed: false,
                    },
                );
                queue
            }
        };
        if auto_subscribe && self.temp_queues.get(name).is_some_and(|t| !t.subscribed) {
            let dest = format!("/temp-queue/{name}");
            let sub = Subscription {
                id: Some(dest.clone()),
                message_id_prefix: format!("T_{dest}@@{}@@", self.session_id),
                key: dest.clone(),
                queue: queue.clone(),
                ack: AckMode::Auto,
                destination: Some(dest),
                durable: false,
            };
            self.subscribe(sub, 0, 0, false)?;
            if let Some(t) = self.temp_queues.get_mut(name) {
                t.subscribed = true;
            }
        }
        Ok(queue)
    }

    pub(super) fn on_unsubscribe(&mut self, frame: &Frame) -> Result<(), StompError> {
        let key = match frame.header("id") {
            Some(id) => id,
            None if self.version == Version::V1_0 => frame
                .header("destination")
                .ok_or_else(|| StompError::missing_header("UNSUBSCRIBE", "id"))?,
            None => return Err(StompError::missing_header("UNSUBSCRIBE", "id")),
        };
        let consumer = self.sub_keys.remove(key).ok_or_else(|| {
            StompError::new(
                "No subscription found",
                format!("no subscription '{key}' exists on this connection"),
            )
        })?;
        let sub = self
            .subs
            .remove(&consumer)
            .expect("subscription keys and subscriptions agree");
        let vhost = self.vhost();
        vhost.cancel(&sub.queue, consumer);
        self.unsubscribed = true;
        for t in self.temp_queues.values_mut() {
            if Arc::ptr_eq(&t.queue, &sub.queue) {
                t.subscribed = false;
            }
        }
        // RabbitMQ forgets a durable subscription when UNSUBSCRIBE repeats
        // `durable:true`; ActiveMQ when it names the subscription.
        let flag = |name: &str| frame.header(name).map(|v| parse_bool(name, v)).transpose();
        let forget = flag("durable")?.unwrap_or(false)
            || flag("persistent")?.unwrap_or(false)
            || frame.header("activemq.subscriptionName").is_some();
        if sub.durable && forget {
            vhost.delete_queue(sub.queue.name().as_str(), false, false, Some(self.conn_id))?;
        }
        Ok(())
    }

    /// ACK (`requeue` None) or NACK (`requeue` Some). The id header is the
    /// version's (1.2 `id`, earlier `message-id`), the other accepted too.
    pub(super) fn on_ack(
        &mut self,
        frame: &Frame,
        requeue: Option<bool>,
    ) -> Result<(), StompError> {
        let command = if requeue.is_some() { "NACK" } else { "ACK" };
        let (first, second) = if self.version == Version::V1_2 {
            ("id", "message-id")
        } else {
            ("message-id", "id")
        };
        let value = frame
            .header(first)
            .or_else(|| frame.header(second))
            .ok_or_else(|| StompError::missing_header(command, first))?;
        let tag = self.parse_message_id(value).ok_or_else(|| {
            StompError::invalid_header(first, value, "is not a message id this connection was sent")
        })?;
        let Some(o) = self.outstanding.get(&tag) else {
            return Err(StompError::new(
                "Message not found",
                format!(
                    "message {value:?} is not awaiting acknowledgement: it was settled already, or its subscription acknowledges automatically"
                ),
            ));
        };
        let tags: Vec<u64> = if o.cumulative {
            let consumer = o.consumer;
            self.outstanding
                .range(..=tag)
                .filter(|(_, x)| x.consumer == consumer)
                .map(|(t, _)| *t)
                .collect()
        } else {
            vec![tag]
        };
        let how = match requeue {
            None => Settle::Ack,
            Some(true) => Settle::Requeue,
            Some(false) => Settle::Discard,
        };
        if let Some(tx) = frame.header("transaction") {
            self.transaction(tx)?.ops.push(TxOp::Settle(tags, how));
            return Ok(());
        }
        self.settle_tags(&tags, how);
        Ok(())
    }

    /// The tag in `T_<key>@@<session>@@<tag>`, if the session is ours.
    fn parse_message_id(&self, id: &str) -> Option<u64> {
        let (rest, tag) = id.rsplit_once("@@")?;
        let (_, session) = rest.rsplit_once("@@")?;
        (session == self.session_id).then_some(())?;
        tag.parse().ok()
    }

    /// Settles the outstanding deliveries with these tags; tags settled
    /// already (a cumulative ACK got there first) are skipped.
    pub(super) fn settle_tags(&mut self, tags: &[u64], how: Settle) {
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        // One lock per queue for the whole batch.
        let mut by_queue: Vec<(Arc<Queue>, Vec<DeliveryId>)> = Vec::new();
        for tag in tags {
            let Some(o) = self.outstanding.remove(tag) else {
                continue;
            };
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

    /// Writes one delivery as MESSAGE. `None` if its subscription is gone
    /// (the delivery is then given back); else whether it was an auto-ack
    /// delivery, which the write settles.
    pub(super) fn deliver(&mut self, d: Delivery, out: &mut BytesMut) -> Option<bool> {
        let Some(sub) = self.subs.get(&d.consumer) else {
            let after = d.queue.settle(&[d.id], Settle::Requeue);
            if let Some(v) = &self.vhost {
                v.settle_aftermath(&d.queue, after);
            }
            return None;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let message_id = format!("{}{tag}", sub.message_id_prefix);
        let computed;
        let destination = match &sub.destination {
            Some(fixed) => fixed.as_str(),
            None => {
                computed = Destination::of_message(
                    d.message.exchange().as_str(),
                    d.message.routing_key().as_str(),
                );
                computed.as_str()
            }
        };
        let manual = sub.ack != AckMode::Auto;
        let head = MessageHead {
            subscription: sub.id.as_deref(),
            message_id: &message_id,
            destination,
            ack: (manual && self.version == Version::V1_2).then_some(message_id.as_str()),
            redelivered: d.redelivered,
        };
        properties::write_message(self.version, &head, &d.message, out);
        if manual {
            let cumulative = sub.ack == AckMode::Client;
            self.outstanding.insert(
                tag,
                Outstanding {
                    consumer: d.consumer,
                    queue: d.queue,
                    id: d.id,
                    cumulative,
                },
            );
        }
        Some(!manual)
    }

    /// The broker ended a subscription (its queue was deleted). As
    /// RabbitMQ does, the client hears of it in an ERROR frame naming the
    /// subscription, and the connection stays open.
    pub(super) fn server_cancelled(&mut self, consumer: ConsumerId, out: &mut BytesMut) {
        let Some(sub) = self.subs.remove(&consumer) else {
            return;
        };
        self.sub_keys.remove(&sub.key);
        self.temp_queues
            .retain(|_, t| !Arc::ptr_eq(&t.queue, &sub.queue));
        let mut frame = Frame::error(
            "Server cancelled subscription",
            &format!(
                "queue '{}' was deleted; no more messages will be delivered to subscription '{}'",
                sub.queue.name(),
                sub.key
            ),
        );
        if let Some(id) = &sub.id {
            frame = frame.with_header("subscription", id.clone());
        }
        self.emit(&frame, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_queue_names_are_stable_and_distinct() {
        let a = durable_queue_name(&["/topic/a", "sub-1"]);
        assert_eq!(a, durable_queue_name(&["/topic/a", "sub-1"]));
        assert_ne!(a, durable_queue_name(&["/topic/a", "sub-2"]));
        assert_ne!(
            a,
            durable_queue_name(&["/topic/as", "ub-1"]),
            "parts are separated"
        );
        assert!(a.starts_with("stomp-subscription-") && a.len() == 35, "{a}");
    }

    #[test]
    fn queue_headers_override_the_destination_defaults() {
        let frame = Frame::new(Command::Subscribe)
            .with_header("durable", "false")
            .with_header("x-max-length", " 10")
            .with_header("x-dead-letter-exchange", "dlx")
            .with_header("x-single-active-consumer", "true")
            .with_header("x-unknown", "kept out")
            .with_header("x-max-length", "99");
        let p = queue_params(&frame, true, false, false).expect("valid");
        assert!(!p.durable && !p.auto_delete && !p.exclusive && p.explicit);
        assert_eq!(p.arguments.get("x-max-length"), Some(&Value::I64(10)));
        assert_eq!(
            p.arguments.get("x-dead-letter-exchange"),
            Some(&Value::Str("dlx".into()))
        );
        assert_eq!(
            p.arguments.get("x-single-active-consumer"),
            Some(&Value::Bool(true))
        );
        assert!(!p.arguments.contains_key("x-unknown"));
        let none = queue_params(&Frame::new(Command::Send), true, false, false).expect("valid");
        assert!(!none.explicit);
        let bad = Frame::new(Command::Send).with_header("x-max-length", "ten");
        assert!(queue_params(&bad, true, false, false).is_err());
    }
}

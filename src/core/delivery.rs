//! What the core hands to adapters: deliveries and notices, sent over each
//! connection's own channel, never as a call back into the adapter.

use std::sync::Arc;

use super::message::Message;
use super::names::{ConsumerId, DeliveryId};
use super::queue::Queue;

/// One message handed to one consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The consumer it is for.
    pub consumer: ConsumerId,
    /// The queue it came from, for settling.
    pub queue: Arc<Queue>,
    /// The queue's id for it; settle with this (ignored for auto-ack consumers).
    pub id: DeliveryId,
    /// The message.
    pub message: Message,
    /// It was handed out before and came back.
    pub redelivered: bool,
    /// How many times it was handed out before this one.
    pub delivery_count: u32,
}

/// What the core tells a connection.
#[derive(Debug)]
pub enum Event {
    /// A message for one of the connection's consumers.
    Deliver(Delivery),
    /// The broker ended a consumer (its queue was deleted).
    ConsumerCancelled(ConsumerId),
    /// The broker wants this connection closed (session takeover, admin).
    CloseConnection(String),
}

/// The sending half of a connection's event channel. Unbounded on purpose:
/// queues send under their lock and must not wait, and every producer of
/// events is bounded by credit (prefetch and the send window in queue.rs).
pub use super::event_channel::EventSink;

/// How a consumer settles a delivery it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done with it.
    Ack,
    /// Put it back where it was, marked redelivered.
    Requeue,
    /// Give up on it: dead-letter it if the queue says so, else drop it.
    Discard,
}

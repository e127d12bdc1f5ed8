//! STOMP 1.0, 1.1 and 1.2, as RabbitMQ's and ActiveMQ's clients speak it.
//!
//! How STOMP's nouns map onto the core (DESIGN.md's table; destination.rs
//! has the whole list):
//!
//! - A *destination* is an exchange and a routing key for SEND, and a queue
//!   for SUBSCRIBE. `/queue/q` is the default exchange with key `q` and the
//!   queue `q`, declared durable on first use as RabbitMQ does; `/topic/k`
//!   is `amq.topic` with key `k`, which is also where MQTT publishes, so
//!   `/topic/a.b` meets MQTT's `a/b`; `/exchange/x/k` is any exchange.
//! - A *subscription* is a core consumer. On a queue destination it consumes
//!   the queue; on a topic or exchange it declares its own queue and binds it
//!   (exclusive and auto-delete, or durable for a durable subscription), so
//!   each subscriber gets every message, as topics promise.
//! - SEND is `VHost::publish`; ACK and NACK settle deliveries by the queue's
//!   `DeliveryId`, which the session maps from the tag in each message-id;
//!   deliveries arrive as `Event::Deliver` and leave as MESSAGE frames.
//! - Headers are properties (properties.rs): `content-type`, `persistent`,
//!   `reply-to` and the others map to their named core properties, and every
//!   other header is a core header, so AMQP clients see STOMP's custom
//!   headers in their header table and the other way round.
//!
//! What the adapter keeps (session.rs): the negotiated version and
//! heart-beats, subscriptions by id, deliveries awaiting ACK, open
//! transactions (SEND and ACK frames held until COMMIT), this connection's
//! temp queues, and the receipts it owes, in frame order.
//!
//! Surprises:
//! - A RECEIPT for a SEND of a persistent message routed to a durable queue
//!   is held until the journal has the message on disk (DESIGN.md's
//!   guarantee), and later receipts wait behind it to keep their order.
//! - The version changes the wire mid-stream: CONNECT is read with 1.0's
//!   rules (no escaping), and every frame after it with the negotiated
//!   version's; connection.rs tells the decoder after each frame.
//! - `message-id` in a MESSAGE is the broker's acknowledgement handle, not
//!   the application's message id; that travels as `amqp-message-id`.
//! - A temp-queue `reply-to` is rewritten to the bare name of a queue the
//!   connection owns and is subscribed to; a bare queue name in an incoming
//!   message's reply-to (an AMQP requester's) is shown as `/reply-queue/name`
//!   so that a STOMP responder can SEND to it.
//! - After an ERROR frame the connection closes (STOMP 1.2, "ERROR"), with
//!   one exception taken from RabbitMQ: when the broker cancels a
//!   subscription because its queue was deleted, the ERROR names the
//!   subscription and the connection stays open.

pub mod codec;
pub mod connection;
pub mod destination;
pub mod error;
mod escape;
pub mod frame;
pub mod properties;
pub mod session;
mod subscription;

pub use connection::serve;

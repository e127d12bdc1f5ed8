//! AMQP 0-9-1, as RabbitMQ's clients speak it.
//!
//! How AMQP's nouns map onto the core: an AMQP exchange, queue and binding
//! *are* the core's (the core borrowed RabbitMQ's model, so no translation
//! is needed); a channel is adapter state only: it owns delivery tags, the
//! publish in progress, confirms and transactions, and its consumers' ids.
//! basic.publish becomes `VHost::publish`; basic.consume attaches a
//! `ConsumerSpec` whose deliveries arrive as `Event::Deliver` on the
//! connection's channel; basic.ack / nack / reject settle by the queue's
//! `DeliveryId`, which the channel maps from its delivery tags.
//!
//! Surprises:
//! - amq-protocol parses and writes frames, but does not enforce frame-max
//!   and copies bodies; codec.rs checks the 7-byte header first and slices
//!   bodies out of the read buffer.
//! - Short strings are at most 255 bytes: names from MQTT and STOMP can be
//!   longer, so every outbound short string goes through `session::short`
//!   and long property values travel as headers (properties.rs).
//! - Consumer credit is twofold: the prefetch (unacked deliveries) and a
//!   send window (deliveries not yet handed to the socket), so a consumer
//!   that stops reading is held back by TCP, not by our memory.
//! - Direct reply-to (`amq.rabbitmq.reply-to`) is an exclusive auto-delete
//!   queue per channel, named `amq.rabbitmq.reply-to.<random>`; replies are
//!   ordinary publishes to the default exchange with that name as key.

pub mod channel;
pub mod codec;
pub mod connection;
pub mod error;
pub mod properties;
pub mod session;

pub use connection::serve;

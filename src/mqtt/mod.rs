//! MQTT 3.1, 3.1.1 and 5.0, as RabbitMQ's MQTT plugin maps them onto the
//! broker's model.
//!
//! How MQTT's nouns map onto the core:
//! - A PUBLISH to topic `a/b/c` is a core publish to exchange `amq.topic`
//!   with routing key `a.b.c`: `/` and `.` are swapped both ways
//!   (topic.rs), so MQTT, AMQP and STOMP clients share one topic space.
//! - A session (client id) owns one queue, `mqtt-subscription-<id>qos1`:
//!   durable when the session outlives its connection (clean session 0 /
//!   session expiry > 0), else exclusive to the connection. Each
//!   subscription is a binding of that queue to `amq.topic`, its filter
//!   translated (`+` -> `*`, `#` -> `#`) and marked so leading wildcards
//!   skip `$` topics (core/binding_options.rs). One consumer on the queue
//!   delivers through core `Event`s like any AMQP consumer: manual-ack with
//!   the client's Receive Maximum as prefetch while any subscription grants
//!   QoS 1 or 2, auto-ack while all are QoS 0.
//! - Overlapping subscriptions therefore get one copy; the session matches
//!   the key against its filters to pick the QoS (the highest granted, no
//!   higher than the publish's), the subscription identifiers, no-local and
//!   retain-as-published.
//! - A shared subscription `$share/g/f` is a queue per group and filter,
//!   `mqtt-shared-g-<key>`; each member consumes from it, and the core's
//!   round-robin balances the group.
//! - Retained messages live in the vhost's retained store
//!   (core/retained.rs), keyed by routing key; the retain flag travels as
//!   header `x-mqtt-retain: true`, so an AMQP or STOMP publish to
//!   `amq.topic` with that header is retained too.
//! - Client ids are claimed in the vhost's session registry
//!   (core/sessions.rs): a second CONNECT with the same id closes the first
//!   connection (`Event::CloseConnection`) and resumes its state.
//! - Login: the user name (optionally `vhost:user`) and password against
//!   the broker's users; a client without a user name logs in as the
//!   configured default user (guest, so loopback only) unless anonymous
//!   MQTT is turned off.
//! - Properties map per DESIGN.md's table (properties.rs).
//!
//! Surprises:
//! - rmqtt-codec decodes 3.1.1 and 5.0 into different types; codec.rs
//!   lifts 3.1.1 into 5.0's so the session has one code path, and lowers
//!   the server's packets again for 3.1.1 clients.
//! - QoS 2 toward the client acknowledges the queue at PUBREC, and keeps
//!   the packet id until PUBCOMP in the session's persistent state, so a
//!   reconnect resends PUBREL rather than the message.
//! - A message over the client's Maximum Packet Size is dropped as if
//!   delivered (MQTT-3.1.2-25), never sent cut.

pub mod codec;
pub mod connection;
pub mod deadlines;
pub mod durable;
pub mod error;
pub mod inflight;
pub mod properties;
pub mod session;
pub mod topic;

pub use connection::serve;
pub use session::Settings;

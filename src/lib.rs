//! ferrymq: one broker core, three wire protocols.
//!
//! ```text
//!  main.rs     flags -> config -> server::run
//!  server      listeners, "ready", graceful shutdown
//!  amqp/       AMQP 0-9-1 adapter (amq-protocol frames <-> core calls)
//!  mqtt/       MQTT 3.1 / 3.1.1 / 5.0 adapter (rmqtt-codec packets <-> core calls)
//!  stomp/      STOMP 1.0-1.2
//!  core/       vhosts: exchanges, queues, bindings, consumers; no wire types
//!  admin/      management API, /metrics, web console, `ferrymq ctl`
//!  bench       a pipelined load generator for any AMQP broker
//! ```

pub mod admin;
pub mod amqp;
pub mod bench;
pub mod config;
pub mod core;
pub mod mqtt;
pub mod server;
pub mod stomp;
pub mod store;

//! ferrymq: one broker core, three wire protocols.
//!
//! ```text
//!  server      listeners, "ready", graceful shutdown
//!  amqp/       AMQP 0-9-1 adapter (amq-protocol frames <-> core commands)
//!  stomp/      STOMP 1.0-1.2 adapter
//!  core/       exchanges, queues, bindings, consumers; no wire types
//!  bench       a pipelined load generator for any AMQP broker
//! ```

pub mod bench;
pub mod stomp;

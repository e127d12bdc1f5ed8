//! The operators' side: the management HTTP API modelled on RabbitMQ's,
//! Prometheus metrics, the web console, and the client `ferrymq ctl` uses.
//!
//! ```text
//!  http.rs         the axum router: /api/*, /metrics, the console at /;
//!                  overview, vhosts, connections, channels, consumers
//!  topology.rs     exchanges, queues, bindings; publish, get, move
//!  users.rs        users, permissions, definitions
//!  auth.rs         HTTP Basic against the broker's users; 401 / 403
//!  json.rs         core values <-> the JSON shapes RabbitMQ's API uses
//!  definitions.rs  export and import of vhosts, users, permissions,
//!                  exchanges, queues and bindings
//!  metrics.rs      every metric name, and the scrape
//!  client.rs       a small HTTP/1.1 client over hyper
//!  ctl.rs          `ferrymq ctl` subcommands
//!  console/        one static page and its script, compiled in
//! ```
//!
//! The admin side reads the core's tables (vhosts, queues, the connection
//! registry, the user table) and calls the same core operations the
//! protocol adapters call; it has no state of its own beyond a rate sample.

pub mod auth;
pub mod client;
pub mod ctl;
pub mod definitions;
pub mod http;
pub mod json;
pub mod metrics;
pub mod topology;
pub mod users;

//! Starts ferrymq in-process on ephemeral ports for integration tests.

#![allow(dead_code)]

use std::time::Duration;

use ferrymq::config::Config;
use ferrymq::server::Server;
use lapin::{Connection, ConnectionProperties};

/// Generous bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A broker on ephemeral loopback ports with a fresh data directory.
pub async fn start() -> Server {
    start_in(&fresh_dir()).await
}

/// A new empty data directory (kept after the test for inspection).
pub fn fresh_dir() -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix("ferrymq-test-")
        .tempdir()
        .expect("temp dir")
        .keep()
}

/// A broker on ephemeral loopback ports over an existing data directory.
pub async fn start_in(dir: &std::path::Path) -> Server {
    start_configured(dir, |_| {}).await
}

/// As `start_in`, with the configuration changed by `tune` first.
pub async fn start_configured(dir: &std::path::Path, tune: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config::ephemeral();
    config.data_dir = dir.to_path_buf();
    tune(&mut config);
    start_with(&config).await
}

/// A broker with `config`, waiting out a lock a forked child still holds.
pub async fn start_with(config: &Config) -> Server {
    // A restart in the same directory can find the last broker's lock
    // still held: a child process that another test in this binary is
    // starting got a copy of the lock's descriptor at its fork and keeps
    // it until its exec. The lock has no release to wait for, so this
    // polls, within the bound any wait here gets.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Server::start(config).await {
            Err(ferrymq::server::StartError::Data { reason, .. })
                if reason.contains("in use") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            started => return started.expect("broker starts on ephemeral ports"),
        }
    }
}

/// The AMQP URI of a running broker.
pub fn uri(server: &Server) -> String {
    format!(
        "amqp://guest:guest@{}/%2f",
        server.amqp.expect("AMQP listener is on")
    )
}

/// Opens a lapin connection.
pub async fn connect(server: &Server) -> Connection {
    within(
        "AMQP connection",
        Connection::connect(&uri(server), ConnectionProperties::default()),
    )
    .await
    .expect("lapin connects")
}

/// Awaits a future, failing the test with `what` if it takes longer than WAIT.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

//! kill -9 the broker while publishers wait for confirms, restart it, and
//! count: every confirmed persistent message must be there.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{WAIT, within};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Starts the built binary and returns it with its AMQP address, read
/// from the `ready` line.
fn spawn(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args([
            "serve",
            "--amqp",
            "127.0.0.1:0",
            "--mqtt",
            "off",
            "--stomp",
            "off",
            "--http",
            "off",
            "--data-dir",
        ])
        .arg(dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrymq starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("amqp="))
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("the broker logged its ready line with amqp=ADDR");
    (child, addr)
}

async fn connect(addr: &str) -> Connection {
    within(
        "AMQP connection",
        Connection::connect(
            &format!("amqp://guest:guest@{addr}/%2f"),
            ConnectionProperties::default(),
        ),
    )
    .await
    .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9_mid_stream() {
    let dir = common::fresh_dir();
    let mut confirmed = BTreeSet::new();
    let mut next = 0u32;
    for round in 0..3 {
        let (mut child, addr) = spawn(&dir);
        let conn = connect(&addr).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "orders".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        // Publish in windows of 200; kill the broker while a window is in flight.
        let kill_after = 5 + round * 3;
        for window in 0.. {
            let mut pending = Vec::new();
            for _ in 0..200 {
                let c = ch
                    .basic_publish(
                        "".into(),
                        "orders".into(),
                        BasicPublishOptions::default(),
                        &next.to_be_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await;
                let Ok(c) = c else { break };
                pending.push((next, c));
                next += 1;
            }
            if window == kill_after {
                child.kill().expect("kill -9");
            }
            for (n, c) in pending {
                match tokio::time::timeout(WAIT, c).await {
                    Ok(Ok(conf)) if conf.is_ack() => {
                        confirmed.insert(n);
                    }
                    _ => {}
                }
            }
            if window >= kill_after {
                break;
            }
        }
        let _ = child.wait();
    }
    // Restart and drain.
    let (mut child, addr) = spawn(&dir);
    let conn = connect(&addr).await;
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "orders".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    let total = q.message_count() as usize;
    let mut c = ch
        .basic_consume(
            "orders".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    for _ in 0..total {
        let d = within("a recovered message", c.next())
            .await
            .expect("open")
            .expect("delivery");
        let n = u32::from_be_bytes(d.data[..4].try_into().expect("4 bytes"));
        if !seen.insert(n) {
            duplicates += 1;
        }
    }
    let lost: Vec<u32> = confirmed.difference(&seen).copied().collect();
    eprintln!(
        "crash test: published {next}, confirmed {}, recovered {}, lost {}, duplicated {duplicates}",
        confirmed.len(),
        seen.len(),
        lost.len()
    );
    assert!(
        !confirmed.is_empty(),
        "some publishes were confirmed before each kill"
    );
    assert!(lost.is_empty(), "confirmed but lost: {lost:?}");
    assert_eq!(duplicates, 0);
    child.kill().expect("stop");
    let _ = child.wait();
}

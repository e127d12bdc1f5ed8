//! A data directory on a small tmpfs, filled by confirmed persistent
//! publishes: publishers get connection.blocked, consumers keep draining,
//! acknowledged segments are reclaimed, publishing resumes, and every
//! confirmed message is still there after a restart. Once with the
//! free-space alarm tripping first, once with the limit off so the journal
//! really hits ENOSPC. Needs root (for mount); skipped otherwise.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{connect, within};
use ferrymq::config::Config;
use ferrymq::server::Server;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::watch;

/// The tmpfs, unmounted when the test ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts an 8 MiB tmpfs, or says why it cannot.
    fn mount() -> Result<Self, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| format!("cannot run id: {e}"))?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not running as root, cannot mount a tmpfs".into());
        }
        let dir = common::fresh_dir();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const BODY: usize = 16 * 1024;

async fn start(dir: &Path, disk_free_limit: u64) -> Server {
    let mut config = Config::ephemeral();
    config.data_dir = dir.to_path_buf();
    config.journal_segment_bytes = 256 * 1024;
    config.disk_free_limit_bytes = disk_free_limit;
    common::start_with(&config).await
}

fn body(n: u32) -> Vec<u8> {
    let mut b = vec![0xAB; BODY];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b
}

fn id(data: &[u8]) -> u32 {
    u32::from_be_bytes(data[..4].try_into().expect("4 bytes"))
}

/// Publishes numbered persistent messages in windows of 16 until `stop`,
/// reporting the confirmed count as it grows; returns the confirmed ids.
async fn publish_until(
    ch: Channel,
    stop: Arc<AtomicBool>,
    confirmed_count: watch::Sender<usize>,
) -> BTreeSet<u32> {
    let mut confirmed = BTreeSet::new();
    let mut next = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let mut window = Vec::new();
        for _ in 0..16 {
            let c = ch
                .basic_publish(
                    "".into(),
                    "fill".into(),
                    BasicPublishOptions::default(),
                    &body(next),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            window.push((next, c));
            next += 1;
        }
        for (n, c) in window {
            if c.await.expect("confirm").is_ack() {
                confirmed.insert(n);
            }
        }
        confirmed_count.send_replace(confirmed.len());
    }
    confirmed
}

async fn fill_drain_and_resume(disk_free_limit: u64) {
    let tmpfs = match Tmpfs::mount() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let server = start(&tmpfs.0, disk_free_limit).await;
    let publisher = connect(&server).await;
    let pch = publisher.create_channel().await.expect("channel");
    pch.queue_declare(
        "fill".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue");
    pch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut alarms = server.broker.alarms.watch();
    let stop = Arc::new(AtomicBool::new(false));
    let (count_tx, mut count) = watch::channel(0usize);
    let publishing = tokio::spawn(publish_until(pch, stop.clone(), count_tx));

    within(
        "the disk alarm as the tmpfs fills",
        alarms.wait_for(|a| a.disk),
    )
    .await
    .expect("alarm raised");
    within("connection.blocked at the publisher", async {
        while !publisher.status().blocked() {
            tokio::task::yield_now().await;
        }
    })
    .await;

    if disk_free_limit == 0 {
        assert!(
            !server.broker.journal_healthy(),
            "with no free-space limit the alarm comes from a failed journal write"
        );
    }

    // Consumers are not blocked: drain and acknowledge everything.
    let consumer = connect(&server).await;
    let cch = consumer.create_channel().await.expect("channel");
    cch.basic_qos(64, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut deliveries = cch
        .basic_consume(
            "fill".into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let (got_tx, got) = watch::channel(BTreeSet::<u32>::new());
    let draining = tokio::spawn(async move {
        while let Some(Ok(d)) = deliveries.next().await {
            got_tx.send_modify(|g| {
                g.insert(id(&d.data));
            });
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    });

    // Acknowledged segments are reclaimed, the alarm clears, and the
    // blocked publisher goes on.
    within(
        "the disk alarm to clear as segments are reclaimed",
        alarms.wait_for(|a| !a.disk),
    )
    .await
    .expect("alarm cleared");
    let at_clear = *count.borrow_and_update();
    within(
        "200 more confirms after the alarm cleared",
        count.wait_for(|n| *n >= at_clear + 200),
    )
    .await
    .expect("publisher running");
    stop.store(true, Ordering::Relaxed);
    let confirmed = within("the publisher's last window", publishing)
        .await
        .expect("publisher task");
    assert!(
        server.broker.journal_healthy(),
        "journal writes succeed again"
    );
    let mut got_rx = got.clone();
    within(
        "every confirmed message at the consumer",
        got_rx.wait_for(|g| confirmed.is_subset(g)),
    )
    .await
    .expect("consumer running");
    draining.abort();
    drop(consumer);

    // A confirmed message published after all that survives a restart,
    // and the journal that went through a full disk recovers.
    let ch = publisher.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    assert!(
        ch.basic_publish(
            "".into(),
            "fill".into(),
            BasicPublishOptions::default(),
            &body(u32::MAX),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm")
        .is_ack()
    );
    drop(publisher);
    server.shutdown(Duration::from_secs(5)).await;
    let server = start(&tmpfs.0, disk_free_limit).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut found = false;
    while let Some(m) = within(
        "a message after the restart",
        ch.basic_get("fill".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    {
        found |= id(&m.delivery.data) == u32::MAX;
    }
    assert!(found, "the last confirmed message survived the restart");
    eprintln!(
        "disk full (limit {disk_free_limit} B): {} confirmed, all delivered; resumed after {at_clear}",
        confirmed.len()
    );
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_space_alarm_blocks_publishers_until_acknowledged_segments_are_reclaimed() {
    fill_drain_and_resume(3 * 1024 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_writes_failing_with_enospc_block_publishers_until_space_frees() {
    fill_drain_and_resume(0).await;
}

//! /metrics and /metrics/per-object over real HTTP while lapin works the
//! broker.

mod admin_common;
mod common;

use admin_common::{anonymous, send};
use common::{connect, start, within};
use ferrymq::config::Config;
use ferrymq::server::Server;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

/// The value of the sample line `series` (name and labels exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(server: &Server, path: &str) -> String {
    let r = send(&anonymous(server), "GET", path, None).await;
    assert_eq!(r.status, 200, "{path} needs no credentials");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "Prometheus text format"
    );
    r.text()
}

#[tokio::test]
async fn metrics_count_amqp_traffic_and_show_queue_depths() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    for q in ["deep", "shallow"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    }
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for (q, n) in [("deep", 5), ("shallow", 2), ("nowhere", 1)] {
        for _ in 0..n {
            let c = ch
                .basic_publish(
                    "".into(),
                    q.into(),
                    BasicPublishOptions::default(),
                    b"12345",
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
            within("confirm", c).await.expect("confirmed");
        }
    }
    // A persistent message in a durable queue is confirmed only once the
    // journal's group commit holding it is on disk, and timed.
    ch.queue_declare(
        "kept".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("durable queue");
    let c = ch
        .basic_publish(
            "".into(),
            "kept".into(),
            BasicPublishOptions::default(),
            b"kept",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish");
    within("durable confirm", c).await.expect("confirmed");
    let mut consumer = ch
        .basic_consume(
            "shallow".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let d = within("a delivery", consumer.next())
        .await
        .expect("open")
        .expect("delivery");
    d.ack(BasicAckOptions::default()).await.expect("ack");
    let d = within("another delivery", consumer.next())
        .await
        .expect("open")
        .expect("delivery");
    // A round trip on the channel: the ack above has been processed.
    ch.queue_declare(
        "deep".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare");

    let text = scrape(&server, "/metrics").await;
    let amqp = |name: &str| sample(&text, &format!("{name}{{protocol=\"amqp\"}}"));
    assert_eq!(amqp("ferrymq_connections"), Some(1.0));
    assert_eq!(amqp("ferrymq_channels"), Some(1.0));
    assert_eq!(amqp("ferrymq_consumers"), Some(1.0));
    assert_eq!(amqp("ferrymq_messages_published_total"), Some(9.0));
    assert_eq!(amqp("ferrymq_messages_unroutable_total"), Some(1.0));
    assert_eq!(amqp("ferrymq_messages_confirmed_total"), Some(9.0));
    assert_eq!(amqp("ferrymq_messages_delivered_total"), Some(2.0));
    assert_eq!(amqp("ferrymq_messages_acknowledged_total"), Some(1.0));
    assert_eq!(
        sample(&text, "ferrymq_connections{protocol=\"mqtt\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "ferrymq_queue_messages_ready{vhost=\"/\",queue=\"deep\"}"
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            "ferrymq_queue_messages_unacked{vhost=\"/\",queue=\"shallow\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "ferrymq_queue_messages_ready_bytes{vhost=\"/\",queue=\"deep\"}"
        ),
        Some(25.0)
    );
    assert_eq!(
        sample(
            &text,
            "ferrymq_queue_consumers{vhost=\"/\",queue=\"shallow\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "ferrymq_messages_ready{vhost=\"/\"}"),
        Some(6.0)
    );
    assert_eq!(sample(&text, "ferrymq_queues{vhost=\"/\"}"), Some(3.0));
    assert!(sample(&text, "ferrymq_journal_commit_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(sample(&text, "ferrymq_confirm_latency_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(sample(&text, "ferrymq_process_resident_memory_bytes").is_some_and(|n| n > 0.0));
    assert!(sample(&text, "ferrymq_process_open_fds").is_some_and(|n| n > 0.0));
    assert_eq!(sample(&text, "ferrymq_memory_alarm"), Some(0.0));
    assert_eq!(
        sample(&text, "ferrymq_ha_role{role=\"standalone\"}"),
        Some(1.0)
    );
    drop(d);
}

#[tokio::test]
async fn metrics_cap_per_queue_series_and_per_object_lists_every_queue() {
    let mut config = Config::ephemeral();
    config.metrics_queue_cap = 2;
    let server = Server::start(&config).await.expect("broker starts");
    let vhost = server.broker.vhost("/").expect("default vhost");
    for (name, depth) in [("q1", 1), ("q2", 4), ("q3", 0), ("q4", 2)] {
        vhost
            .declare_queue(
                ferrymq::core::queue::QueueSpec {
                    name: name.into(),
                    durable: false,
                    exclusive: None,
                    auto_delete: false,
                    arguments: Default::default(),
                },
                false,
                None,
            )
            .expect("declare");
        for _ in 0..depth {
            let m =
                ferrymq::core::Message::new("".into(), name.into(), Default::default(), "x".into());
            vhost.publish(m).expect("publish");
        }
    }
    let series = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("ferrymq_queue_messages_ready{"))
            .map(str::to_owned)
            .collect()
    };
    let capped = scrape(&server, "/metrics").await;
    assert_eq!(
        series(&capped),
        [
            "ferrymq_queue_messages_ready{vhost=\"/\",queue=\"q2\"} 4",
            "ferrymq_queue_messages_ready{vhost=\"/\",queue=\"q4\"} 2",
        ]
    );
    assert_eq!(
        sample(&capped, "ferrymq_messages_ready{vhost=\"/\"}"),
        Some(7.0),
        "totals cover every queue"
    );
    let all = scrape(&server, "/metrics/per-object").await;
    assert_eq!(series(&all).len(), 4);
}

#[tokio::test]
async fn metrics_pass_promtool_check_when_promtool_is_installed() {
    let Ok(promtool) = which("promtool") else {
        println!(
            "skipped: promtool is not installed (scripts/install-prometheus.sh installs it; conformance/admin runs this check always)"
        );
        return;
    };
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "q\"uoted\\name".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    for path in ["/metrics", "/metrics/per-object"] {
        let text = scrape(&server, path).await;
        let mut child = tokio::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool starts");
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(text.as_bytes())
            .await
            .expect("write metrics");
        drop(stdin);
        let out = within("promtool", child.wait_with_output())
            .await
            .expect("promtool runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool on {path}: {said}"
        );
    }
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

#[tokio::test]
async fn a_raised_disk_alarm_shows_in_metrics_overview_and_health_check() {
    let server = start().await;
    let mut alarms = server.broker.alarms.watch();
    server
        .resource_limits
        .disk_free
        .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
    within("the disk alarm", alarms.wait_for(|a| a.disk))
        .await
        .expect("alarm raised");
    let text = scrape(&server, "/metrics").await;
    assert_eq!(sample(&text, "ferrymq_disk_alarm"), Some(1.0));
    let api = admin_common::admin(&server);
    let o = admin_common::get_json(&api, "/api/overview").await;
    assert_eq!(o["alarms"]["disk"], true);
    let r = send(&api, "GET", "/api/health/checks/alarms", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "failed");
}

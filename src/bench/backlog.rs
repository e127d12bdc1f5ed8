//! Fill and drain: one producer publishes N persistent 1 KiB messages with
//! confirms into one durable queue that has no consumer, then one consumer
//! drains it with manual acks and checks that the sequence numbers arrive
//! in order. The broker's peak memory is measured in each phase, so a
//! backlog that lives in RAM instead of on disk shows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable;
use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use super::client::{Connection, Target};
use super::consumer::{AckMode, Consumer};
use super::producer::{Producer, ProducerSpec};
use super::usage::{Usage, UsageSampler, load1};

pub const NAME: &str = "backlog-1k";
const BODY_SIZE: usize = 1024;
const CONFIRM_WINDOW: u64 = 1000;
const PREFETCH: u16 = 100;

/// What the two phases measured.
#[derive(Clone, Debug, Default)]
pub struct BacklogOutcome {
    pub filled: u64,
    pub fill_elapsed: Duration,
    pub confirm_p50_us: u64,
    pub confirm_p99_us: u64,
    pub fill: Usage,
    pub drained: u64,
    pub drain_elapsed: Duration,
    pub drain: Usage,
    /// Deliveries whose sequence number was not above the previous one.
    pub out_of_order: u64,
    pub load1: Option<f64>,
}

/// Fills, drains, and deletes the queue whatever happened.
pub async fn run(
    target: &Target,
    messages: u64,
    seconds: u64,
    broker_pid: Option<u32>,
    durable_args: &FieldTable,
) -> Result<BacklogOutcome> {
    let queue = format!("ferrymq-bench-{NAME}-{}", std::process::id());
    let mut control = Connection::open(target)
        .await
        .context("control connection")?;
    control
        .declare_queue_with(&queue, true, durable_args.clone())
        .await?;
    let result = fill_and_drain(target, &queue, messages, seconds, broker_pid).await;
    let cleanup = async {
        let left = control.delete_queue(&queue).await?;
        if left > 0 {
            tracing::warn!(queue, left, "queue still held messages when deleted");
        }
        control.close().await
    }
    .await;
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

async fn fill_and_drain(
    target: &Target,
    queue: &str,
    messages: u64,
    seconds: u64,
    broker_pid: Option<u32>,
) -> Result<BacklogOutcome> {
    let producer = Producer::connect(
        target,
        ProducerSpec {
            queue: queue.to_owned(),
            count: messages,
            body_size: BODY_SIZE,
            persistent: true,
            confirm_window: Some(CONFIRM_WINDOW),
        },
    )
    .await
    .context("producer")?;
    let load = load1();
    let sampler = broker_pid.map(UsageSampler::start);
    let epoch = Instant::now();
    tracing::info!(messages, "filling the queue");
    let sent = producer
        .run(epoch, epoch + Duration::from_secs(seconds))
        .await
        .context("producer")?;
    let fill = finish(sampler).await;
    if sent.nacked > 0 {
        bail!(
            "the broker nacked {} of {} publishes",
            sent.nacked,
            sent.published
        );
    }
    let confirms = sent
        .confirm_latency
        .unwrap_or_else(super::consumer::latency_histogram);
    tracing::info!(filled = sent.published, elapsed = ?sent.elapsed, "draining the queue");

    let consumer = Consumer::connect(
        target,
        queue,
        "drain",
        AckMode::Manual { prefetch: PREFETCH },
    )
    .await
    .context("consumer")?;
    let sampler = broker_pid.map(UsageSampler::start);
    let start = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut task = tokio::spawn(consumer.run(epoch, delivered.clone(), stop.clone()));
    // The consumer fails by itself after 30 s without a delivery.
    while delivered.load(Ordering::Relaxed) < sent.published {
        if task.is_finished() {
            (&mut task)
                .await
                .context("consumer task")?
                .context("consumer")?;
            bail!("the consumer stopped early");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    let got = task.await.context("consumer task")?.context("consumer")?;
    let drain = finish(sampler).await;
    Ok(BacklogOutcome {
        filled: sent.published,
        fill_elapsed: sent.elapsed,
        confirm_p50_us: confirms.value_at_quantile(0.50),
        confirm_p99_us: confirms.value_at_quantile(0.99),
        fill,
        drained: got.received,
        drain_elapsed: got
            .last_delivery
            .unwrap_or(start)
            .saturating_duration_since(start),
        drain,
        out_of_order: got.out_of_order,
        load1: load,
    })
}

async fn finish(sampler: Option<UsageSampler>) -> Usage {
    match sampler {
        Some(s) => s.finish().await,
        None => Usage::default(),
    }
}

pub fn header() -> String {
    "| broker | scenario | messages | fill msg/s | confirm p50 ms | confirm p99 ms | fill peak RSS MiB | drain msg/s | drain peak RSS MiB | in order | load 1m |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|".to_owned()
}

pub fn row(label: &str, o: &BacklogOutcome) -> String {
    let rate = |n: u64, d: Duration| {
        let s = d.as_secs_f64();
        if s > 0.0 {
            format!("{:.0}", n as f64 / s)
        } else {
            "-".to_owned()
        }
    };
    let mib = |u: &Usage| {
        u.peak_rss_kib
            .map_or_else(|| "-".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0))
    };
    let in_order = if o.out_of_order == 0 && o.drained == o.filled {
        "yes".to_owned()
    } else {
        format!(
            "no ({} out of order, {} of {})",
            o.out_of_order, o.drained, o.filled
        )
    };
    format!(
        "| {label} | {NAME} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {in_order} | {} |",
        o.filled,
        rate(o.filled, o.fill_elapsed),
        o.confirm_p50_us as f64 / 1000.0,
        o.confirm_p99_us as f64 / 1000.0,
        mib(&o.fill),
        rate(o.drained, o.drain_elapsed),
        mib(&o.drain),
        o.load1
            .map_or_else(|| "-".to_owned(), |l| format!("{l:.2}")),
    )
}

pub fn failed_row(label: &str, error: &anyhow::Error) -> String {
    let why = format!("{error:#}").replace(['\n', '|'], " ");
    format!("| {label} | {NAME} | failed: {why} | | | | | | | | |")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_has_one_cell_per_header_column() {
        let o = BacklogOutcome {
            filled: 1000,
            fill_elapsed: Duration::from_millis(500),
            drained: 1000,
            drain_elapsed: Duration::from_secs(1),
            ..BacklogOutcome::default()
        };
        let cols = header().lines().next().unwrap().matches('|').count();
        let r = row("ferrymq", &o);
        assert_eq!(r.matches('|').count(), cols);
        assert!(r.contains("| 2000 |") && r.contains("| yes |"), "{r}");
        let f = failed_row("x", &anyhow::anyhow!("a|b"));
        assert_eq!(f.matches('|').count(), cols);
    }
}

//! The scenarios and how one runs: declare its queues, connect every
//! consumer and producer, start them together, wait until every published
//! message was delivered, delete the queues.

use super::client::{Connection, Target};
use super::consumer::{AckMode, Consumer, ConsumerOutcome, latency_histogram};
use super::producer::{Producer, ProducerOutcome, ProducerSpec};
use super::report::Outcome;
use super::usage::{Usage, UsageSampler, load1};
use amq_protocol::types::FieldTable;
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Unconfirmed publishes one producer may have in flight.
const CONFIRM_WINDOW: u64 = 1000;
/// Prefetch of manually acknowledging consumers.
const PREFETCH: u16 = 100;
/// After the last publish, how long consumers may take to drain the queues.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One benchmark shape.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub body_size: usize,
    /// Durable queues, persistent messages, publisher confirms, manual acks.
    pub safe: bool,
    pub producers: usize,
    pub consumers: usize,
    /// Producer i publishes to queue i % queues; consumer j reads queue j % queues.
    pub queues: usize,
}

pub const ALL: [Scenario; 5] = [
    Scenario {
        name: "transient-16b",
        body_size: 16,
        safe: false,
        producers: 1,
        consumers: 1,
        queues: 1,
    },
    Scenario {
        name: "transient-1k",
        body_size: 1024,
        safe: false,
        producers: 1,
        consumers: 1,
        queues: 1,
    },
    Scenario {
        name: "confirms-acks-1k",
        body_size: 1024,
        safe: true,
        producers: 1,
        consumers: 1,
        queues: 1,
    },
    Scenario {
        name: "confirms-acks-16b",
        body_size: 16,
        safe: true,
        producers: 1,
        consumers: 1,
        queues: 1,
    },
    Scenario {
        name: "fanin-4x4-1k",
        body_size: 1024,
        safe: false,
        producers: 4,
        consumers: 4,
        queues: 1,
    },
];

/// Persistent scenarios, run by scripts/bench-durable.sh (and on request):
/// durable queue, persistent 1 KiB messages, confirms, manual acks; the
/// 4 → 4 row shares one queue, as `fanin-4x4-1k` does. With
/// `--queue-type` they declare e.g. RabbitMQ's quorum queues.
pub const DURABLE: [Scenario; 2] = [
    Scenario {
        name: "durable-1k",
        body_size: 1024,
        safe: true,
        producers: 1,
        consumers: 1,
        queues: 1,
    },
    Scenario {
        name: "durable-4x4-1k",
        body_size: 1024,
        safe: true,
        producers: 4,
        consumers: 4,
        queues: 1,
    },
];

pub fn find(name: &str) -> Result<Scenario> {
    ALL.iter()
        .chain(DURABLE.iter())
        .copied()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = ALL.iter().chain(DURABLE.iter()).map(|s| s.name).collect();
            anyhow!(
                "unknown scenario {name:?}; known: {}, {}",
                known.join(", "),
                super::backlog::NAME
            )
        })
}

/// `x-` arguments for the durable queues of the `safe` scenarios, e.g.
/// `x-queue-type: quorum` (RabbitMQ refuses a non-durable quorum queue).
pub fn durable_queue_args(queue_type: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(kind) = queue_type {
        args.insert(
            "x-queue-type".into(),
            amq_protocol::types::AMQPValue::LongString(kind.into()),
        );
    }
    args
}

/// Limits that apply to every scenario of a run.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub messages: u64,
    pub seconds: u64,
}

/// Runs one scenario and deletes its queues whether or not it succeeded.
pub async fn run(
    target: &Target,
    scenario: Scenario,
    budget: Budget,
    broker_pid: Option<u32>,
    durable_args: &FieldTable,
) -> Result<Outcome> {
    let queues: Vec<String> = (0..scenario.queues)
        .map(|i| format!("ferrymq-bench-{}-{}-{i}", scenario.name, std::process::id()))
        .collect();
    let mut control = Connection::open(target)
        .await
        .context("control connection")?;
    for queue in &queues {
        if scenario.safe {
            control
                .declare_queue_with(queue, true, durable_args.clone())
                .await?;
        } else {
            control.declare_queue(queue, false).await?;
        }
    }
    let result = measure(target, scenario, budget, &queues, broker_pid).await;
    let cleanup = delete_queues(control, &queues).await;
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

async fn delete_queues(mut control: Connection, queues: &[String]) -> Result<()> {
    for queue in queues {
        let left = control.delete_queue(queue).await?;
        if left > 0 {
            tracing::warn!(queue, left, "queue still held messages when deleted");
        }
    }
    control.close().await
}

async fn measure(
    target: &Target,
    scenario: Scenario,
    budget: Budget,
    queues: &[String],
    broker_pid: Option<u32>,
) -> Result<Outcome> {
    let mode = if scenario.safe {
        AckMode::Manual { prefetch: PREFETCH }
    } else {
        AckMode::NoAck
    };
    let mut consumers = Vec::with_capacity(scenario.consumers);
    for i in 0..scenario.consumers {
        let queue = &queues[i % queues.len()];
        let consumer = Consumer::connect(target, queue, &format!("bench-{i}"), mode)
            .await
            .with_context(|| format!("consumer {i}"))?;
        consumers.push(consumer);
    }
    let mut producers = Vec::with_capacity(scenario.producers);
    let each = budget.messages / scenario.producers as u64;
    for i in 0..scenario.producers {
        let extra = u64::from(i == 0) * (budget.messages % scenario.producers as u64);
        let spec = ProducerSpec {
            queue: queues[i % queues.len()].clone(),
            count: each + extra,
            body_size: scenario.body_size,
            persistent: scenario.safe,
            confirm_window: scenario.safe.then_some(CONFIRM_WINDOW),
        };
        let producer = Producer::connect(target, spec)
            .await
            .with_context(|| format!("producer {i}"))?;
        producers.push(producer);
    }

    let load = load1();
    let usage = broker_pid.map(UsageSampler::start);
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(budget.seconds);
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    // Dropping a JoinSet aborts its tasks, so an early return leaves nothing running.
    let mut consuming = JoinSet::new();
    for consumer in consumers {
        consuming.spawn(consumer.run(epoch, delivered.clone(), stop.clone()));
    }
    let mut producing = JoinSet::new();
    for producer in producers {
        producing.spawn(producer.run(epoch, deadline));
    }

    let mut sent = Vec::with_capacity(scenario.producers);
    while let Some(joined) = producing.join_next().await {
        let outcome: ProducerOutcome = joined.context("producer task")?.context("producer")?;
        sent.push(outcome);
    }
    let published: u64 = sent.iter().map(|p| p.published).sum();
    let nacked: u64 = sent.iter().map(|p| p.nacked).sum();
    if nacked > 0 {
        bail!("the broker nacked {nacked} of {published} publishes");
    }

    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while delivered.load(Ordering::Relaxed) < published {
        if let Some(joined) = consuming.try_join_next() {
            // A consumer ended before everything arrived: that is its error.
            joined.context("consumer task")?.context("consumer")?;
            bail!("a consumer stopped early");
        }
        if Instant::now() > drain_deadline {
            bail!(
                "timed out after {DRAIN_TIMEOUT:?} waiting for consumers: {} of {published} delivered",
                delivered.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    let mut received: Vec<ConsumerOutcome> = Vec::with_capacity(scenario.consumers);
    while let Some(joined) = consuming.join_next().await {
        received.push(joined.context("consumer task")?.context("consumer")?);
    }
    let usage = match usage {
        Some(sampler) => sampler.finish().await,
        None => Usage::default(),
    };

    let mut latency = latency_histogram();
    for r in &received {
        latency
            .add(&r.latency)
            .context("merging latency histograms")?;
    }
    let last = received
        .iter()
        .filter_map(|r| r.last_delivery)
        .max()
        .unwrap_or(epoch);
    let delivered_total: u64 = received.iter().map(|r| r.received).sum();
    let publish_elapsed = sent.iter().map(|p| p.elapsed).max().unwrap_or_default();
    let mut confirms = latency_histogram();
    for h in sent.iter().filter_map(|p| p.confirm_latency.as_ref()) {
        confirms.add(h).context("merging confirm latencies")?;
    }
    let confirmed = !confirms.is_empty();
    Ok(Outcome {
        scenario: scenario.name,
        published,
        delivered: delivered_total,
        elapsed: last.saturating_duration_since(epoch),
        publish_elapsed,
        p50_us: latency.value_at_quantile(0.50),
        p99_us: latency.value_at_quantile(0.99),
        peak_rss_kib: usage.peak_rss_kib,
        broker_cpu: usage.cpu,
        confirm_p50_us: confirmed.then(|| confirms.value_at_quantile(0.50)),
        confirm_p99_us: confirmed.then(|| confirms.value_at_quantile(0.99)),
        lost: Some(published.saturating_sub(delivered_total)),
        load1: load,
    })
}

//! Every metric ferrymq exports, by name, and the scrape that renders them.
//!
//! Names follow Prometheus conventions: the `ferrymq_` prefix, base units
//! (`_bytes`, `_seconds`), `_total` on counters. grafana/ and
//! docs/metrics.md use exactly these constants.
//!
//! Where the numbers come from:
//! - Message counters are atomics in `core::Stats`, bumped on the hot path
//!   through references the adapters and queues already hold (never a
//!   `counter!()` lookup by name and label per message). A scrape copies
//!   them into the exporter's counters with `absolute`.
//! - Connection, lane and consumer gauges are counted from the broker's
//!   connection registry at scrape time.
//! - Confirm latency is a histogram handle in `core::Stats`, fed on the hot
//!   path and drained by the exporter.
//! - Per-queue gauges are rendered straight from the vhosts' queue tables
//!   at scrape time, not registered with the exporter (which has no way to
//!   unregister a deleted queue's series). `/metrics` carries at most
//!   `metrics_queue_cap` queues, deepest first; `/metrics/per-object`
//!   carries every queue, as RabbitMQ's endpoint of that name does.

use std::fmt::Write as _;
use std::sync::Arc;

use metrics::{Counter, Gauge, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::core::queue::DeadReason;
use crate::core::stats::ProtocolStats;
use crate::core::{Broker, Protocol, Stats};

/// Open client connections, by protocol.
pub const CONNECTIONS: &str = "ferrymq_connections";
/// Open lanes (AMQP channels; one per MQTT or STOMP connection), by protocol.
pub const CHANNELS: &str = "ferrymq_channels";
/// Attached consumers, by protocol.
pub const CONSUMERS: &str = "ferrymq_consumers";
/// Messages accepted from publishers, by protocol.
pub const MESSAGES_PUBLISHED: &str = "ferrymq_messages_published_total";
/// Published messages that reached no queue, by protocol.
pub const MESSAGES_UNROUTABLE: &str = "ferrymq_messages_unroutable_total";
/// Publishes confirmed to their publisher, by protocol.
pub const MESSAGES_CONFIRMED: &str = "ferrymq_messages_confirmed_total";
/// Messages handed to consumers and polling gets, by protocol.
pub const MESSAGES_DELIVERED: &str = "ferrymq_messages_delivered_total";
/// Deliveries of messages handed out before, by protocol.
pub const MESSAGES_REDELIVERED: &str = "ferrymq_messages_redelivered_total";
/// Deliveries acknowledged by consumers, by protocol.
pub const MESSAGES_ACKNOWLEDGED: &str = "ferrymq_messages_acknowledged_total";
/// Deliveries rejected by consumers (requeued or not), by protocol.
pub const MESSAGES_REJECTED: &str = "ferrymq_messages_rejected_total";
/// Unroutable mandatory messages returned to their publisher, by protocol.
pub const MESSAGES_RETURNED: &str = "ferrymq_messages_returned_total";
/// Times a publisher waited for a queue's consumers to catch up, by protocol.
pub const PUBLISHER_WAITS: &str = "ferrymq_publisher_waits_total";
/// Messages republished to a dead-letter exchange, by reason.
pub const MESSAGES_DEAD_LETTERED: &str = "ferrymq_messages_dead_lettered_total";
/// Messages whose TTL ran out, dead-lettered or dropped.
pub const MESSAGES_EXPIRED: &str = "ferrymq_messages_expired_total";
/// Seconds from routing the first publish of a confirm batch to writing
/// its confirm.
pub const CONFIRM_LATENCY: &str = "ferrymq_confirm_latency_seconds";
/// Seconds to write and fdatasync one group commit of the journal.
pub const JOURNAL_COMMIT: &str = "ferrymq_journal_commit_seconds";
/// 1 while the memory alarm blocks publishers.
pub const MEMORY_ALARM: &str = "ferrymq_memory_alarm";
/// 1 while the disk alarm blocks publishers.
pub const DISK_ALARM: &str = "ferrymq_disk_alarm";
/// Resident memory of the broker process.
pub const PROCESS_RESIDENT_MEMORY: &str = "ferrymq_process_resident_memory_bytes";
/// Open file descriptors of the broker process.
pub const PROCESS_OPEN_FDS: &str = "ferrymq_process_open_fds";
/// The process's limit on open file descriptors.
pub const PROCESS_MAX_FDS: &str = "ferrymq_process_max_fds";
/// 1, labelled with the broker version.
pub const BUILD_INFO: &str = "ferrymq_build_info";
/// 1, labelled with this node's role in a pair (`standalone` until HA).
pub const HA_ROLE: &str = "ferrymq_ha_role";
/// Queues, by vhost.
pub const QUEUES: &str = "ferrymq_queues";
/// Ready messages over all queues, by vhost.
pub const MESSAGES_READY: &str = "ferrymq_messages_ready";
/// Unacknowledged deliveries over all queues, by vhost.
pub const MESSAGES_UNACKED: &str = "ferrymq_messages_unacked";
/// Body bytes of ready messages over all queues, by vhost.
pub const MESSAGES_READY_BYTES: &str = "ferrymq_messages_ready_bytes";
/// Ready messages in one queue.
pub const QUEUE_MESSAGES_READY: &str = "ferrymq_queue_messages_ready";
/// Unacknowledged deliveries from one queue.
pub const QUEUE_MESSAGES_UNACKED: &str = "ferrymq_queue_messages_unacked";
/// Body bytes of one queue's ready messages.
pub const QUEUE_MESSAGES_READY_BYTES: &str = "ferrymq_queue_messages_ready_bytes";
/// Consumers attached to one queue.
pub const QUEUE_CONSUMERS: &str = "ferrymq_queue_consumers";

/// Default for `metrics_queue_cap`: queues with their own series on /metrics.
pub const DEFAULT_QUEUE_CAP: usize = 500;

/// Confirm latency buckets, seconds: 100 µs to 2.5 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Help text for every metric the exporter holds.
const DESCRIPTIONS: [(&str, &str); 22] = [
    (CONNECTIONS, "Open client connections."),
    (
        CHANNELS,
        "Open lanes: AMQP channels, one per MQTT or STOMP connection.",
    ),
    (CONSUMERS, "Attached consumers."),
    (MESSAGES_PUBLISHED, "Messages accepted from publishers."),
    (
        MESSAGES_UNROUTABLE,
        "Published messages that reached no queue.",
    ),
    (
        MESSAGES_CONFIRMED,
        "Publishes confirmed to their publisher.",
    ),
    (
        MESSAGES_DELIVERED,
        "Messages handed to consumers and polling gets.",
    ),
    (
        MESSAGES_REDELIVERED,
        "Deliveries of messages that had been handed out before.",
    ),
    (
        MESSAGES_ACKNOWLEDGED,
        "Deliveries acknowledged by consumers.",
    ),
    (
        MESSAGES_REJECTED,
        "Deliveries rejected by consumers, requeued or not.",
    ),
    (
        MESSAGES_RETURNED,
        "Unroutable mandatory messages returned to their publisher.",
    ),
    (
        PUBLISHER_WAITS,
        "Times a publisher stopped reading to let a queue's consumers catch up.",
    ),
    (
        MESSAGES_DEAD_LETTERED,
        "Messages republished to a dead-letter exchange.",
    ),
    (MESSAGES_EXPIRED, "Messages whose TTL ran out."),
    (
        CONFIRM_LATENCY,
        "Seconds from routing the first publish of a confirm batch to writing its confirm.",
    ),
    (
        JOURNAL_COMMIT,
        "Seconds to write and fdatasync one group commit of the journal.",
    ),
    (MEMORY_ALARM, "1 while the memory alarm blocks publishers."),
    (DISK_ALARM, "1 while the disk alarm blocks publishers."),
    (
        PROCESS_RESIDENT_MEMORY,
        "Resident memory of the broker process in bytes.",
    ),
    (
        PROCESS_OPEN_FDS,
        "Open file descriptors of the broker process.",
    ),
    (
        PROCESS_MAX_FDS,
        "Limit on open file descriptors of the broker process.",
    ),
    (BUILD_INFO, "Always 1; the version label names the build."),
];

/// Reads one counter of a protocol's stats.
type ReadCount = fn(&ProtocolStats) -> u64;
/// Reads one gauge of a queue row.
type ReadRow = fn(&QueueRow) -> u64;

struct ProtocolHandles {
    connections: Gauge,
    channels: Gauge,
    consumers: Gauge,
    counters: [(Counter, ReadCount); 9],
}

/// The exporter and the handles a scrape fills in.
pub struct Metrics {
    handle: PrometheusHandle,
    protocols: Vec<(Protocol, ProtocolHandles)>,
    dead_lettered: Vec<(DeadReason, Counter)>,
    expired: Counter,
    memory_alarm: Gauge,
    disk_alarm: Gauge,
    resident_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    queue_cap: usize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("queue_cap", &self.queue_cap)
            .finish_non_exhaustive()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    /// A recorder of this server's own (not the process-global one, so
    /// brokers in one process keep separate numbers), and the core's
    /// counters wired to it.
    pub fn new(queue_cap: usize) -> (Self, Stats) {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(CONFIRM_LATENCY.into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(JOURNAL_COMMIT.into()), &LATENCY_BUCKETS)
            })
            .expect("latency buckets are not empty")
            .build_recorder();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        for (name, help) in DESCRIPTIONS {
            let key = KeyName::from(name);
            recorder.describe_counter(key.clone(), None, SharedString::from(help));
        }
        let counter = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &meta)
        };
        let gauge = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_gauge(&key(name, labels), &meta)
        };
        let protocols = Protocol::ALL
            .iter()
            .map(|&p| {
                let l = [("protocol", p.as_str())];
                let handles = ProtocolHandles {
                    connections: gauge(CONNECTIONS, &l),
                    channels: gauge(CHANNELS, &l),
                    consumers: gauge(CONSUMERS, &l),
                    counters: [
                        (counter(MESSAGES_PUBLISHED, &l), |s| s.published.get()),
                        (counter(MESSAGES_UNROUTABLE, &l), |s| s.unroutable.get()),
                        (counter(MESSAGES_CONFIRMED, &l), |s| s.confirmed.get()),
                        (counter(MESSAGES_DELIVERED, &l), |s| s.delivered.get()),
                        (counter(MESSAGES_REDELIVERED, &l), |s| s.redelivered.get()),
                        (counter(MESSAGES_ACKNOWLEDGED, &l), |s| s.acknowledged.get()),
                        (counter(MESSAGES_REJECTED, &l), |s| s.rejected.get()),
                        (counter(MESSAGES_RETURNED, &l), |s| s.returned.get()),
                        (counter(PUBLISHER_WAITS, &l), |s| s.publisher_waits.get()),
                    ],
                };
                (p, handles)
            })
            .collect();
        let dead_lettered = DeadReason::ALL
            .iter()
            .map(|&r| {
                (
                    r,
                    counter(MESSAGES_DEAD_LETTERED, &[("reason", r.as_str())]),
                )
            })
            .collect();
        gauge(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        let confirm_latency = recorder.register_histogram(&key(CONFIRM_LATENCY, &[]), &meta);
        let journal_commit = recorder.register_histogram(&key(JOURNAL_COMMIT, &[]), &meta);
        let metrics = Self {
            handle: recorder.handle(),
            protocols,
            dead_lettered,
            expired: counter(MESSAGES_EXPIRED, &[]),
            memory_alarm: gauge(MEMORY_ALARM, &[]),
            disk_alarm: gauge(DISK_ALARM, &[]),
            resident_memory: gauge(PROCESS_RESIDENT_MEMORY, &[]),
            open_fds: gauge(PROCESS_OPEN_FDS, &[]),
            max_fds: gauge(PROCESS_MAX_FDS, &[]),
            queue_cap,
        };
        (metrics, Stats::new(confirm_latency, journal_commit))
    }

    /// Drains histogram samples; call every few seconds so they do not
    /// pile up between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The text for `/metrics` (`all_queues` false: per-queue series for
    /// at most the cap, deepest first) or `/metrics/per-object` (true).
    pub fn render(&self, broker: &Broker, all_queues: bool) -> String {
        let stats = &broker.stats;
        let connections = broker.connections.list();
        for (p, h) in &self.protocols {
            let mine = connections.iter().filter(|c| c.info.protocol == *p);
            let (mut conns, mut lanes, mut consumers) = (0u64, 0u64, 0u64);
            for c in mine {
                conns += 1;
                lanes += c.lanes.len() as u64;
                consumers += c.lanes.iter().map(|l| u64::from(l.consumers)).sum::<u64>();
            }
            h.connections.set(conns as f64);
            h.channels.set(lanes as f64);
            h.consumers.set(consumers as f64);
            for (counter, read) in &h.counters {
                counter.absolute(read(stats.protocol(*p)));
            }
        }
        for (reason, counter) in &self.dead_lettered {
            counter.absolute(stats.dead_lettered(*reason).get());
        }
        self.expired.absolute(stats.expired.get());
        let alarms = broker.alarms.current();
        self.memory_alarm.set(f64::from(u8::from(alarms.memory)));
        self.disk_alarm.set(f64::from(u8::from(alarms.disk)));
        let process = read_process();
        self.resident_memory.set(process.resident_bytes as f64);
        self.open_fds.set(process.open_fds as f64);
        self.max_fds.set(process.max_fds as f64);

        let mut out = self.handle.render();
        family(
            &mut out,
            HA_ROLE,
            "gauge",
            "1, labelled with this node's role.",
        );
        out.push_str(HA_ROLE);
        out.push_str("{role=\"standalone\"} 1\n\n");
        render_queues(&mut out, broker, (!all_queues).then_some(self.queue_cap));
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value as the text format requires.
fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

struct QueueRow {
    vhost: Arc<str>,
    name: Arc<str>,
    ready: u64,
    unacked: u64,
    bytes: u64,
    consumers: u64,
}

fn render_queues(out: &mut String, broker: &Broker, cap: Option<usize>) {
    let mut vhosts: Vec<_> = broker.vhosts();
    vhosts.sort_by(|a, b| a.name().cmp(b.name()));
    let mut rows = Vec::new();
    let mut totals = Vec::new();
    for v in &vhosts {
        let vname: Arc<str> = v.name().as_str().into();
        let mut sum = [0u64; 4];
        for q in v.queues() {
            let d = q.depth();
            let row = QueueRow {
                vhost: vname.clone(),
                name: q.name().as_str().into(),
                ready: d.ready as u64,
                unacked: d.unacked as u64,
                bytes: d.ready_bytes,
                consumers: d.consumers as u64,
            };
            sum[0] += 1;
            sum[1] += row.ready;
            sum[2] += row.unacked;
            sum[3] += row.bytes;
            rows.push(row);
        }
        totals.push((vname, sum));
    }
    let per_vhost: [(&str, &str, usize); 4] = [
        (QUEUES, "Queues.", 0),
        (MESSAGES_READY, "Ready messages over all queues.", 1),
        (
            MESSAGES_UNACKED,
            "Unacknowledged deliveries over all queues.",
            2,
        ),
        (
            MESSAGES_READY_BYTES,
            "Body bytes of ready messages over all queues.",
            3,
        ),
    ];
    for (name, help, i) in per_vhost {
        family(out, name, "gauge", help);
        for (vhost, sum) in &totals {
            out.push_str(name);
            out.push_str("{vhost=\"");
            escape(vhost, out);
            let _ = writeln!(out, "\"}} {}", sum[i]);
        }
        out.push('\n');
    }
    if let Some(cap) = cap
        && rows.len() > cap
    {
        // Deepest first: the queues an operator needs to see.
        rows.select_nth_unstable_by(cap, |a, b| {
            (b.ready + b.unacked).cmp(&(a.ready + a.unacked))
        });
        rows.truncate(cap);
    }
    rows.sort_by(|a, b| {
        (b.ready + b.unacked)
            .cmp(&(a.ready + a.unacked))
            .then_with(|| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)))
    });
    let per_queue: [(&str, &str, ReadRow); 4] = [
        (QUEUE_MESSAGES_READY, "Ready messages in the queue.", |r| {
            r.ready
        }),
        (
            QUEUE_MESSAGES_UNACKED,
            "Unacknowledged deliveries from the queue.",
            |r| r.unacked,
        ),
        (
            QUEUE_MESSAGES_READY_BYTES,
            "Body bytes of the queue's ready messages.",
            |r| r.bytes,
        ),
        (QUEUE_CONSUMERS, "Consumers attached to the queue.", |r| {
            r.consumers
        }),
    ];
    for (name, help, value) in per_queue {
        family(out, name, "gauge", help);
        for r in &rows {
            out.push_str(name);
            out.push_str("{vhost=\"");
            escape(&r.vhost, out);
            out.push_str("\",queue=\"");
            escape(&r.name, out);
            let _ = writeln!(out, "\"}} {}", value(r));
        }
        out.push('\n');
    }
}

/// What /proc says about this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    /// Resident set size.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Soft limit on open file descriptors.
    pub max_fds: u64,
}

/// Reads resident memory and descriptor counts from /proc (zeros where
/// there is no /proc).
pub fn read_process() -> ProcessStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let resident_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    // The directory handle read_dir holds is itself one of the entries.
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as u64)
        .unwrap_or(0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    ProcessStats {
        resident_bytes: resident_kib * 1024,
        open_fds,
        max_fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::queue::QueueSpec;
    use crate::core::{Limits, NoLog, Users};

    fn broker_with_queues(depths: &[(&str, usize)]) -> Arc<Broker> {
        let broker = Broker::new(&["/"], Users::default(), Limits::default(), Arc::new(NoLog));
        let v = broker.vhost("/").expect("default vhost");
        for (name, depth) in depths {
            v.declare_queue(
                QueueSpec {
                    name: (*name).into(),
                    durable: false,
                    exclusive: None,
                    auto_delete: false,
                    arguments: Default::default(),
                },
                false,
                None,
            )
            .expect("declare");
            for _ in 0..*depth {
                let m = crate::core::Message::new(
                    "".into(),
                    (*name).into(),
                    Default::default(),
                    bytes::Bytes::from_static(b"abc"),
                );
                v.publish(m).expect("publish");
            }
        }
        broker
    }

    #[test]
    fn metrics_caps_per_queue_series_deepest_first() {
        let broker = broker_with_queues(&[("a", 1), ("b", 5), ("c", 3), ("we\"ird", 0)]);
        let (metrics, _) = Metrics::new(2);
        let text = metrics.render(&broker, false);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(QUEUE_MESSAGES_READY) && !l.contains("_bytes"))
            .collect();
        assert_eq!(
            lines,
            [
                "ferrymq_queue_messages_ready{vhost=\"/\",queue=\"b\"} 5",
                "ferrymq_queue_messages_ready{vhost=\"/\",queue=\"c\"} 3",
            ]
        );
        assert!(text.contains("ferrymq_messages_ready{vhost=\"/\"} 9"));
        assert!(text.contains("ferrymq_queues{vhost=\"/\"} 4"));
        let all = metrics.render(&broker, true);
        assert!(all.contains("ferrymq_queue_messages_ready_bytes{vhost=\"/\",queue=\"b\"} 15"));
        assert!(
            all.contains("queue=\"we\\\"ird\"} 0"),
            "label values are escaped"
        );
    }

    #[test]
    fn every_exporter_metric_has_help_and_counters_end_in_total() {
        let broker = broker_with_queues(&[]);
        let (metrics, _) = Metrics::new(DEFAULT_QUEUE_CAP);
        let text = metrics.render(&broker, false);
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(name.starts_with("ferrymq_"), "{name} has the prefix");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has help text"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} ends in _total");
            }
        }
        assert!(text.contains("ferrymq_process_resident_memory_bytes "));
    }
}

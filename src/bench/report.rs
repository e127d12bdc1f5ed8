//! One row per scenario, as aligned text or as a markdown table.

use std::time::Duration;

/// What one scenario measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub scenario: &'static str,
    pub published: u64,
    pub delivered: u64,
    /// From the start signal to the last delivery.
    pub elapsed: Duration,
    /// From the start signal until the slowest producer was done (and confirmed).
    pub publish_elapsed: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
    pub peak_rss_kib: Option<u64>,
    /// The broker's user + system CPU time during the scenario.
    pub broker_cpu: Option<Duration>,
    /// Publish to publisher confirm (AMQP) or PUBACK (MQTT QoS 1), when
    /// the producers asked for them.
    pub confirm_p50_us: Option<u64>,
    pub confirm_p99_us: Option<u64>,
    /// Copies that were published but never arrived, where the scenario
    /// counts them (every subscriber should have had every message).
    pub lost: Option<u64>,
    /// The machine's 1-minute load average when the scenario started.
    pub load1: Option<f64>,
}

impl Outcome {
    /// Messages delivered to consumers per second.
    pub fn rate(&self) -> f64 {
        per_second(self.delivered, self.elapsed)
    }

    pub fn publish_rate(&self) -> f64 {
        per_second(self.published, self.publish_elapsed)
    }

    /// The broker's CPU time per delivered message, in microseconds.
    pub fn broker_cpu_us_per_message(&self) -> Option<f64> {
        let cpu = self.broker_cpu?;
        (self.delivered > 0).then(|| cpu.as_secs_f64() * 1e6 / self.delivered as f64)
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0))
}

#[derive(Clone, Copy, Debug)]
pub enum Format {
    Text,
    Markdown,
}

// New columns go at the end: the scripts read the first ones by position.
const COLUMNS: [&str; 13] = [
    "broker",
    "scenario",
    "messages",
    "msg/s delivered",
    "msg/s published",
    "p50 ms",
    "p99 ms",
    "peak RSS MiB",
    "broker CPU µs/msg",
    "confirm p50 ms",
    "confirm p99 ms",
    "lost",
    "load 1m",
];

pub fn header(format: Format) -> String {
    match format {
        Format::Markdown => {
            // Names left, numbers right.
            let align: String = (0..COLUMNS.len())
                .map(|i| if i < 2 { "---|" } else { "--:|" })
                .collect();
            format!("| {} |\n|{align}", COLUMNS.join(" | "))
        }
        Format::Text => text_row(&COLUMNS.map(str::to_owned)),
    }
}

pub fn row(format: Format, label: &str, outcome: &Outcome) -> String {
    let cells = [
        label.to_owned(),
        outcome.scenario.to_owned(),
        outcome.delivered.to_string(),
        format!("{:.0}", outcome.rate()),
        format!("{:.0}", outcome.publish_rate()),
        ms(outcome.p50_us),
        ms(outcome.p99_us),
        mib(outcome.peak_rss_kib),
        outcome
            .broker_cpu_us_per_message()
            .map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")),
        outcome.confirm_p50_us.map_or_else(|| "-".to_owned(), ms),
        outcome.confirm_p99_us.map_or_else(|| "-".to_owned(), ms),
        outcome
            .lost
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        outcome
            .load1
            .map_or_else(|| "-".to_owned(), |l| format!("{l:.2}")),
    ];
    match format {
        Format::Markdown => format!("| {} |", cells.join(" | ")),
        Format::Text => text_row(&cells),
    }
}

pub fn failed_row(format: Format, label: &str, scenario: &str, error: &anyhow::Error) -> String {
    // One line, and no table separators inside a markdown cell.
    let why = format!("{error:#}").replace(['\n', '|'], " ");
    match format {
        Format::Markdown => format!(
            "| {label} | {scenario} | failed: {why} |{}",
            " |".repeat(COLUMNS.len() - 3)
        ),
        Format::Text => format!("{label:<10} {scenario:<18} failed: {why}"),
    }
}

fn text_row(cells: &[String; 13]) -> String {
    format!(
        "{:<10} {:<22} {:>9} {:>16} {:>16} {:>8} {:>8} {:>13} {:>18} {:>15} {:>15} {:>7} {:>8}",
        cells[0],
        cells[1],
        cells[2],
        cells[3],
        cells[4],
        cells[5],
        cells[6],
        cells[7],
        cells[8],
        cells[9],
        cells[10],
        cells[11],
        cells[12]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            scenario: "transient-1k",
            published: 100_000,
            delivered: 100_000,
            elapsed: Duration::from_secs(2),
            publish_elapsed: Duration::from_secs(1),
            p50_us: 1_500,
            p99_us: 12_346,
            peak_rss_kib: Some(200 * 1024),
            broker_cpu: Some(Duration::from_millis(1500)),
            confirm_p50_us: Some(800),
            confirm_p99_us: None,
            lost: Some(0),
            load1: Some(1.5),
        }
    }

    #[test]
    fn a_markdown_row_has_one_cell_per_column() {
        let row = row(Format::Markdown, "rabbitmq", &outcome());
        assert_eq!(
            row,
            "| rabbitmq | transient-1k | 100000 | 50000 | 100000 | 1.50 | 12.35 | 200 | 15.0 | 0.80 | - | 0 | 1.50 |"
        );
        assert_eq!(row.matches('|').count(), COLUMNS.len() + 1);
        assert_eq!(
            header(Format::Markdown)
                .lines()
                .nth(1)
                .unwrap()
                .matches('|')
                .count(),
            COLUMNS.len() + 1
        );
    }

    #[test]
    fn a_failure_stays_on_one_markdown_line() {
        let err = anyhow::anyhow!("a | b\nc");
        let row = failed_row(Format::Markdown, "x", "s", &err);
        assert!(!row.contains('\n'));
        assert_eq!(row.matches('|').count(), COLUMNS.len() + 1);
    }
}

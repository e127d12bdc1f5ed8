//! A pipelined AMQP 0-9-1 load generator, for ferrymq or any other broker,
//! and its STOMP and MQTT counterparts (`stomp.rs` with `--stomp`,
//! `mqtt.rs` with `--mqtt`).
//!
//! Why not lapin: a client that awaits each publish measures itself, not the
//! broker (see DEPS.md §2). This one keeps the socket full:
//!
//! - `wire.rs` frames bytes with amq-protocol's `parse_frame` / `gen_frame`,
//!   checks frame-max from the header, and writes body frames by hand.
//! - `client.rs` does the handshake (PLAIN, tune, open) and the synchronous
//!   methods (declare, qos, confirm.select, consume, delete, close).
//! - `producer.rs` encodes publishes in batches of about 64 KiB per write.
//!   With confirms, a reader task settles sequence numbers and the writer
//!   keeps at most a window of unconfirmed messages in flight.
//! - `consumer.rs` reads in bulk, reassembles deliveries, and acks with
//!   `multiple` every half prefetch, one write per read.
//! - `scenario.rs` names the scenarios and runs one: queues declared under a
//!   unique name, consumers and producers connected first, then started
//!   together; deleted at the end, even after a failure.
//! - `backlog.rs` fills one durable queue with no consumer, then drains it
//!   and checks the order (`--scenario backlog-1k --backlog N`).
//! - `report.rs` prints rows; `usage.rs` samples the broker's memory and CPU.
//!
//! Every body starts with the nanoseconds since the scenario's start at the
//! moment it was encoded, so latency is publish-to-receipt, end to end,
//! including any time the message waited in the queue.

mod backlog;
mod client;
mod consumer;
mod mqtt;
mod producer;
mod report;
mod scenario;
mod stomp;
mod usage;
mod wire;

use anyhow::{Result, bail};
use scenario::Scenario;
use std::io::Write;

/// `ferrymq bench`: run the AMQP scenarios against one broker.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// The broker's AMQP address.
    #[arg(long, default_value = "127.0.0.1:5672", value_name = "HOST:PORT")]
    pub amqp: String,
    /// Run the STOMP scenarios against this STOMP address instead.
    #[arg(long, value_name = "HOST:PORT")]
    pub stomp: Option<String>,
    /// Run the MQTT scenarios against this MQTT address instead; the
    /// MQTT-to-AMQP scenario also uses `--amqp`.
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt: Option<String>,
    /// MQTT: CONNECT without user name and password.
    #[arg(long)]
    pub mqtt_anonymous: bool,
    /// `x-queue-type` for the durable queues (e.g. RabbitMQ's `quorum`).
    #[arg(long, value_name = "TYPE")]
    pub queue_type: Option<String>,
    /// Messages the backlog-1k scenario fills its queue with.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub backlog: u64,
    #[arg(long, default_value = "guest")]
    pub user: String,
    #[arg(long, default_value = "guest")]
    pub password: String,
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Messages published per scenario (split across its producers).
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub messages: u64,
    /// Stop publishing after this many seconds, even if N is not reached.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Run only this scenario; repeat for several. Default: all of them.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// The broker's process id, to report its peak resident memory and CPU time per scenario.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// The broker's name in the table.
    #[arg(long, default_value = "broker", value_name = "NAME")]
    pub label: String,
    /// Print a markdown table instead of aligned text.
    #[arg(long)]
    pub markdown: bool,
    /// Print the scenario names, one a line, and exit.
    #[arg(long)]
    pub list_scenarios: bool,
}

/// Runs the selected scenarios one after another and prints a row for each.
/// A failed scenario prints its reason and the run goes on; the result is an
/// error if any failed.
pub async fn run(args: BenchArgs) -> Result<()> {
    if args.stomp.is_some() {
        return run_stomp(args).await;
    }
    if args.mqtt.is_some() {
        return run_mqtt(args).await;
    }
    let mut out = std::io::stdout();
    if args.list_scenarios {
        for s in &scenario::ALL {
            writeln!(out, "{}", s.name)?;
        }
        return Ok(());
    }
    let with_backlog = args.scenarios.iter().any(|s| s == backlog::NAME);
    let selected: Vec<Scenario> = if args.scenarios.is_empty() {
        scenario::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .filter(|name| *name != backlog::NAME)
            .map(|name| scenario::find(name))
            .collect::<Result<_>>()?
    };
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let target = client::Target {
        addr: args.amqp.clone(),
        user: args.user.clone(),
        password: args.password.clone(),
        vhost: args.vhost.clone(),
    };
    let budget = scenario::Budget {
        messages: args.messages,
        seconds: args.seconds,
    };
    let format = if args.markdown {
        report::Format::Markdown
    } else {
        report::Format::Text
    };
    let durable_args = scenario::durable_queue_args(args.queue_type.as_deref());
    let mut failed = Vec::new();
    if !selected.is_empty() {
        writeln!(out, "{}", report::header(format))?;
    }
    for s in selected {
        tracing::info!(scenario = s.name, broker = %args.amqp, "running");
        let line = match scenario::run(&target, s, budget, args.broker_pid, &durable_args).await {
            Ok(outcome) => report::row(format, &args.label, &outcome),
            Err(err) => {
                tracing::error!(scenario = s.name, "{err:#}");
                failed.push(s.name);
                report::failed_row(format, &args.label, s.name, &err)
            }
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    if with_backlog {
        writeln!(out, "{}", backlog::header())?;
        tracing::info!(scenario = backlog::NAME, broker = %args.amqp, messages = args.backlog, "running");
        let line = match backlog::run(
            &target,
            args.backlog,
            args.seconds,
            args.broker_pid,
            &durable_args,
        )
        .await
        {
            Ok(outcome) => backlog::row(&args.label, &outcome),
            Err(err) => {
                tracing::error!(scenario = backlog::NAME, "{err:#}");
                failed.push(backlog::NAME);
                backlog::failed_row(&args.label, &err)
            }
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    if !failed.is_empty() {
        bail!("{} scenario(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// `ferrymq bench --mqtt ADDR`: the MQTT scenarios, the same way.
async fn run_mqtt(args: BenchArgs) -> Result<()> {
    let mut out = std::io::stdout();
    if args.list_scenarios {
        for s in &mqtt::ALL {
            writeln!(out, "{}", s.name)?;
        }
        return Ok(());
    }
    let selected: Vec<mqtt::MqttScenario> = if args.scenarios.is_empty() {
        mqtt::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|name| {
                mqtt::find(name).ok_or_else(|| {
                    let known: Vec<&str> = mqtt::ALL.iter().map(|s| s.name).collect();
                    anyhow::anyhow!(
                        "unknown MQTT scenario {name:?}; known: {}",
                        known.join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let target = mqtt::MqttTarget {
        addr: args.mqtt.clone().unwrap_or_default(),
        login: (!args.mqtt_anonymous).then(|| (args.user.clone(), args.password.clone())),
        amqp: Some(client::Target {
            addr: args.amqp.clone(),
            user: args.user.clone(),
            password: args.password.clone(),
            vhost: args.vhost.clone(),
        }),
    };
    let budget = scenario::Budget {
        messages: args.messages,
        seconds: args.seconds,
    };
    let format = if args.markdown {
        report::Format::Markdown
    } else {
        report::Format::Text
    };
    writeln!(out, "{}", report::header(format))?;
    let mut failed = Vec::new();
    for s in selected {
        tracing::info!(scenario = s.name, broker = %target.addr, "running");
        let line = match mqtt::run(&target, s, budget, args.broker_pid).await {
            Ok(outcome) => report::row(format, &args.label, &outcome),
            Err(err) => {
                tracing::error!(scenario = s.name, "{err:#}");
                failed.push(s.name);
                report::failed_row(format, &args.label, s.name, &err)
            }
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    if !failed.is_empty() {
        bail!("{} scenario(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// `ferrymq bench --stomp ADDR`: the STOMP scenarios, the same way.
async fn run_stomp(args: BenchArgs) -> Result<()> {
    let selected: Vec<stomp::StompScenario> = if args.scenarios.is_empty() {
        stomp::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|name| {
                stomp::find(name).ok_or_else(|| {
                    let known: Vec<&str> = stomp::ALL.iter().map(|s| s.name).collect();
                    anyhow::anyhow!(
                        "unknown STOMP scenario {name:?}; known: {}",
                        known.join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let target = stomp::StompTarget {
        addr: args.stomp.clone().unwrap_or_default(),
        login: args.user.clone(),
        passcode: args.password.clone(),
        host: args.vhost.clone(),
    };
    let budget = scenario::Budget {
        messages: args.messages,
        seconds: args.seconds,
    };
    let format = if args.markdown {
        report::Format::Markdown
    } else {
        report::Format::Text
    };
    let mut out = std::io::stdout();
    writeln!(out, "{}", report::header(format))?;
    let mut failed = Vec::new();
    for s in selected {
        tracing::info!(scenario = s.name, broker = %target.addr, "running");
        let line = match stomp::run(&target, s, budget, args.broker_pid).await {
            Ok(outcome) => report::row(format, &args.label, &outcome),
            Err(err) => {
                tracing::error!(scenario = s.name, "{err:#}");
                failed.push(s.name);
                report::failed_row(format, &args.label, s.name, &err)
            }
        };
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    if !failed.is_empty() {
        bail!("{} scenario(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

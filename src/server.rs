//! Listeners, the `ready` line, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::http::AdminState;
use crate::admin::metrics::Metrics;
use crate::config::{Config, Listen, resolve};
use crate::core::change::MemoryWindow;
use crate::core::{Broker, Limits, Users};
use crate::store::{Journal, JournalConfig, recovery};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen for {protocol} on {addr}: {source}")]
    Bind {
        /// Which listener.
        protocol: &'static str,
        /// The configured address.
        addr: String,
        /// The OS error (address in use, permission denied...).
        source: std::io::Error,
    },
    /// The configuration asks for something this build cannot do.
    #[error("{0}")]
    Config(String),
    /// The data directory cannot be used.
    #[error("data directory {dir}: {reason}")]
    Data {
        /// The directory.
        dir: String,
        /// What went wrong.
        reason: String,
    },
}

/// A running broker.
#[derive(Debug)]
pub struct Server {
    /// The broker core.
    pub broker: Arc<Broker>,
    /// Where AMQP listens, if it does.
    pub amqp: Option<SocketAddr>,
    /// Where MQTT listens, if it does.
    pub mqtt: Option<SocketAddr>,
    /// Where the management API, console and /metrics listen, if they do.
    pub http: Option<SocketAddr>,
    /// Where STOMP listens, if it does.
    pub stomp: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Held for the server's life: the data directory is ours.
    _lock: std::fs::File,
    /// The alarm thresholds, adjustable while running.
    pub resource_limits: Arc<ResourceLimits>,
}

/// Thresholds the resource monitor compares against.
#[derive(Debug)]
pub struct ResourceLimits {
    /// Free bytes below which the disk alarm is raised.
    pub disk_free: std::sync::atomic::AtomicU64,
    /// Resident bytes above which the memory alarm is raised.
    pub memory: std::sync::atomic::AtomicU64,
}

/// How often disk and memory are checked.
const RESOURCE_CHECK: Duration = Duration::from_millis(500);

async fn monitor_resources(
    broker: Arc<Broker>,
    data_dir: std::path::PathBuf,
    limits: Arc<ResourceLimits>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(RESOURCE_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let disk = free_disk(&data_dir).is_some_and(|free| free < limits.disk_free.load(Relaxed))
            || !broker.journal_healthy();
        let memory = resident_memory().is_some_and(|rss| rss > limits.memory.load(Relaxed));
        broker
            .alarms
            .set(crate::core::alarm::Alarms { memory, disk });
    }
}

/// Free bytes available to us on the file system holding `dir`.
fn free_disk(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The process's resident memory in bytes.
pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

async fn bind(protocol: &'static str, listen: &Listen) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = listen.addr() else {
        return Ok(None);
    };
    let err = |source| StartError::Bind {
        protocol,
        addr: addr.to_owned(),
        source,
    };
    let sock = resolve(addr).map_err(err)?;
    TcpListener::bind(sock).await.map(Some).map_err(err)
}

impl Server {
    /// Binds every configured listener and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        if config.tls_cert.is_some() || config.tls_key.is_some() {
            return Err(StartError::Config(
                "TLS listeners (tls_cert / tls_key) are not supported by this version".into(),
            ));
        }
        let data_err = |reason: String| StartError::Data {
            dir: config.data_dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|e| data_err(e.to_string()))?;
        // Two brokers on one directory would interleave their journals.
        let lock = std::fs::File::create(config.data_dir.join("LOCK"))
            .map_err(|e| data_err(e.to_string()))?;
        lock.try_lock()
            .map_err(|_| data_err("in use by another ferrymq".into()))?;
        let journal_dir = config.data_dir.join("journal");
        let memory_window = MemoryWindow {
            messages: config.queue_memory_messages,
            bytes: config.queue_memory_bytes,
        };
        let mut recovered = recovery::recover_logged(&journal_dir, memory_window)
            .map_err(|e| data_err(e.to_string()))?;
        let journal = Journal::start(
            JournalConfig {
                dir: journal_dir,
                segment_bytes: config.journal_segment_bytes,
                group_commit_records: config.group_commit_records,
                group_commit_delay: Duration::from_micros(config.group_commit_delay_micros),
                memory_window,
            },
            recovered.next_seq,
            recovered.defs.clone(),
            recovered.live.clone(),
        )
        .map_err(|e| data_err(e.to_string()))?;
        let vhosts: Vec<&str> = config.vhosts.iter().map(String::as_str).collect();
        let (metrics, stats) = Metrics::new(config.metrics_queue_cap);
        let metrics = Arc::new(metrics);
        journal.time_commits(stats.journal_commit.clone());
        let broker = Broker::with_stats(
            &vhosts,
            Users::new(config.effective_users()),
            Limits {
                max_message_bytes: config.max_message_bytes,
            },
            Arc::new(journal),
            stats,
        );
        let restored = recovery::restore(&broker, &mut recovered);
        if restored > 0 {
            tracing::info!(messages = restored, "durable messages restored");
        }
        crate::mqtt::durable::expire_recovered(&broker);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let limits = Arc::new(ResourceLimits {
            disk_free: std::sync::atomic::AtomicU64::new(config.disk_free_limit_bytes),
            memory: std::sync::atomic::AtomicU64::new(match config.memory_limit_bytes {
                0 => total_memory().map_or(u64::MAX, |m| m / 10 * 4),
                n => n,
            }),
        });
        tracker.spawn(monitor_resources(
            broker.clone(),
            config.data_dir.clone(),
            limits.clone(),
            shutdown.clone(),
        ));
        let b = broker.clone();
        tracker.spawn(every(BROKER_UPKEEP, shutdown.clone(), move || b.upkeep()));
        let amqp = bind("AMQP", &config.amqp).await?;
        let amqp_addr = amqp.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = amqp {
            let (b, s) = (broker.clone(), shutdown.clone());
            tracker.spawn(accept(
                listener,
                shutdown.clone(),
                tracker.clone(),
                move |socket, peer| crate::amqp::serve(socket, peer, b.clone(), s.clone()),
            ));
        }
        let mqtt = bind("MQTT", &config.mqtt).await?;
        let mqtt_addr = mqtt.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = mqtt {
            let (b, s) = (broker.clone(), shutdown.clone());
            let settings = Arc::new(mqtt_settings(config));
            let deadlines = Arc::new(crate::mqtt::deadlines::Deadlines::default());
            tracker.spawn(deadlines.ticker());
            tracker.spawn(crate::mqtt::connection::close_on_shutdown(
                broker.clone(),
                shutdown.clone(),
            ));
            tracker.spawn(accept(
                listener,
                shutdown.clone(),
                tracker.clone(),
                move |socket, peer| {
                    let d = deadlines.clone();
                    crate::mqtt::serve(socket, peer, b.clone(), settings.clone(), d, s.clone())
                },
            ));
        }
        let stomp = bind("STOMP", &config.stomp).await?;
        let stomp_addr = stomp.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = stomp {
            let (b, s) = (broker.clone(), shutdown.clone());
            tracker.spawn(accept(
                listener,
                shutdown.clone(),
                tracker.clone(),
                move |socket, peer| crate::stomp::serve(socket, peer, b.clone(), s.clone()),
            ));
        }
        let http = bind("HTTP", &config.http).await?;
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        let listening: Vec<(String, SocketAddr)> = [
            ("amqp", amqp_addr),
            ("mqtt", mqtt_addr),
            ("stomp", stomp_addr),
            ("http", http_addr),
        ]
        .iter()
        .filter_map(|(name, addr)| addr.map(|a| ((*name).to_owned(), a)))
        .collect();
        if let Some(listener) = http {
            let state = AdminState::new(broker.clone(), metrics.clone(), listening);
            tracker.spawn(crate::admin::http::serve(listener, state, shutdown.clone()));
            tracker.spawn(every(METRICS_UPKEEP, shutdown.clone(), move || {
                metrics.run_upkeep();
            }));
        }
        // Scripts wait for this line and read the bound addresses from it.
        let bound: Vec<String> = [
            ("amqp", amqp_addr),
            ("mqtt", mqtt_addr),
            ("stomp", stomp_addr),
            ("http", http_addr),
        ]
        .iter()
        .filter_map(|(name, addr)| addr.map(|a| format!("{name}={a}")))
        .collect();
        tracing::info!(
            "ferrymq {} ready {}",
            env!("CARGO_PKG_VERSION"),
            bound.join(" ")
        );
        Ok(Self {
            broker,
            amqp: amqp_addr,
            mqtt: mqtt_addr,
            http: http_addr,
            stomp: stomp_addr,
            shutdown,
            tracker,
            _lock: lock,
            resource_limits: limits,
        })
    }

    /// Stops accepting, closes every connection with its protocol's close,
    /// and waits up to `grace` for them to finish.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {grace:?}");
        }
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || broker.close_journal()).await;
    }
}

/// How often the broker tidies what busy moments left (`Broker::upkeep`).
const BROKER_UPKEEP: Duration = Duration::from_secs(5);

/// How often histogram samples are drained when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Runs `task` every `period` until shutdown.
async fn every(period: Duration, shutdown: CancellationToken, mut task: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => task(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Accepts connections until shutdown and serves each on its own task.
async fn accept<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                tracker.spawn(serve(socket, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The MQTT adapter's settings from the configuration.
fn mqtt_settings(config: &Config) -> crate::mqtt::Settings {
    let defaults = crate::mqtt::Settings::default();
    crate::mqtt::Settings {
        // A whole message plus room for the topic and MQTT 5 properties.
        max_packet: u32::try_from(config.max_message_bytes.saturating_add(64 * 1024))
            .unwrap_or(u32::MAX)
            .min(MQTT_MAX_REMAINING_LENGTH),
        receive_max: config.mqtt_receive_maximum.get(),
        topic_alias_max: config.mqtt_topic_alias_maximum,
        max_keep_alive: (config.mqtt_max_keep_alive > 0).then_some(config.mqtt_max_keep_alive),
        anonymous: config.mqtt_allow_anonymous.then(|| {
            (
                config.mqtt_default_user.clone(),
                config.mqtt_default_pass.clone(),
            )
        }),
        ..defaults
    }
}

/// The largest remaining length MQTT's variable-length integer can say.
const MQTT_MAX_REMAINING_LENGTH: u32 = 268_435_455;

//! The `ferrymq` binary: parse flags, load config, run the server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferrymq::config::{Config, Listen};
use ferrymq::server::Server;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// See Cargo.toml for why jemalloc.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ferrymq",
    version,
    about = "A message broker for AMQP 0-9-1, MQTT and STOMP clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Measure an AMQP broker's throughput and latency.
    Bench(ferrymq::bench::BenchArgs),
    /// Inspect and manage a running broker over its management API.
    Ctl(ferrymq::admin::ctl::CtlArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "FERRYMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for durable state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// AMQP listener, host:port or off.
    #[arg(long, value_parser = Listen::parse)]
    amqp: Option<Listen>,
    /// MQTT listener, host:port or off.
    #[arg(long, value_parser = Listen::parse)]
    mqtt: Option<Listen>,
    /// STOMP listener, host:port or off.
    #[arg(long, value_parser = Listen::parse)]
    stomp: Option<Listen>,
    /// HTTP listener, host:port or off.
    #[arg(long, value_parser = Listen::parse)]
    http: Option<Listen>,
    /// AMQP over TLS listener.
    #[arg(long, value_parser = Listen::parse)]
    amqps: Option<Listen>,
    /// MQTT over TLS listener.
    #[arg(long, value_parser = Listen::parse)]
    mqtts: Option<Listen>,
    /// STOMP over TLS listener.
    #[arg(long, value_parser = Listen::parse)]
    stomps: Option<Listen>,
    /// Server certificate chain (PEM).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

impl ServeArgs {
    fn config(self) -> Result<Config, String> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        set!(amqp, mqtt, stomp, http, amqps, mqtts, stomps, data_dir);
        if self.tls_cert.is_some() {
            c.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            c.tls_key = self.tls_key;
        }
        Ok(c)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRYMQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrymq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ferrymq: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(serve(config))
        }
        Command::Ctl(args) => match runtime.block_on(ferrymq::admin::ctl::run(args)) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferrymq ctl: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => match runtime.block_on(ferrymq::bench::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferrymq bench: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn serve(config: Config) -> ExitCode {
    // Catch signals before the ready line: scripts send SIGTERM as soon as
    // they see it, and an uncaught one would kill the process uncleanly.
    let stop = Stop::install();
    let server = match Server::start(&config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferrymq: {e}");
            return ExitCode::FAILURE;
        }
    };
    stop.wait().await;
    tracing::info!("shutting down");
    server.shutdown(Duration::from_secs(4)).await;
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, caught from the moment of `install`.
struct Stop(Option<(Signal, Signal)>);

impl Stop {
    fn install() -> Self {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            _ => Self(None),
        }
    }

    async fn wait(self) {
        let Some((mut term, mut int)) = self.0 else {
            // Without signal handlers the only way to stop is to be killed.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

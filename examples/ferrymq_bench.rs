//! The AMQP load generator on its own, until `ferrymq bench` is wired in:
//! `cargo run --release --example ferrymq_bench -- --amqp 127.0.0.1:5672`.

use clap::Parser;
use ferrymq::bench::BenchArgs;

#[derive(Parser)]
#[command(about = "Pipelined AMQP 0-9-1 benchmark")]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    ferrymq::bench::run(Cli::parse().bench).await
}

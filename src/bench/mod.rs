//! A pipelined AMQP 0-9-1 load generator.

/// Benchmark options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs the benchmark.
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("the benchmark is not built yet")
}

// One thread runs every task and reads their sockets' readiness itself. With worker
// threads, each reply of PostgreSQL or Kafka to a batch meant waking another thread
// (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    ipp_projector::cli::main().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ipp_projector::cli::main().await
}

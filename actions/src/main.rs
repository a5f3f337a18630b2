#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ipp_actions::cli::main().await
}

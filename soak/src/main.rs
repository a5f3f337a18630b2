use clap::Parser;

/// Runs the soak; exit 0 only when every invariant held (1: a violation, 2: bad usage,
/// 3: the soak itself could not run).
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = ipp_soak::Args::parse();
    match ipp_soak::run(args).await {
        Ok(summary) if summary.violation_count == 0 => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("ipp-soak: error: {error:#}");
            std::process::ExitCode::from(3)
        }
    }
}

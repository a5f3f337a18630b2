use clap::Parser;
use ipp_bench::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let out = config.out.clone();
    // On a worker thread, where ipp-projector runs its batches too: the apply engine's
    // figure runs the projector's code in this process.
    let report = tokio::spawn(ipp_bench::run(config)).await??;
    #[allow(clippy::print_stdout, reason = "the table is this command's output")]
    {
        println!("{}", report.table());
        println!(
            "results: {} and {}",
            out.join("results.md").display(),
            out.join("results.json").display()
        );
    }
    if !report.errors.is_empty() {
        anyhow::bail!(
            "{} figure group(s) failed: see results.md",
            report.errors.len()
        );
    }
    Ok(())
}

use clap::Parser;
use ipp_bench::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let out = config.out.clone();
    let report = ipp_bench::run(config).await?;
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

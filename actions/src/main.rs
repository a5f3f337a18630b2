use clap::Parser;
use ipp_actions::{Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, config } = Cli::parse();
    let command = command.unwrap_or(Command::Run);
    if matches!(command, Command::Run | Command::Migrate) {
        ipp_service::telemetry::init_tracing(config.log.format);
    } else {
        // Operator commands: stdout is their output, logs go to stderr.
        ipp_service::telemetry::init_cli_tracing();
    }
    match command {
        Command::Dlq(dlq) => ops_exit(ipp_actions::cli_ops::dlq(&config, &dlq).await),
        Command::Retry(args) => ops_exit(ipp_actions::cli_ops::retry(&config, &args).await),
        Command::Status(args) => ops_exit(ipp_actions::cli_ops::status(&config, &args).await),
        Command::Migrate => ipp_actions::migrate(&config).await?,
        Command::Run => {
            let listener = config.listen.bind().await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(ipp_service::cancel_on_signal(
                shutdown.clone(),
                "finishing in-flight actions",
            ));
            ipp_actions::run(config, listener, shutdown).await?;
        }
    }
    Ok(())
}

fn ops_exit(result: Result<(), ipp_ops::Error>) -> ! {
    ipp_ops::exit("ipp-actions", result)
}

//! Logs: one format setting and one layout for every service, and the operator
//! commands' logs on stderr.

use tracing_subscriber::EnvFilter;

/// `LOG_FORMAT` of every service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (`text` is accepted too: ipp-actions' former spelling).
    #[default]
    #[value(alias = "text")]
    Pretty,
    /// One JSON object per line, the event's fields at the top level beside
    /// `timestamp`, `level`, `target` and `message`.
    Json,
}

/// Logs of a service, on stdout, at `info` unless `RUST_LOG` says otherwise.
pub fn init_tracing(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        // With stdout or stderr gone (a dead log pipe) a failed write would be reported
        // with eprintln!, which panics the task that logged: drop the line instead.
        .log_internal_errors(false)
        .with_env_filter(filter("info"));
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Logs of an operator command, on stderr (stdout is the command's output, often
/// parsed by scripts), at `warn` unless `RUST_LOG` says otherwise.
pub fn init_cli_tracing() {
    tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_env_filter(filter("warn"))
        .with_writer(std::io::stderr)
        .init();
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

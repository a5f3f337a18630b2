//! Configuration: every setting is a flag and an environment variable; `--help` is the reference.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use ipp_schemas::topics;
use ipp_service::{AdminListenArgs, AdminListens, KafkaArgs, ListenArgs, Listens, LogArgs, Secret};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ipp-ingest",
    version,
    about = "Receives signed Kustom webhooks and appends them, byte for byte, to Kafka.",
    long_about = "Receives signed Kustom webhooks on POST /webhooks/kustom and appends them, byte for \
byte, to Kafka. Answers 200 only once Kafka has acknowledged the record (acks=all, idempotent \
producer); any broker trouble answers 503 with Retry-After so that Kustom delivers again.\n\n\
HTTP: POST /webhooks/kustom, GET /healthz (alive), GET /readyz (broker reachable), GET /metrics."
)]
pub struct Config {
    #[command(flatten)]
    pub listen: ListenArgs<Ingest>,

    #[command(flatten)]
    pub admin_listen: AdminListenArgs<Ingest>,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic for ipp.* events, keyed by data.session_id.
    #[arg(long, env = "IPP_TOPIC", default_value = topics::IPP_EVENTS)]
    pub ipp_topic: String,

    /// Topic for every other Kustom event, keyed by event id.
    #[arg(long, env = "KUSTOM_OTHER_TOPIC", default_value = topics::KUSTOM_EVENTS)]
    pub other_topic: String,

    /// Webhook signing secrets (whsec_...), comma-separated. A signature made with any of
    /// them is accepted, which is how secret rotation works. Or
    /// KUSTOM_WEBHOOK_SECRETS_FILE: a file holding them. Never logged.
    #[arg(
        long = "webhook-secret",
        env = "KUSTOM_WEBHOOK_SECRETS",
        value_name = "WHSEC",
        value_delimiter = ',',
        value_parser = Secret::non_empty,
        hide_env_values = true
    )]
    pub webhook_secrets: Vec<Secret>,

    /// The accounts file (TOML) of a deployment serving several Kustom accounts: a
    /// webhook whose `merchant_id` names an account `[accounts.<merchant_id>]` of the file
    /// is verified with that account's `webhook_secrets` only; one naming another
    /// account, or none, with KUSTOM_WEBHOOK_SECRETS (refused when there are none).
    /// ipp-actions reads the same file. See the README, "Several accounts".
    #[arg(
        long = "accounts-file",
        env = "KUSTOM_ACCOUNTS_FILE",
        value_name = "PATH"
    )]
    pub accounts_file: Option<PathBuf>,

    /// Accept unsigned webhooks. Only for local experiments: anyone could post events.
    #[arg(long)]
    pub insecure_skip_verify: bool,

    /// How far webhook-timestamp may be from now, in seconds, either way.
    #[arg(long, env = "INGEST_SIGNATURE_TOLERANCE_SECS", default_value_t = 300)]
    pub signature_tolerance_secs: u64,

    /// Largest accepted body in bytes; larger requests get 413.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// How long a client may take to send a request's headers, counted from when ingest
    /// starts waiting for them (a new connection, or the end of the previous answer on a
    /// kept-alive one). Then the connection is closed without an answer: this is also how
    /// long an idle connection is kept.
    #[arg(long, env = "INGEST_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// How long a client may take to send a request's body, from the end of its headers;
    /// a slower request gets 408.
    #[arg(long, env = "INGEST_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    /// Most connections served at once; more wait in the listen backlog until one closes.
    /// Keep it below the process's open-file limit.
    #[arg(long, env = "INGEST_MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,

    /// How long a record may take to be acknowledged by Kafka before the request gets 503.
    #[arg(long, env = "INGEST_PRODUCE_TIMEOUT_MS", default_value_t = 5000)]
    pub produce_timeout_ms: u64,

    /// Retry-After (seconds) sent with 503 answers.
    #[arg(long, env = "INGEST_RETRY_AFTER_SECS", default_value_t = 5)]
    pub retry_after_secs: u64,

    /// On SIGTERM, how long in-flight requests and the producer flush may take.
    #[arg(long, env = "INGEST_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// ipp-ingest's address: the webhook endpoint and the probes.
#[derive(Debug, Clone, Copy)]
pub struct Ingest;

impl Listens for Ingest {
    const ENV: &'static str = "INGEST_LISTEN";
    const DEFAULT: &'static str = "0.0.0.0:8080";
    const SERVES: &'static str = "POST /webhooks/kustom, /healthz, /readyz, /metrics";
}

impl AdminListens for Ingest {
    const ENV: &'static str = "INGEST_ADMIN_LISTEN";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which settings may come from a file (`X_FILE`), and that `--help` says so.
    #[test]
    fn secret_settings_may_come_from_files() {
        let command = <Config as clap::CommandFactory>::command();
        assert_eq!(
            ipp_service::secret_files::file_variables(&command),
            ["KUSTOM_WEBHOOK_SECRETS"]
        );
        assert!(ipp_service::secret_files::undocumented(&command).is_empty());
    }
}
